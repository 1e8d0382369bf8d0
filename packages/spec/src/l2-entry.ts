/**
 * L2 table entries (docs/interop/qcow2.txt, "Cluster mapping").
 *
 * Standard entry (64 bits):
 *   bit 0      zero flag (v3, not with extended L2): the cluster reads as zeros
 *   bits 1-8   reserved (0)
 *   bits 9-55  host cluster offset (cluster aligned); with an external data file 0 is valid when COPIED is set
 *   bits 56-61 reserved (0)
 *   bit 62     compressed (then bits 0-61 are a compressed cluster descriptor, see compressed.ts)
 *   bit 63     COPIED: refcount exactly 1, the cluster may be written in place
 *
 * Extended L2 entry (128 bits): the standard entry followed by a 64-bit subcluster bitmap:
 *   bits 0-31 "subcluster x is allocated", bits 32-63 "subcluster x reads as zeros".
 */
import {
  L2E_OFFSET_MASK_HI,
  L2E_OFFSET_MASK_LO,
  L2E_STD_RESERVED_MASK_HI,
  L2E_STD_RESERVED_MASK_LO,
  OFLAG_COMPRESSED_HI,
  OFLAG_COPIED_HI,
  OFLAG_ZERO_LO,
} from "./constants";

const TWO_32 = 4294967296;

/**
 * How one (sub)cluster reads, as QEMU classifies it. Standard entries use the same names: an entry with
 * no host cluster is UNALLOCATED_PLAIN.
 */
export const SubclusterType = {
  /** No host cluster, not zero: reads from the backing file, or zeros without one. */
  UNALLOCATED_PLAIN: 0,
  /** Host cluster present but this subcluster never written: reads from the backing file (or zeros). */
  UNALLOCATED_ALLOC: 1,
  /** Reads as zeros, no host cluster. */
  ZERO_PLAIN: 2,
  /** Reads as zeros, host cluster kept (preallocated zero). */
  ZERO_ALLOC: 3,
  /** Data at the host offset. */
  NORMAL: 4,
  /** Compressed cluster. */
  COMPRESSED: 5,
  /** Allocation and zero bits contradict each other. */
  INVALID: 6,
} as const;
export type SubclusterType = (typeof SubclusterType)[keyof typeof SubclusterType];

export interface L2Format {
  extendedL2: boolean;
  /** The image has an external data file (host offset 0 with COPIED is a valid data cluster). */
  dataFile: boolean;
}

/** Byte position of entry `index` in an L2 table. */
export function l2EntryPosition(index: number, extendedL2: boolean): number {
  return extendedL2 ? index * 16 : index * 8;
}

export function l2Hi(l2: DataView, index: number, extendedL2: boolean): number {
  return l2.getUint32(l2EntryPosition(index, extendedL2));
}

export function l2Lo(l2: DataView, index: number, extendedL2: boolean): number {
  return l2.getUint32(l2EntryPosition(index, extendedL2) + 4);
}

/** Host offset field of a standard (non-compressed) entry. */
export function l2HostOffset(hi: number, lo: number): number {
  return (hi & L2E_OFFSET_MASK_HI) * TWO_32 + ((lo & L2E_OFFSET_MASK_LO) >>> 0);
}

export function l2IsCompressed(hi: number): boolean {
  return (hi & OFLAG_COMPRESSED_HI) !== 0;
}

export function l2IsCopied(hi: number): boolean {
  return (hi & OFLAG_COPIED_HI) !== 0;
}

export function l2HasZeroFlag(lo: number): boolean {
  return (lo & OFLAG_ZERO_LO) !== 0;
}

/** Reserved bits set in a standard (non-compressed) entry. */
export function l2HasReservedBits(hi: number, lo: number): boolean {
  return (hi & L2E_STD_RESERVED_MASK_HI) !== 0 || (lo & L2E_STD_RESERVED_MASK_LO) !== 0;
}

/** Subcluster bitmap halves of an extended entry: allocation bits (0-31) and zero bits (32-63). */
export function l2BitmapAlloc(l2: DataView, index: number): number {
  return l2.getUint32(index * 16 + 12);
}

