/**
 * L1 table entries (docs/interop/qcow2.txt, "Cluster mapping"):
 *   bits 0-8 reserved (0); bits 9-55 offset of the L2 table (0: L2 table unallocated);
 *   bits 56-62 reserved (0); bit 63 COPIED (refcount of the L2 table is exactly 1).
 * Entries are read as two 32-bit halves (hi = bits 32-63, lo = bits 0-31).
 */
import {
  L1E_OFFSET_MASK_HI,
  L1E_OFFSET_MASK_LO,
  L1E_RESERVED_MASK_HI,
  L1E_RESERVED_MASK_LO,
  OFLAG_COPIED_HI,
} from "./constants";

export const L1_ENTRY_BYTES = 8;
const TWO_32 = 4294967296;

/** Offset of the L2 table an L1 entry points to (0 when unallocated). */
export function l1EntryL2Offset(l1: DataView, index: number): number {
  const at = index * 8;
  return (l1.getUint32(at) & L1E_OFFSET_MASK_HI) * TWO_32 + ((l1.getUint32(at + 4) & L1E_OFFSET_MASK_LO) >>> 0);
}

export function l1EntryCopied(l1: DataView, index: number): boolean {
  return (l1.getUint32(index * 8) & OFLAG_COPIED_HI) !== 0;
}

export function l1EntryHasReservedBits(l1: DataView, index: number): boolean {
  const at = index * 8;
  return (l1.getUint32(at) & L1E_RESERVED_MASK_HI) !== 0 || (l1.getUint32(at + 4) & L1E_RESERVED_MASK_LO) !== 0;
}

/** The raw 64-bit entry as a bigint (for messages and checks, not hot paths). */
export function l1EntryRaw(l1: DataView, index: number): bigint {
  return l1.getBigUint64(index * 8);
}

/** Write an entry: only the offset field of `l2Offset` is stored; COPIED only with a non-zero offset. */
export function setL1Entry(l1: DataView, index: number, l2Offset: number, copied: boolean): void {
  const at = index * 8;
  l1.setUint32(at, (Math.floor(l2Offset / TWO_32) & L1E_OFFSET_MASK_HI) | (copied && l2Offset !== 0 ? OFLAG_COPIED_HI : 0));
  l1.setUint32(at + 4, (l2Offset & L1E_OFFSET_MASK_LO) >>> 0);
}
