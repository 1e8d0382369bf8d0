import { defineConfig } from "tsup";

export default defineConfig({
  entry: { qnbd: "src/qnbd.ts" },
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
});
