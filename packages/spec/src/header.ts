/**
 * The fixed qcow2 header at the start of cluster 0 (docs/interop/qcow2.txt, "Header").
 *
 *   0- 3 magic                    4- 7 version
 *   8-15 backing_file_offset     16-19 backing_file_size
 *  20-23 cluster_bits            24-31 size
 *  32-35 crypt_method            36-39 l1_size
 *  40-47 l1_table_offset         48-55 refcount_table_offset
 *  56-59 refcount_table_clusters 60-63 nb_snapshots
 *  64-71 snapshots_offset
 *  v3 only:
 *  72-79 incompatible_features   80-87 compatible_features
 *  88-95 autoclear_features      96-99 refcount_order
 * 100-103 header_length          104 compression_type   105-111 padding
 */
import { getU64, getU64Big, setU64, setU64Big, viewOf, zeroPadded } from "./bytes";
import {
  COMPRESSION_ZLIB,
  DEFAULT_REFCOUNT_ORDER,
  HEADER_V2_LENGTH,
  HEADER_V3_LENGTH,
  HEADER_V3_MIN_LENGTH,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
} from "./constants";
import { Qcow2Error } from "./errors";

export interface Qcow2Header {
  version: number;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  cryptMethod: number;
  /** Number of L1 entries. */
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  /** log2 of the refcount entry width in bits (v2: always 4). */
  refcountOrder: number;
  /** Length of the header in bytes (v2: 72). */
  headerLength: number;
  /** 0 zlib (raw deflate), 1 zstd; 0 when the field is absent. */
  compressionType: number;
  /** Bytes of header fields after byte 112 that this implementation does not know; kept on rewrite. */
  unknownHeaderFields: Uint8Array;
}

/** Number of bytes needed to read the header's fixed part and learn header_length. */
export const HEADER_PROBE_BYTES = HEADER_V3_LENGTH;

/**
 * Decode the header from the first bytes of the image. Bytes missing from `bytes` read as zeros, as QEMU
 * reads past the end of a short file (pass at least `headerLength` bytes for v3 images with unknown trailing
 * fields). Checks only what decoding needs: magic, version, cluster size, header length and backing file
 * offset, with QEMU's messages, in QEMU's order.
 */
export function decodeHeader(bytes: Uint8Array): Qcow2Header {
  const fixed = zeroPadded(bytes, HEADER_PROBE_BYTES);
  const v = viewOf(fixed);
  if (v.getUint32(0) !== QCOW2_MAGIC) {
    throw new Qcow2Error("INVALID_IMAGE", "Image is not in qcow2 format");
  }
  const version = v.getUint32(4);
  if (version < 2 || version > 3) {
    throw new Qcow2Error("UNSUPPORTED_FEATURE", `Unsupported qcow2 version ${version}`, { errno: "ENOTSUP" });
  }
  const clusterBits = v.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2Error("UNSUPPORTED_FEATURE", `Unsupported cluster size: 2^${clusterBits}`, { errno: "EINVAL" });
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: getU64(v, 8),
    backingFileSize: v.getUint32(16),
    clusterBits,
    size: getU64(v, 24),
    cryptMethod: v.getUint32(32),
    l1Size: v.getUint32(36),
    l1TableOffset: getU64(v, 40),
    refcountTableOffset: getU64(v, 48),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: getU64(v, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: DEFAULT_REFCOUNT_ORDER,
    headerLength: HEADER_V2_LENGTH,
    compressionType: COMPRESSION_ZLIB,
    unknownHeaderFields: new Uint8Array(0),
  };
  if (version >= 3) {
    h.incompatibleFeatures = getU64Big(v, 72);
    h.compatibleFeatures = getU64Big(v, 80);
    h.autoclearFeatures = getU64Big(v, 88);
    h.refcountOrder = v.getUint32(96);
    h.headerLength = v.getUint32(100);
    if (h.headerLength < HEADER_V3_MIN_LENGTH) {
      throw new Qcow2Error("INVALID_IMAGE", "qcow2 header too short");
    }
  }
  if (h.headerLength > clusterSize) {
    throw new Qcow2Error("INVALID_IMAGE", "qcow2 header exceeds cluster size");
  }
  // compression_type counts only when header_length reaches past its offset.
  if (h.headerLength > HEADER_V3_MIN_LENGTH) h.compressionType = v.getUint8(104);
  if (h.headerLength > HEADER_V3_LENGTH) {
    h.unknownHeaderFields = zeroPadded(bytes.subarray(HEADER_V3_LENGTH, h.headerLength), h.headerLength - HEADER_V3_LENGTH).slice();
  }
  if (h.backingFileOffset > clusterSize) {
    throw new Qcow2Error("INVALID_IMAGE", "Invalid backing file offset");
  }
  return h;
}

