/**
 * One classification of L2 entries for the whole project (docs/interop/qcow2.txt, "Cluster mapping"), in the
 * spec's words: an entry is unallocated, zero (with or without a preallocated host cluster), normal (data at a
 * host cluster) or compressed (a compressed cluster descriptor). Extended entries also carry the subcluster
 * bitmap; with them the zero flag is not used (the bitmap says which subclusters read as zeros).
 *
 * `decodeL2Entry` never throws (check reports what it finds); `encodeL2Entry` refuses what no valid entry holds.
 */
import {
  OFLAG_COPIED_HI,
  Qcow2Error,
  classifyCluster,
  decodeCompressedDescriptor,
  encodeCompressedDescriptor,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2HasReservedBits,
  l2HasZeroFlag,
  l2HostOffset,
  l2IsCopied,
  setL2Bitmap,
  setL2Entry,
  setL2Raw,
} from "@qcowkit/spec";

/** What an L2 entry's cluster and subclusters need to be understood: its size and the entry format. */
export interface ClusterGeometry {
  clusterBits: number;
  extendedL2: boolean;
  /** The image keeps its data in an external data file (flat layout: host offset == guest offset). */
  dataFile: boolean;
}

export type L2EntryKind = "unallocated" | "zero" | "normal" | "compressed";

/** Where a compressed cluster's data lies: its byte offset and the 512-byte sectors it spans. */
export interface CompressedLocation {
  hostOffset: number;
  /** 512-byte sectors the data touches (the descriptor's "additional sectors" plus one). */
  sectors: number;
  /** Bytes from `hostOffset` to the end of the last sector (what a reader fetches). */
  byteLength: number;
}

/** A decoded L2 entry. */
export interface L2Entry {
  kind: L2EntryKind;
  /**
   * Host cluster offset (bits 9-55) for unallocated, zero and normal entries: 0 means none, except for
   * "normal" entries of data-file images (flat: host offset == guest offset, 0 included). 0 for compressed.
   */
  hostOffset: number;
  /** Bit 63: the refcount of the host cluster is exactly one (written in place without copy-on-write). */
  copied: boolean;
  /** Bit 0 of a standard entry (the cluster reads as zeros). Always false for extended entries' kind. */
  zeroFlag: boolean;
  /** Reserved bits are set (bits 1-8 and 56-61 of a non-compressed entry). */
  reservedBits: boolean;
  /** Compressed entries: the descriptor. */
  compressed?: CompressedLocation;
  /** Extended L2: subclusters allocated (bit n: subcluster n); 0 for standard entries. */
  allocBits: number;
  /** Extended L2: subclusters that read as zeros; 0 for standard entries. */
  zeroBits: number;
}

/** What an entry is made from: the fields of `L2Entry` that are not derived. */
export type L2EntryValue =
  | { kind: "unallocated"; allocBits?: number; zeroBits?: number }
  | { kind: "zero"; hostOffset?: number; copied?: boolean; zeroBits?: number }
  | { kind: "normal"; hostOffset: number; copied: boolean; allocBits?: number; zeroBits?: number }
  /** Compressed data at `hostOffset`: `sectors` 512-byte sectors, or (to derive them) its `byteLength`. */
  | { kind: "compressed"; hostOffset: number; sectors?: number; byteLength?: number };

const ALL_SUBCLUSTERS = 0xffffffff;
const TWO_56 = 2 ** 56;

/** Classify the first 64 bits (`hi`, `lo`) of an entry; `allocBits`/`zeroBits` are the extended bitmap halves. */
export function classifyL2Entry(hi: number, lo: number, g: ClusterGeometry, allocBits = 0, zeroBits = 0): L2Entry {
  const kind = classifyCluster(hi, lo, g);
  if (kind === "compressed") {
    const d = decodeCompressedDescriptor(hi, lo, g.clusterBits);
    const sectors = Math.ceil((d.hostOffset % 512 + d.byteLength) / 512);
    return {
      kind,
      hostOffset: 0,
      copied: l2IsCopied(hi),
      zeroFlag: false,
      reservedBits: false,
      compressed: { hostOffset: d.hostOffset, sectors, byteLength: d.byteLength },
      allocBits,
      zeroBits,
    };
  }
  return {
    kind: kind === "zero-plain" || kind === "zero-alloc" ? "zero" : kind,
    hostOffset: l2HostOffset(hi, lo),
    copied: l2IsCopied(hi),
    zeroFlag: !g.extendedL2 && l2HasZeroFlag(lo),
    reservedBits: l2HasReservedBits(hi, lo),
    allocBits,
    zeroBits,
  };
}

/** The entry at `index` of an L2 table. */
export function readL2Entry(view: DataView, index: number, g: ClusterGeometry): L2Entry {
  const at = l2EntryPosition(index, g.extendedL2);
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  return g.extendedL2
    ? classifyL2Entry(hi, lo, g, l2BitmapAlloc(view, index), l2BitmapZero(view, index))
    : classifyL2Entry(hi, lo, g);
}

