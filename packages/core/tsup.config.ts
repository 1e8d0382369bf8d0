import { defineConfig } from "tsup";

// Members marked @internal (the engine surface of Qcow2Image) are left out of the published declarations.
const common = { format: ["esm" as const], dts: { compilerOptions: { stripInternal: true } }, sourcemap: true, clean: false };

export default defineConfig([
  { ...common, entry: ["src/index.ts", "src/node.ts", "src/internal.ts"], target: "node20", platform: "node" },
  // The browser entry is built for browsers (no Buffer in esbuild's helpers) and carries zstd.wasm as bytes
  // (src/browser/zstd-wasm.ts) in a chunk of its own.
  { ...common, entry: ["src/browser.ts"], target: "es2022", platform: "browser", loader: { ".wasm": "binary" } },
]);