/** The header length an encoder writes for `h`: 72 for v2, 112 plus preserved unknown fields for v3. */
export function encodedHeaderLength(h: Pick<Qcow2Header, "version" | "unknownHeaderFields">): number {
  return h.version === 2 ? HEADER_V2_LENGTH : HEADER_V3_LENGTH + h.unknownHeaderFields.byteLength;
}

/**
 * Encode the fixed header into `out` (which must hold `encodedHeaderLength(h)` bytes). The header_length
 * field written is `encodedHeaderLength(h)`, not `h.headerLength`.
 */
export function encodeHeader(h: Qcow2Header, out: Uint8Array): number {
  const length = encodedHeaderLength(h);
  if (out.byteLength < length) throw new Qcow2Error("INTERNAL", "header buffer too small");
  out.fill(0, 0, length);
  const v = viewOf(out);
  v.setUint32(0, QCOW2_MAGIC);
  v.setUint32(4, h.version);
  setU64(v, 8, h.backingFileOffset);
  v.setUint32(16, h.backingFileSize);
  v.setUint32(20, h.clusterBits);
  setU64(v, 24, h.size);
  v.setUint32(32, h.cryptMethod);
  v.setUint32(36, h.l1Size);
  setU64(v, 40, h.l1TableOffset);
  setU64(v, 48, h.refcountTableOffset);
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  setU64(v, 64, h.snapshotsOffset);
  if (h.version >= 3) {
    setU64Big(v, 72, h.incompatibleFeatures);
    setU64Big(v, 80, h.compatibleFeatures);
    setU64Big(v, 88, h.autoclearFeatures);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, length);
    v.setUint8(104, h.compressionType);
    out.set(h.unknownHeaderFields, HEADER_V3_LENGTH);
  }
  return length;
}

/** Where each fixed header field lives: byte offset and width (the table at the top of this file). */
export const HEADER_LAYOUT = {
  magic: [0, 4],
  version: [4, 4],
  backingFileOffset: [8, 8],
  backingFileSize: [16, 4],
  clusterBits: [20, 4],
  size: [24, 8],
  cryptMethod: [32, 4],
  l1Size: [36, 4],
  l1TableOffset: [40, 8],
  refcountTableOffset: [48, 8],
  refcountTableClusters: [56, 4],
  nbSnapshots: [60, 4],
  snapshotsOffset: [64, 8],
  incompatibleFeatures: [72, 8],
  compatibleFeatures: [80, 8],
  autoclearFeatures: [88, 8],
  refcountOrder: [96, 4],
  headerLength: [100, 4],
  compressionType: [104, 1],
} as const satisfies Record<string, readonly [offset: number, width: number]>;

/** A header field that can be rewritten on its own (see `encodeHeaderFields`). */
export type HeaderFieldName = Exclude<
  keyof typeof HEADER_LAYOUT,
  "magic" | "version" | "clusterBits" | "refcountOrder" | "headerLength" | "compressionType"
>;

/**
 * The bytes of some header fields, named, for an in-place update of just those fields: one contiguous range
 * (the fields must be adjacent, in any order), encoded from `h` exactly as `encodeHeader` would encode them.
 * Fields past byte 72 exist only in version 3 headers.
 */
export function encodeHeaderFields(h: Qcow2Header, names: readonly HeaderFieldName[]): { offset: number; bytes: Uint8Array } {
  if (names.length === 0) throw new Qcow2Error("INTERNAL", "no header fields to encode");
  const spans = names.map((n) => HEADER_LAYOUT[n]).sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i]![0] !== spans[i - 1]![0] + spans[i - 1]![1]) {
      throw new Qcow2Error("INTERNAL", `header fields ${names.join(", ")} are not adjacent`);
    }
  }
  const offset = spans[0]![0];
  const last = spans[spans.length - 1]!;
  const end = last[0] + last[1];
  if (end > HEADER_V2_LENGTH && h.version < 3) throw new Qcow2Error("INTERNAL", `header field beyond a version 2 header`);
  const all = new Uint8Array(encodedHeaderLength(h));
  encodeHeader(h, all);
  return { offset, bytes: all.slice(offset, end) };
}
