import { defineConfig } from "tsup";

export default defineConfig({
  entry: {"qimg":"src/qimg.ts","qio":"src/qio.ts"},
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
});
