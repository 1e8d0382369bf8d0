import { describe, expect, it } from "vitest";
import {
  BITMAP_DIRECTORY_ENTRY_HEADER_BYTES,
  BITMAP_FLAGS_KNOWN,
  BITMAP_FLAG_AUTO,
  BITMAP_FLAG_EXTRA_DATA_COMPATIBLE,
  BITMAP_FLAG_IN_USE,
  BITMAP_TYPE_DIRTY_TRACKING,
  bitmapDirectoryEntryBytes,
  bitmapTableEntries,
  bitmapTableEntryAllOnes,
  bitmapTableEntryHasReservedBits,
  bitmapTableEntryOffset,
  decodeBitmapDirectory,
  encodeBitmapDirectory,
  setBitmapTableEntry,
  type BitmapDirectoryEntry,
} from "../src/index";
import { hex } from "./helpers/fixtures";

function entry(overrides: Partial<BitmapDirectoryEntry> = {}): BitmapDirectoryEntry {
  return {
    bitmapTableOffset: 0x50000,
    bitmapTableSize: 1,
    flags: BITMAP_FLAG_AUTO,
    type: BITMAP_TYPE_DIRTY_TRACKING,
    granularityBits: 16,
    name: "b0",
    extraData: new Uint8Array(0),
    ...overrides,
  };
}

describe("bitmap directory", () => {
  it("constants: flags bits 0..2, type 1, 24-byte entry header", () => {
    expect([BITMAP_FLAG_IN_USE, BITMAP_FLAG_AUTO, BITMAP_FLAG_EXTRA_DATA_COMPATIBLE, BITMAP_FLAGS_KNOWN]).toEqual([1, 2, 4, 7]);
    expect(BITMAP_TYPE_DIRTY_TRACKING).toBe(1);
    expect(BITMAP_DIRECTORY_ENTRY_HEADER_BYTES).toBe(24);
  });

  it("encodes QEMU's layout for one entry", () => {
    expect(hex(encodeBitmapDirectory([entry()]))).toBe(
      "0000000000050000" + "00000001" + "00000002" + "01" + "10" + "0002" + "00000000" + "6230" + "000000000000",
    );
    expect(bitmapDirectoryEntryBytes(entry())).toBe(32);
  });

  it("round trips entries with extra data and names of several lengths", () => {
    const list = [
      entry(),
      entry({ name: "x".repeat(1023), flags: BITMAP_FLAG_IN_USE | BITMAP_FLAG_AUTO, granularityBits: 9, bitmapTableSize: 300 }),
      entry({ name: "\u00fc", extraData: Uint8Array.of(1, 2, 3, 4, 5), flags: BITMAP_FLAG_EXTRA_DATA_COMPATIBLE, bitmapTableOffset: 2 ** 44 }),
    ];
    const bytes = encodeBitmapDirectory(list);
    expect(bytes.byteLength % 8).toBe(0);
    expect(bytes.byteLength).toBe(list.reduce((n, e) => n + bitmapDirectoryEntryBytes(e), 0));
    expect(decodeBitmapDirectory(bytes, 3)).toEqual(list);
  });

  it("the name follows the extra data; each entry is padded to 8", () => {
    const bytes = encodeBitmapDirectory([entry({ extraData: Uint8Array.of(9, 9, 9), name: "n" })]);
    expect(bytes.byteLength).toBe(32);
    expect(Array.from(bytes.subarray(24, 28))).toEqual([9, 9, 9, "n".charCodeAt(0)]);
    expect(Array.from(bytes.subarray(28))).toEqual([0, 0, 0, 0]);
  });

  it("refuses a directory shorter than its entries", () => {
    const bytes = encodeBitmapDirectory([entry(), entry({ name: "second" })]);
    expect(() => decodeBitmapDirectory(bytes.subarray(0, 20), 1)).toThrow("Bitmap directory is truncated");
    expect(() => decodeBitmapDirectory(bytes.subarray(0, 32 + 24 + 3), 2)).toThrow("Bitmap directory is truncated");
    expect(() => decodeBitmapDirectory(bytes, 3)).toThrow("Bitmap directory is truncated");
  });
});

describe("bitmap table entries", () => {
  it("entries needed: one bit per granule, cluster_size * 8 bits per data cluster", () => {
    expect(bitmapTableEntries(1024 * 1024, 16, 16)).toBe(1);
    expect(bitmapTableEntries(2 ** 40, 16, 16)).toBe(32); // 2^24 bits / 2^19 bits per cluster
    expect(bitmapTableEntries(2 ** 40 + 1, 16, 16)).toBe(33);
    expect(bitmapTableEntries(512 * 512 * 8 * 512 + 1, 9, 9)).toBe(513);
    expect(bitmapTableEntries(0, 16, 16)).toBe(0);
  });

  it("offset, all-ones flag and reserved bits", () => {
    const v = new DataView(new ArrayBuffer(40));
    v.setBigUint64(0, 0x0000000000060000n);
    v.setBigUint64(8, 0x0000000000000001n);
    v.setBigUint64(16, 0n);
    v.setBigUint64(24, 0x0100000000000000n);
    v.setBigUint64(32, 0x0000000000000002n);
    expect([0, 1, 2].map((i) => bitmapTableEntryOffset(v, i))).toEqual([0x60000, 0, 0]);
    expect([1, 2].map((i) => bitmapTableEntryAllOnes(v, i))).toEqual([true, false]);
    expect([0, 1, 2, 3, 4].map((i) => bitmapTableEntryHasReservedBits(v, i))).toEqual([false, false, false, true, true]);
  });

  it("reserved bits are exactly 1..8 and 56..63", () => {
    for (let bit = 0; bit < 64; bit++) {
      const v = new DataView(new ArrayBuffer(8));
      v.setBigUint64(0, 1n << BigInt(bit));
      expect(bitmapTableEntryHasReservedBits(v, 0), `bit ${bit}`).toBe((bit >= 1 && bit <= 8) || bit >= 56);
    }
  });

  it("setBitmapTableEntry: data cluster offsets, and the all-ones marker only without one", () => {
    const v = new DataView(new ArrayBuffer(24));
    setBitmapTableEntry(v, 0, 2 ** 40 + 0x10000);
    setBitmapTableEntry(v, 1, 0, true);
    setBitmapTableEntry(v, 2, 0x20000, true);
    expect(v.getBigUint64(0)).toBe((1n << 40n) + 0x10000n);
    expect(v.getBigUint64(8)).toBe(1n);
    expect(v.getBigUint64(16)).toBe(0x20000n);
    expect(bitmapTableEntryOffset(v, 0)).toBe(2 ** 40 + 0x10000);
  });
});
