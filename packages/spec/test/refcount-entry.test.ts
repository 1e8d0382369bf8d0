import { describe, expect, it } from "vitest";
import {
  REFTABLE_ENTRY_BYTES,
  getRefcount,
  maxRefcount,
  refcountBlockEntries,
  reftableEntryHasReservedBits,
  reftableEntryOffset,
  setRefcount,
  setReftableEntry,
} from "../src/index";
import { randomBelow, seededRandom } from "./helpers/random";

/** Independent reference: entry `index` of width 2^order read bit by bit (LSB-first below a byte, BE above). */
function referenceGet(block: Uint8Array, index: number, order: number): bigint {
  const bits = 1 << order;
  if (bits < 8) {
    const bitPos = index * bits;
    return BigInt((block[bitPos >> 3]! >> (bitPos & 7)) & ((1 << bits) - 1));
  }
  const bytes = bits / 8;
  let v = 0n;
  for (let i = 0; i < bytes; i++) v = (v << 8n) | BigInt(block[index * bytes + i]!);
  return v;
}

describe("refcount table entries", () => {
  it("8 bytes; offset bits 9..63; bits 0..8 reserved", () => {
    expect(REFTABLE_ENTRY_BYTES).toBe(8);
    const v = new DataView(new ArrayBuffer(24));
    v.setBigUint64(0, 0x0000000000020000n);
    v.setBigUint64(8, 0x00001234567801ffn);
    v.setBigUint64(16, 0x0000000000010100n);
    expect(reftableEntryOffset(v, 0)).toBe(0x20000);
    expect(reftableEntryOffset(v, 1)).toBe(0x123456780000 + 0x0);
    expect(reftableEntryHasReservedBits(v, 0)).toBe(false);
    expect(reftableEntryHasReservedBits(v, 1)).toBe(true);
    expect(reftableEntryHasReservedBits(v, 2)).toBe(true);
    expect(reftableEntryOffset(v, 2)).toBe(0x10000);
  });

  it("setReftableEntry round trips offsets above 2^32", () => {
    const v = new DataView(new ArrayBuffer(16));
    setReftableEntry(v, 1, 2 ** 50 + 0x30000);
    expect(v.getBigUint64(8)).toBe((1n << 50n) + 0x30000n);
    expect(reftableEntryOffset(v, 1)).toBe(2 ** 50 + 0x30000);
    expect(v.getBigUint64(0)).toBe(0n);
  });
});

describe.each([0, 1, 2, 3, 4, 5, 6])("refcount_order %i", (order) => {
  const bits = 2 ** order;
  const max = maxRefcount(order);
  const clusterBits = 12;
  const entries = refcountBlockEntries(clusterBits, order);

  it("block geometry and maximum", () => {
    expect(entries).toBe((4096 * 8) / bits);
    expect(max).toBe(bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1);
  });

  it("seeded random round trip over a whole block, matching an independent bit reader", () => {
    const rand = seededRandom(100 + order);
    const block = new Uint8Array(4096);
    const want = new Array<number>(entries);
    for (let i = 0; i < entries; i++) {
      want[i] = randomBelow(rand, max + 1 > 2 ** 53 ? 2 ** 53 : max + 1);
      setRefcount(block, i, order, want[i]!);
    }
    for (let i = 0; i < entries; i++) {
      expect(getRefcount(block, i, order)).toBe(want[i]);
      expect(referenceGet(block, i, order)).toBe(BigInt(want[i]!));
    }
  });

  it("writing one entry leaves its neighbours untouched", () => {
    const rand = seededRandom(200 + order);
    const block = Uint8Array.from({ length: 256 }, () => Math.floor(rand() * 256));
    const before = block.slice();
    const count = (256 * 8) / bits;
    for (const index of [0, 1, Math.floor(count / 2), count - 1]) {
      const value = index % 2 === 0 ? max : 0;
      const work = before.slice();
      setRefcount(work, index, order, value);
      expect(getRefcount(work, index, order)).toBe(value);
      for (let j = 0; j < count; j++) {
        if (j !== index) expect(getRefcount(work, j, order), `entry ${j}`).toBe(getRefcount(before, j, order));
      }
      // and byte for byte outside the entry's bits
      const diff = work.map((b, k) => b ^ before[k]!);
      const firstBit = index * bits;
      diff.forEach((d, k) => {
        for (let b = 0; b < 8; b++) {
          if ((d >> b) & 1) {
            const bitIndex = bits >= 8 ? k * 8 + (7 - b) : k * 8 + b;
            expect(bitIndex).toBeGreaterThanOrEqual(firstBit);
            expect(bitIndex).toBeLessThan(firstBit + bits);
          }
        }
      });
    }
  });

  it("the maximum value and 0 round trip at the first and last entry", () => {
    const block = new Uint8Array(4096);
    setRefcount(block, entries - 1, order, max);
    expect(getRefcount(block, entries - 1, order)).toBe(max);
    setRefcount(block, 0, order, max);
    setRefcount(block, 0, order, 0);
    expect(getRefcount(block, 0, order)).toBe(0);
    expect(getRefcount(block, entries - 1, order)).toBe(max);
  });
});

describe("refcount layout facts", () => {
  it("sub-byte entries are packed from the least significant bit", () => {
    const b1 = new Uint8Array(1);
    setRefcount(b1, 0, 0, 1);
    expect(b1[0]).toBe(0b00000001);
    setRefcount(b1, 7, 0, 1);
    expect(b1[0]).toBe(0b10000001);
    const b2 = new Uint8Array(1);
    setRefcount(b2, 1, 1, 3);
    expect(b2[0]).toBe(0b00001100);
    const b4 = new Uint8Array(1);
    setRefcount(b4, 1, 2, 0xa);
    expect(b4[0]).toBe(0xa0);
  });

  it("16-, 32- and 64-bit entries are big endian", () => {
    const b = new Uint8Array(16);
    setRefcount(b, 1, 4, 0x1234);
    expect(Array.from(b.subarray(2, 4))).toEqual([0x12, 0x34]);
    setRefcount(b, 1, 5, 0x89abcdef);
    expect(Array.from(b.subarray(4, 8))).toEqual([0x89, 0xab, 0xcd, 0xef]);
    setRefcount(b, 1, 6, 2 ** 52 + 3);
    expect(Array.from(b.subarray(8, 16))).toEqual([0x00, 0x10, 0, 0, 0, 0, 0, 3]);
    expect(getRefcount(b, 1, 6)).toBe(2 ** 52 + 3);
  });

  it("64-bit entries above 2^53 read back as at least 2^53 (callers treat them as corruption)", () => {
    const b = new Uint8Array(8).fill(0xff);
    expect(getRefcount(b, 0, 6)).toBeGreaterThanOrEqual(2 ** 53);
    expect(Number.isSafeInteger(getRefcount(b, 0, 6))).toBe(false);
  });

  it("32-bit entries with the top bit set are positive", () => {
    const b = Uint8Array.of(0xff, 0xff, 0xff, 0xff);
    expect(getRefcount(b, 0, 5)).toBe(0xffffffff);
  });
});
