import { defineConfig } from "tsup";

export default defineConfig({
  entry: {"qiotests":"src/qiotests.ts"},
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
});