export function l2BitmapZero(l2: DataView, index: number): number {
  return l2.getUint32(index * 16 + 8);
}

export type ClusterKind = "unallocated" | "zero-plain" | "zero-alloc" | "normal" | "compressed";

/** Cluster-level type of a standard entry part (qcow2_get_cluster_type). */
export function classifyCluster(hi: number, lo: number, fmt: L2Format): ClusterKind {
  if (hi & OFLAG_COMPRESSED_HI) return "compressed";
  if (!fmt.extendedL2 && lo & OFLAG_ZERO_LO) {
    return l2HostOffset(hi, lo) !== 0 ? "zero-alloc" : "zero-plain";
  }
  if (l2HostOffset(hi, lo) === 0) {
    return fmt.dataFile && hi & OFLAG_COPIED_HI ? "normal" : "unallocated";
  }
  return "normal";
}

/**
 * Type of subcluster `sc` (0..31) of an entry; for standard entries `sc` is ignored and the bitmap
 * arguments are 0.
 */
export function classifySubcluster(
  hi: number,
  lo: number,
  allocBits: number,
  zeroBits: number,
  sc: number,
  fmt: L2Format,
): SubclusterType {
  const kind = classifyCluster(hi, lo, fmt);
  if (!fmt.extendedL2) {
    switch (kind) {
      case "unallocated":
        return SubclusterType.UNALLOCATED_PLAIN;
      case "zero-plain":
        return SubclusterType.ZERO_PLAIN;
      case "zero-alloc":
        return SubclusterType.ZERO_ALLOC;
      case "normal":
        return SubclusterType.NORMAL;
      default:
        return SubclusterType.COMPRESSED;
    }
  }
  const bit = 1 << sc;
  if (kind === "compressed") return SubclusterType.COMPRESSED;
  if (kind === "normal") {
    if ((allocBits & zeroBits) !== 0) return SubclusterType.INVALID;
    if (zeroBits & bit) return SubclusterType.ZERO_ALLOC;
    if (allocBits & bit) return SubclusterType.NORMAL;
    return SubclusterType.UNALLOCATED_ALLOC;
  }
  if (allocBits !== 0) return SubclusterType.INVALID;
  if (zeroBits & bit) return SubclusterType.ZERO_PLAIN;
  return SubclusterType.UNALLOCATED_PLAIN;
}

/** Write a standard entry: host offset, COPIED and zero flags (not for compressed entries). */
export function setL2Entry(
  l2: DataView,
  index: number,
  extendedL2: boolean,
  hostOffset: number,
  flags: { copied?: boolean; zero?: boolean } = {},
): void {
  const at = l2EntryPosition(index, extendedL2);
  l2.setUint32(at, (Math.floor(hostOffset / TWO_32) & L2E_OFFSET_MASK_HI) | (flags.copied ? OFLAG_COPIED_HI : 0));
  l2.setUint32(at + 4, ((hostOffset & L2E_OFFSET_MASK_LO) | (flags.zero ? OFLAG_ZERO_LO : 0)) >>> 0);
}

/** Write raw halves of the first 64 bits of an entry. */
export function setL2Raw(l2: DataView, index: number, extendedL2: boolean, hi: number, lo: number): void {
  const at = l2EntryPosition(index, extendedL2);
  l2.setUint32(at, hi >>> 0);
  l2.setUint32(at + 4, lo >>> 0);
}

/** Write the subcluster bitmap of an extended entry. */
export function setL2Bitmap(l2: DataView, index: number, allocBits: number, zeroBits: number): void {
  l2.setUint32(index * 16 + 8, zeroBits >>> 0);
  l2.setUint32(index * 16 + 12, allocBits >>> 0);
}

/** The raw first 64 bits as a bigint (messages only). */
export function l2EntryRaw(l2: DataView, index: number, extendedL2: boolean): bigint {
  return l2.getBigUint64(l2EntryPosition(index, extendedL2));
}

/** Bitmask of subclusters [first, first+count) (count 1..32). */
export function subclusterMask(first: number, count: number): number {
  if (count >= 32) return 0xffffffff;
  return (((1 << count) - 1) << first) >>> 0;
}
