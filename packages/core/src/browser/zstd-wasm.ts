/**
 * zstd.wasm as bytes inside the bundle (tsup's binary loader turns the import into a Uint8Array), so a page
 * that bundles the browser entry with any bundler carries the module with it. This file is only reached by a
 * dynamic import, the first time a zstd-compressed cluster is read or written: other pages never load it.
 */
/// <reference path="./wasm.d.ts" />
import wasm from "../../node_modules/@bokuweb/zstd-wasm/dist/web/zstd.wasm";

export default wasm;
