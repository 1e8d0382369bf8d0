/**
 * Native cluster compression for the Node entry. zlib goes through node:zlib with QEMU's settings (raw
 * deflate, 4 KiB window, default level, memLevel 9); zstd through a native binding of the reference library.
 * Both compress asynchronously on libuv's thread pool, so the clusters of a request (or of several requests
 * in flight) are compressed in parallel while the main thread goes on. Decompression stays with the
 * runtime-agnostic codecs (compression.ts, zstd.ts), which bound what a cluster may inflate to.
 *
 * Node bundles Chromium's zlib, whose match finder differs from the zlib QEMU links: for the same settings
 * its deflate streams are valid and about as small, but not byte for byte the same as QEMU's.
 */
import { builtin } from "./builtin";
import { Qcow2Error } from "@qcowkit/spec";
import { registerCodec, registerCodecLoader, zlibCodec, type CompressionCodec } from "../compression";
import { loadZstdCodec } from "../zstd";

/** QEMU's deflateInit2 arguments for compressed clusters (zlib's Z_DEFAULT_COMPRESSION and Z_DEFAULT_STRATEGY). */
export const QEMU_DEFLATE_OPTIONS: { readonly level: number; readonly windowBits: 12; readonly memLevel: 9; readonly strategy: number } = {
  level: -1,
  windowBits: 12,
  memLevel: 9,
  strategy: 0,
};

/** QEMU's zstd level for compressed clusters (the library default). */
const ZSTD_LEVEL = 3;

/** A Buffer from a native call as a plain view of its bytes (pooled Buffers have a byteOffset). */
function bytesOf(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function deflateCluster(data: Uint8Array): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    builtin("node:zlib").deflateRaw(data, QEMU_DEFLATE_OPTIONS, (err, out) => {
      if (err) reject(new Qcow2Error("IO_ERROR", `Could not compress cluster: ${err.message}`, { cause: err }));
      else resolve(bytesOf(out));
    });
  });
}

/** zlib through node:zlib; inflating is the runtime-agnostic codec's. */
export const nodeZlibCodec: CompressionCodec = {
  async compress(data, maxBytes) {
    const out = await deflateCluster(data);
    return out.byteLength < maxBytes ? out : undefined;
  },
  decompress: (compressed, outLength) => zlibCodec.decompress(compressed, outLength),
};

interface NativeZstd {
  compress(data: Uint8Array, level?: number): Promise<Uint8Array>;
}

/**
 * zstd through the native binding when it loads on this platform; otherwise (no prebuilt binary) the
 * WebAssembly codec alone. Inflating is always the WebAssembly codec's.
 */
export async function loadNodeZstdCodec(): Promise<CompressionCodec> {
  let native: NativeZstd;
  try {
    native = (await import("@mongodb-js/zstd")) as unknown as NativeZstd;
    // A binding that loads but cannot run fails here, not on the first write.
    await native.compress(new Uint8Array(1), ZSTD_LEVEL);
  } catch {
    return loadZstdCodec();
  }
  // The WebAssembly decoder is compiled on the first read only (convert -c never reads a compressed cluster).
  let wasm: Promise<CompressionCodec> | undefined;
  return {
    async compress(data, maxBytes) {
      let out: Uint8Array;
      try {
        out = bytesOf(await native.compress(data, ZSTD_LEVEL));
      } catch (e) {
        throw new Qcow2Error("IO_ERROR", `Could not compress cluster: ${(e as Error).message}`, { cause: e });
      }
      return out.byteLength < maxBytes ? out : undefined;
    },
    async decompress(compressed, outLength) {
      wasm ??= loadZstdCodec();
      return (await wasm).decompress(compressed, outLength);
    },
  };
}

let installed = false;

/** Make the native codecs the ones images opened from now on use (the Node entry calls it on load). */
export function installNodeCodecs(): void {
  if (installed) return;
  installed = true;
  registerCodec("zlib", nodeZlibCodec);
  registerCodecLoader("zstd", loadNodeZstdCodec);
}
