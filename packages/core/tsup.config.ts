import { defineConfig } from "tsup";

export default defineConfig({
  entry: ["src/index.ts", "src/node.ts", "src/browser.ts"],
  format: ["esm"],
  target: "node20",
  dts: true,
  sourcemap: true,
  clean: true,
  // The browser entry carries zstd.wasm as bytes (src/browser/zstd-wasm.ts), in a chunk of its own.
  loader: { ".wasm": "binary" },
});
