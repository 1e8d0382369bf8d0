/**
 * Refcount table and refcount block entries (docs/interop/qcow2.txt, "Host cluster management").
 *
 * Refcount table entry (64 bits): bits 0-8 reserved (0), bits 9-63 offset of the refcount block (0: none).
 * Refcount block: one cluster of entries, each `2^refcount_order` bits wide. Entries narrower than a byte
 * are packed from the least significant bit of each byte; 16-, 32- and 64-bit entries are big endian.
 */
import { firstNonZeroByte } from "./bytes";
import { REFT_RESERVED_MASK_LO } from "./constants";

const TWO_32 = 4294967296;

export const REFTABLE_ENTRY_BYTES = 8;

export function reftableEntryOffset(table: DataView, index: number): number {
  const at = index * 8;
  return table.getUint32(at) * TWO_32 + ((table.getUint32(at + 4) & ~REFT_RESERVED_MASK_LO) >>> 0);
}

export function reftableEntryHasReservedBits(table: DataView, index: number): boolean {
  return (table.getUint32(index * 8 + 4) & REFT_RESERVED_MASK_LO) !== 0;
}

export function setReftableEntry(table: DataView, index: number, blockOffset: number): void {
  const at = index * 8;
  table.setUint32(at, Math.floor(blockOffset / TWO_32));
  table.setUint32(at + 4, blockOffset >>> 0);
}

/**
 * Read entry `index` of a refcount block. 64-bit entries above 2^53 come back inexact (>= 2^53); callers
 * treat those as corruption.
 */
export function getRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  switch (refcountOrder) {
    case 0:
      return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1:
      return (block[index >>> 2]! >>> ((index & 3) << 1)) & 3;
    case 2:
      return (block[index >>> 1]! >>> ((index & 1) << 2)) & 15;
    case 3:
      return block[index]!;
    case 4:
      return (block[index * 2]! << 8) | block[index * 2 + 1]!;
    case 5: {
      const at = index * 4;
      return ((block[at]! << 24) >>> 0) + ((block[at + 1]! << 16) | (block[at + 2]! << 8) | block[at + 3]!);
    }
    default: {
      const at = index * 8;
      const hi = ((block[at]! << 24) >>> 0) + ((block[at + 1]! << 16) | (block[at + 2]! << 8) | block[at + 3]!);
      const lo =
        ((block[at + 4]! << 24) >>> 0) + ((block[at + 5]! << 16) | (block[at + 6]! << 8) | block[at + 7]!);
      return hi * TWO_32 + lo;
    }
  }
}

/** Entry `index` of a refcount block in decimal, exact for every width (64-bit entries above 2^53 included). */
export function refcountDecimal(block: Uint8Array, index: number, refcountOrder: number): string {
  if (refcountOrder < 6) return String(getRefcount(block, index, refcountOrder));
  return new DataView(block.buffer, block.byteOffset, block.byteLength).getBigUint64(index * 8).toString();
}

/** Write entry `index` of a refcount block; `value` must fit the entry width. */
export function setRefcount(block: Uint8Array, index: number, refcountOrder: number, value: number): void {
  switch (refcountOrder) {
    case 0: {
      const i = index >>> 3;
      const s = index & 7;
      block[i] = (block[i]! & ~(1 << s)) | ((value & 1) << s);
      return;
    }
    case 1: {
      const i = index >>> 2;
      const s = (index & 3) << 1;
      block[i] = (block[i]! & ~(3 << s)) | ((value & 3) << s);
      return;
    }
    case 2: {
      const i = index >>> 1;
      const s = (index & 1) << 2;
      block[i] = (block[i]! & ~(15 << s)) | ((value & 15) << s);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      block[index * 2] = value >>> 8;
      block[index * 2 + 1] = value & 0xff;
      return;
    case 5: {
      const at = index * 4;
      block[at] = value >>> 24;
      block[at + 1] = (value >>> 16) & 0xff;
      block[at + 2] = (value >>> 8) & 0xff;
      block[at + 3] = value & 0xff;
      return;
    }
    default: {
      const at = index * 8;
      const hi = Math.floor(value / TWO_32);
      const lo = value >>> 0;
      block[at] = hi >>> 24;
      block[at + 1] = (hi >>> 16) & 0xff;
      block[at + 2] = (hi >>> 8) & 0xff;
      block[at + 3] = hi & 0xff;
      block[at + 4] = lo >>> 24;
      block[at + 5] = (lo >>> 16) & 0xff;
      block[at + 6] = (lo >>> 8) & 0xff;
      block[at + 7] = lo & 0xff;
    }
  }
}

/**
 * Index of the first entry of `[from, to)` whose refcount is not zero, or -1 when they are all free. Reads
 * the block in bulk (see firstNonZeroByte): a search for free clusters skims a mostly empty block quickly.
 */
export function firstUsedRefcount(block: Uint8Array, from: number, to: number, refcountOrder: number): number {
  if (from >= to) return -1;
  if (refcountOrder >= 3) {
    const width = 1 << (refcountOrder - 3);
    const at = firstNonZeroByte(block, from * width, to * width);
    return at < 0 ? -1 : Math.floor(at / width);
  }
  // Entries narrower than a byte: the partial bytes at both ends entry by entry, whole bytes in bulk.
  const perByte = 8 >> refcountOrder;
  let i = from;
  for (; i < to && i % perByte !== 0; i++) if (getRefcount(block, i, refcountOrder) !== 0) return i;
  const wholeEnd = to - (to % perByte);
  if (i < wholeEnd) {
    const at = firstNonZeroByte(block, i / perByte, wholeEnd / perByte);
    if (at >= 0) {
      for (let j = at * perByte; ; j++) if (getRefcount(block, j, refcountOrder) !== 0) return j;
    }
    i = Math.max(i, wholeEnd);
  }
  for (; i < to; i++) if (getRefcount(block, i, refcountOrder) !== 0) return i;
  return -1;
}

/** Set entries `[from, to)` of a refcount block to `value` (which must fit the entry width). */
export function fillRefcounts(block: Uint8Array, from: number, to: number, refcountOrder: number, value: number): void {
  if (from >= to) return;
  if (refcountOrder >= 3) {
    const width = 1 << (refcountOrder - 3);
    const start = from * width;
    const end = to * width;
    setRefcount(block, from, refcountOrder, value);
    // Double the filled part until the range is covered.
    for (let filled = width; start + filled < end; filled *= 2) {
      block.copyWithin(start + filled, start, Math.min(start + filled, end - filled));
    }
    return;
  }
  const perByte = 8 >> refcountOrder;
  let i = from;
  for (; i < to && i % perByte !== 0; i++) setRefcount(block, i, refcountOrder, value);
  const wholeEnd = to - (to % perByte);
  if (i < wholeEnd) {
    // The value repeated in every entry of a byte: 1-bit 0b11111111, 2-bit 0b01010101 * v, 4-bit 0x11 * v.
    const pattern = refcountOrder === 0 ? (value & 1) * 0xff : refcountOrder === 1 ? (value & 3) * 0x55 : (value & 15) * 0x11;
    block.fill(pattern, i / perByte, wholeEnd / perByte);
    i = wholeEnd;
  }
  for (; i < to; i++) setRefcount(block, i, refcountOrder, value);
}
