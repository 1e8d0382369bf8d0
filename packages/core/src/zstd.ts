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
  init(path?: string): Promise<void>;
  compress(data: Uint8Array, level?: number): Uint8Array;
  decompress(data: Uint8Array, opts?: { defaultHeapSize: number }): Uint8Array;
}

/** Load the WebAssembly zstd library and wrap it as a codec. */
export async function loadZstdCodec(): Promise<CompressionCodec> {
  let z: ZstdModule;
  try {
    z = (await import("@bokuweb/zstd-wasm")) as unknown as ZstdModule;
    await z.init();
  } catch (e) {
    throw new Qcow2Error("NOT_SUPPORTED", "zstd compression is not available in this runtime", { cause: e });
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