/** The entry's first 64 bits as two words. Refuses values no valid entry holds (reserved bits, offsets). */
export function encodeL2Entry(e: L2EntryValue | L2Entry, g: ClusterGeometry): { hi: number; lo: number } {
  if ("reservedBits" in e && e.reservedBits) throw new Qcow2Error("INVALID_ARGUMENT", "L2 entry with reserved bits set");
  if (e.kind === "compressed") {
    const c = "compressed" in e && e.compressed ? e.compressed : (e as { hostOffset: number; sectors?: number; byteLength?: number });
    if (c.sectors === undefined) return encodeCompressedDescriptor(c.hostOffset, c.byteLength ?? 0, g.clusterBits);
    if (!Number.isInteger(c.sectors) || c.sectors < 1) throw new Qcow2Error("INVALID_ARGUMENT", "compressed cluster sector count must be at least 1");
    return encodeCompressedDescriptor(c.hostOffset, c.sectors * 512 - (c.hostOffset % 512), g.clusterBits);
  }
  const host = e.kind === "unallocated" ? 0 : (e.hostOffset ?? 0);
  if (!Number.isSafeInteger(host) || host < 0 || host >= TWO_56 || host % 512 !== 0) {
    throw new Qcow2Error("INVALID_ARGUMENT", `L2 entry host offset ${host} is not a 512-aligned offset below 2^56`);
  }
  if (e.kind === "zero" && g.extendedL2) throw new Qcow2Error("INVALID_ARGUMENT", "extended L2 entries have no zero flag: set zeroBits");
  const scratch = new DataView(new ArrayBuffer(8));
  const copied = e.kind === "normal" || e.kind === "zero" ? (e.copied ?? false) : false;
  setL2Entry(scratch, 0, false, host, { copied, zero: e.kind === "zero" });
  return { hi: scratch.getUint32(0), lo: scratch.getUint32(4) };
}

/**
 * Write an entry at `index` of an L2 table. Extended tables get the bitmap too: the value's bits, or for a
 * compressed entry none, or (standard-style values without bits) all allocated for normal and none for
 * unallocated.
 */
export function writeL2Entry(view: DataView, index: number, e: L2EntryValue | L2Entry, g: ClusterGeometry): void {
  const { hi, lo } = encodeL2Entry(e, g);
  setL2Raw(view, index, g.extendedL2, hi, lo);
  if (!g.extendedL2) return;
  if (e.kind === "compressed") setL2Bitmap(view, index, 0, 0);
  else {
    const alloc = "allocBits" in e && e.allocBits !== undefined ? e.allocBits : e.kind === "normal" ? ALL_SUBCLUSTERS : 0;
    const zero = "zeroBits" in e && e.zeroBits !== undefined ? e.zeroBits : 0;
    setL2Bitmap(view, index, alloc >>> 0, zero >>> 0);
  }
}

/** Set or clear only the COPIED flag (bit 63) of the entry at `index`, every other bit as it is. */
export function setL2Copied(view: DataView, index: number, g: ClusterGeometry, copied: boolean): void {
  const at = l2EntryPosition(index, g.extendedL2);
  const hi = view.getUint32(at);
  view.setUint32(at, copied ? (hi | OFLAG_COPIED_HI) >>> 0 : (hi & ~OFLAG_COPIED_HI) >>> 0);
}

/** Only the subcluster bitmap of an extended entry. */
export function writeL2Bitmap(view: DataView, index: number, allocBits: number, zeroBits: number): void {
  setL2Bitmap(view, index, allocBits >>> 0, zeroBits >>> 0);
}

/** The entry has a host cluster of its own in the qcow2 file or data file (normal, or zero with a kept cluster). */
export function entryHasHostCluster(e: L2Entry): boolean {
  return (e.kind === "normal" || e.kind === "zero") && e.hostOffset !== 0;
}

/** The entry allocates something: data (any host offset), compressed data, or a preallocated zero cluster. */
export function entryIsAllocated(e: L2Entry): boolean {
  return e.kind === "normal" || e.kind === "compressed" || (e.kind === "zero" && e.hostOffset !== 0);
}

/**
 * Host clusters an entry references, as [first cluster index, count]: a compressed entry every cluster its
 * data touches, a normal or preallocated zero entry its host cluster; undefined for none (and for unaligned
 * host offsets, which the caller reports).
 */
export function referencedClusters(e: L2Entry, clusterSize: number): [first: number, count: number] | undefined {
  if (e.kind === "compressed" && e.compressed) {
    const first = Math.floor(e.compressed.hostOffset / clusterSize);
    const last = Math.floor((e.compressed.hostOffset + e.compressed.byteLength - 1) / clusterSize);
    return [first, last - first + 1];
  }
  if (!entryHasHostCluster(e) || e.hostOffset % clusterSize !== 0) return undefined;
  return [e.hostOffset / clusterSize, 1];
}
