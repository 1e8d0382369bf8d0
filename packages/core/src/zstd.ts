/**
 * zstd cluster compression through a WebAssembly build of the reference library (@bokuweb/zstd-wasm), so
 * the engine stays runtime-agnostic. A compressed cluster is one zstd frame followed by sector padding; the
 * frame's length is found by walking its block headers before it is handed to the decoder.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { CompressionCodec } from "./compression";

const ZSTD_MAGIC = 0xfd2fb528;

/** Length in bytes of the zstd frame at the start of `data`, or -1 when it is not a complete frame. */
export function zstdFrameLength(data: Uint8Array): number {
  if (data.byteLength < 6) return -1;
  const magic = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
  if (magic !== ZSTD_MAGIC) return -1;
  const fhd = data[4]!;
  const fcsFlag = fhd >>> 6;
  const singleSegment = (fhd >>> 5) & 1;
  const checksum = (fhd >>> 2) & 1;
  const didFlag = fhd & 3;
  let at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][didFlag]!;
  at += [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (at + 3 > data.byteLength) return -1;
    const header = data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16);
    at += 3;
    const last = header & 1;
    const type = (header >>> 1) & 3;
    const size = header >>> 3;
    if (type === 3) return -1;
    at += type === 1 ? 1 : size;
    if (at > data.byteLength) return -1;
    if (last) break;
  }
  at += checksum ? 4 : 0;
  return at <= data.byteLength ? at : -1;
}

interface ZstdModule {
  /** A URL of zstd.wasm, or its bytes (the browser build); Node's build reads its own file. */
  init(path?: string): Promise<void>;
  compress(data: Uint8Array, level?: number): Uint8Array;
  decompress(data: Uint8Array, opts?: { defaultHeapSize: number }): Uint8Array;
}

/** How long the WebAssembly module may take to start before zstd counts as unavailable. */
export const ZSTD_INIT_TIMEOUT_MS = 15_000;

/** The error for every way the zstd library can fail to load. */
function unavailable(reason: unknown): Qcow2Error {
  const text = reason instanceof Error ? reason.message : String(reason);
  return new Qcow2Error("NOT_SUPPORTED", `zstd unavailable: ${text}`, { cause: reason });
}

export interface ZstdLoadOptions {
  /**
   * The library's WebAssembly bytes. Without it the library finds its zstd.wasm itself (next to its own
   * files: right in Node, wrong in a bundle that did not copy the file). The browser entry passes the
   * bytes bundled with it.
   */
  wasmBytes?: () => Promise<Uint8Array>;
  /** Give up after this many milliseconds (the library never settles when its module fails to start). */
  timeoutMs?: number;
}

/**
 * Load the WebAssembly zstd library and wrap it as a codec. Always settles: a missing, damaged or
 * slow-to-start module is Qcow2Error NOT_SUPPORTED "zstd unavailable: ...".
 */
export async function loadZstdCodec(opts: ZstdLoadOptions = {}): Promise<CompressionCodec> {
  let z: ZstdModule;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    let bytes: Uint8Array | undefined;
    if (opts.wasmBytes) {
      bytes = await opts.wasmBytes();
      // The library reports a module that fails to compile only on the console, and then waits forever.
      const wasm = (globalThis as { WebAssembly?: { compile(bytes: Uint8Array): Promise<unknown> } }).WebAssembly;
      if (!wasm) throw new Error("this runtime has no WebAssembly");
      await wasm.compile(bytes);
    }
    z = (await import("@bokuweb/zstd-wasm")) as unknown as ZstdModule;
    const timeoutMs = opts.timeoutMs ?? ZSTD_INIT_TIMEOUT_MS;
    await Promise.race([
      z.init(bytes as unknown as string | undefined),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the WebAssembly module did not start within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (e) {
    throw unavailable(e);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
  return {
    async compress(data, maxBytes) {
      const out = z.compress(data, 3);
      return out.byteLength < maxBytes ? out : undefined;
    },
    async decompress(compressed, outLength) {
      const length = zstdFrameLength(compressed);
      if (length < 0) throw new Qcow2Error("IO_ERROR", "Could not decompress cluster: corrupt zstd frame");
      let out: Uint8Array;
      try {
        out = z.decompress(compressed.subarray(0, length), { defaultHeapSize: outLength });
      } catch {
        throw new Qcow2Error("IO_ERROR", "Could not decompress cluster: corrupt zstd frame");
      }
      if (out.byteLength !== outLength) {
        throw new Qcow2Error("IO_ERROR", "Could not decompress cluster: wrong decompressed size");
      }
      return out;
    },
  };
}
