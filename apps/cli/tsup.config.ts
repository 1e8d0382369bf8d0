import { defineConfig } from "tsup";

// Workspace packages stay external: the bins load their dist/ (built first by turbo), where the native addon
// and the zstd wasm are found.
export default defineConfig({
  entry: { qimg: "src/qimg.ts", qio: "src/qio.ts" },
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
});
