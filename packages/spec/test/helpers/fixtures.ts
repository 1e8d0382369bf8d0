import { encodeHeader, encodedHeaderLength, type ImageHeader, type Qcow2Header } from "../../src/index";

/** A plausible v3 header of a 1 MiB image with 64 KiB clusters, laid out like `qemu-img create`. */
export function v3Header(overrides: Partial<Qcow2Header> = {}): Qcow2Header {
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 16,
    size: 1024 * 1024,
    cryptMethod: 0,
    l1Size: 1,
    l1TableOffset: 0x30000,
    refcountTableOffset: 0x10000,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 112,
    compressionType: 0,
    unknownHeaderFields: new Uint8Array(0),
    ...overrides,
  };
}

export function v2Header(overrides: Partial<Qcow2Header> = {}): Qcow2Header {
  return v3Header({ version: 2, headerLength: 72, ...overrides });
}

export function image(header: Partial<Qcow2Header> = {}, rest: Partial<Omit<ImageHeader, "header">> = {}): ImageHeader {
  return { header: v3Header(header), extensions: { unknown: [] }, ...rest };
}

/** The encoded header alone (exactly its length). */
export function headerBytes(h: Qcow2Header): Uint8Array {
  const out = new Uint8Array(encodedHeaderLength(h));
  encodeHeader(h, out);
  return out;
}

/** A copy of `bytes` with big-endian integers patched in: [offset, byteWidth (1, 4 or 8), value]. */
export function patched(bytes: Uint8Array, ...patches: [number, 1 | 2 | 4 | 8, number | bigint][]): Uint8Array {
  const out = bytes.slice();
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (const [at, width, value] of patches) {
    if (width === 1) v.setUint8(at, Number(value));
    else if (width === 2) v.setUint16(at, Number(value));
    else if (width === 4) v.setUint32(at, Number(value));
    else v.setBigUint64(at, BigInt(value));
  }
  return out;
}

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
