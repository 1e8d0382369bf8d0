/**
 * Persistent dirty bitmaps (docs/interop/qcow2.txt, "Bitmaps").
 *
 * Bitmap directory entry:
 *   0- 7 bitmap_table_offset  8-11 bitmap_table_size (entries)  12-15 flags
 *   16 type (1 = dirty tracking)  17 granularity_bits  18-19 name_size  20-23 extra_data_size
 *   then extra data, the name (not NUL-terminated), padding to a multiple of 8.
 * Flags: bit 0 in_use, bit 1 auto, bit 2 extra_data_compatible; others reserved.
 *
 * Bitmap table entry (64 bits): bits 9-55 offset of a data cluster; when 0, bit 0 gives the value of
 * the whole cluster (0 all zeros, 1 all ones); bits 1-8 and 56-63 reserved.
 */
import { decodeText, encodeText, getU64, setU64, viewOf } from "./bytes";
import { Qcow2Error } from "./errors";

export const BITMAP_FLAG_IN_USE = 1;
export const BITMAP_FLAG_AUTO = 2;
export const BITMAP_FLAG_EXTRA_DATA_COMPATIBLE = 4;
export const BITMAP_FLAGS_KNOWN = 7;
export const BITMAP_TYPE_DIRTY_TRACKING = 1;
export const BITMAP_DIRECTORY_ENTRY_HEADER_BYTES = 24;

export interface BitmapDirectoryEntry {
  bitmapTableOffset: number;
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  extraData: Uint8Array;
}

export function decodeBitmapDirectory(dir: Uint8Array, count: number): BitmapDirectoryEntry[] {
  const v = viewOf(dir);
  const out: BitmapDirectoryEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + BITMAP_DIRECTORY_ENTRY_HEADER_BYTES > dir.byteLength) {
      throw new Qcow2Error("INVALID_IMAGE", "Bitmap directory is truncated");
    }
    const nameSize = v.getUint16(at + 18);
    const extraSize = v.getUint32(at + 20);
    const extraStart = at + BITMAP_DIRECTORY_ENTRY_HEADER_BYTES;
    const end = extraStart + extraSize + nameSize;
    if (end > dir.byteLength) throw new Qcow2Error("INVALID_IMAGE", "Bitmap directory is truncated");
    out.push({
      bitmapTableOffset: getU64(v, at),
      bitmapTableSize: v.getUint32(at + 8),
      flags: v.getUint32(at + 12),
      type: v.getUint8(at + 16),
      granularityBits: v.getUint8(at + 17),
      extraData: dir.slice(extraStart, extraStart + extraSize),
      name: decodeText(dir.subarray(extraStart + extraSize, end)),
    });
    at = (end + 7) & ~7;
  }
  return out;
}

export function bitmapDirectoryEntryBytes(e: BitmapDirectoryEntry): number {
  return (BITMAP_DIRECTORY_ENTRY_HEADER_BYTES + e.extraData.byteLength + encodeText(e.name).byteLength + 7) & ~7;
}

export function encodeBitmapDirectory(entries: readonly BitmapDirectoryEntry[]): Uint8Array {
  const out = new Uint8Array(entries.reduce((n, e) => n + bitmapDirectoryEntryBytes(e), 0));
  const v = viewOf(out);
  let at = 0;
  for (const e of entries) {
    const name = encodeText(e.name);
    setU64(v, at, e.bitmapTableOffset);
    v.setUint32(at + 8, e.bitmapTableSize);
    v.setUint32(at + 12, e.flags);
    v.setUint8(at + 16, e.type);
    v.setUint8(at + 17, e.granularityBits);
    v.setUint16(at + 18, name.byteLength);
    v.setUint32(at + 20, e.extraData.byteLength);
    out.set(e.extraData, at + BITMAP_DIRECTORY_ENTRY_HEADER_BYTES);
    out.set(name, at + BITMAP_DIRECTORY_ENTRY_HEADER_BYTES + e.extraData.byteLength);
    at += bitmapDirectoryEntryBytes(e);
  }
  return out;
}

/** Number of bitmap table entries for a bitmap over `virtualSize` bytes. */
export function bitmapTableEntries(virtualSize: number, granularityBits: number, clusterBits: number): number {
  const bits = Math.ceil(virtualSize / 2 ** granularityBits);
  return Math.ceil(bits / (2 ** clusterBits * 8));
}

const TWO_32 = 4294967296;

export function bitmapTableEntryOffset(table: DataView, index: number): number {
  const at = index * 8;
  return (table.getUint32(at) & 0x00ffffff) * TWO_32 + ((table.getUint32(at + 4) & 0xfffffe00) >>> 0);
}

/** For an entry without a data cluster: true when the whole cluster reads as ones. */
export function bitmapTableEntryAllOnes(table: DataView, index: number): boolean {
  return (table.getUint32(index * 8 + 4) & 1) !== 0;
}

export function bitmapTableEntryHasReservedBits(table: DataView, index: number): boolean {
  return (table.getUint32(index * 8) & 0xff000000) !== 0 || (table.getUint32(index * 8 + 4) & 0x1fe) !== 0;
}

export function setBitmapTableEntry(table: DataView, index: number, dataOffset: number, allOnes = false): void {
  setU64(table, index * 8, dataOffset);
  if (dataOffset === 0 && allOnes) table.setUint32(index * 8 + 4, 1);
}
