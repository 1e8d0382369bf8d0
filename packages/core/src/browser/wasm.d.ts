/** WebAssembly files are bundled as bytes (esbuild's "binary" loader in tsup.config.ts). */
declare module "*.wasm" {
  const bytes: Uint8Array;
  export default bytes;
}
