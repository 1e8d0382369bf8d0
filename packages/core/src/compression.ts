/**
 * Cluster compression codecs. zlib clusters are raw deflate streams (no zlib header); zstd clusters are
 * zstd frames. Compressed data is followed by padding up to the sector boundary, so decompressors must stop
 * at the end of the stream.
 */
import { Qcow2Error, type CompressionType } from "@qcowkit/spec";
import { inflateRawInto } from "./inflate";

/** fflate is loaded on first use: most runs never touch a compressed cluster. */
let fflate: typeof import("fflate") | undefined;
async function loadFflate(): Promise<typeof import("fflate")> {
  fflate ??= await import("fflate");
  return fflate;
}

export interface CompressionCodec {
  /** Compress one cluster; return undefined when the result would not be smaller than `maxBytes`. */
  compress(data: Uint8Array, maxBytes: number): Promise<Uint8Array | undefined>;
  /** Decompress exactly `outLength` bytes from `compressed` (which may carry trailing padding). */
  decompress(compressed: Uint8Array, outLength: number): Promise<Uint8Array>;
}

export const zlibCodec: CompressionCodec = {
  async compress(data, maxBytes) {
    const { deflateSync } = await loadFflate();
    const out = deflateSync(data, { level: 6 });
    return out.byteLength < maxBytes ? out : undefined;
  },
  async decompress(compressed, outLength) {
    // Bounded: never more than the cluster, whatever the stream declares (see inflate.ts for QEMU's verdict).
    const out = new Uint8Array(outLength);
    if (inflateRawInto(compressed, out) !== "full") {
      throw new Qcow2Error("IO_ERROR", "Could not decompress cluster: corrupt deflate stream");
    }
    return out;
  },
};

/** Codecs by compression type; zstd is registered by `registerCodec` (see zstd.ts). */
const codecs = new Map<CompressionType, CompressionCodec>([["zlib", zlibCodec]]);
const loaders = new Map<CompressionType, () => Promise<CompressionCodec>>([
  ["zstd", async () => (await import("./zstd")).loadZstdCodec()],
]);

export function registerCodec(type: CompressionType, codec: CompressionCodec): void {
  codecs.set(type, codec);
}

export function registerCodecLoader(type: CompressionType, load: () => Promise<CompressionCodec>): void {
  loaders.set(type, load);
}

export async function getCodec(type: CompressionType): Promise<CompressionCodec> {
  const codec = codecs.get(type);
  if (codec) return codec;
  const load = loaders.get(type);
  if (!load) throw new Qcow2Error("NOT_SUPPORTED", `Compression type ${type} is not supported`);
  const loaded = await load();
  codecs.set(type, loaded);
  return loaded;
}
