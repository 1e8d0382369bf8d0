/** The compact L2 tables a read-only check keeps for its COPIED-flag pass (check-sparse-l2.ts). */
import { describe, expect, it } from "vitest";
import { SparseL2Tables } from "../src/check-sparse-l2";

function table(entries: number, entryBytes: number, used: Record<number, number>): Uint8Array {
  const t = new Uint8Array(entries * entryBytes);
  for (const [i, fill] of Object.entries(used)) t.fill(fill, Number(i) * entryBytes, (Number(i) + 1) * entryBytes);
  return t;
}

describe("SparseL2Tables", () => {
  it("keeps the used entries' indices and bytes, for 8- and 16-byte entries", () => {
    for (const entryBytes of [8, 16]) {
      const s = new SparseL2Tables(entryBytes, 4, 1 << 20);
      s.keep(0x10000, table(64, entryBytes, { 3: 0xa1, 40: 0xb2 }), [3, 40]);
      const kept = s.get(0x10000)!;
      expect([...kept.indices]).toEqual([3, 40]);
      expect(kept.entries).toEqual(new Uint8Array([...Array(entryBytes).fill(0xa1), ...Array(entryBytes).fill(0xb2)]));
      expect(s.get(0x20000)).toBeUndefined();
    }
  });

  it("keeps an all-zero table as no entries", () => {
    const s = new SparseL2Tables(8, 4, 1 << 20);
    s.keep(0x30000, new Uint8Array(512), []);
    expect(s.get(0x30000)?.indices.length).toBe(0);
  });

  it("does not keep tables with more used entries than its limit, nor past its byte budget", () => {
    const s = new SparseL2Tables(8, 2, 3 * 256 + 100);
    s.keep(0x10000, table(64, 8, { 0: 1, 1: 1, 2: 1 }), [0, 1, 2]);
    expect(s.get(0x10000)).toBeUndefined();
    for (let i = 1; i <= 5; i++) s.keep(i * 0x10000, table(64, 8, { 7: i }), [7]);
    const kept = [1, 2, 3, 4, 5].filter((i) => s.get(i * 0x10000) !== undefined);
    expect(kept).toEqual([1, 2, 3]);
  });

  it("keeps the first copy of a table named twice", () => {
    const s = new SparseL2Tables(8, 4, 1 << 20);
    s.keep(0x10000, table(64, 8, { 5: 9 }), [5]);
    s.keep(0x10000, table(64, 8, { 6: 7 }), [6]);
    expect([...s.get(0x10000)!.indices]).toEqual([5]);
  });
});

describe("SparseL2Tables.fill", () => {
  it("rebuilds a kept table byte for byte, over whatever the buffer held", () => {
    for (const entryBytes of [8, 16]) {
      const s = new SparseL2Tables(entryBytes, 4, 1 << 20);
      const original = table(64, entryBytes, { 0: 0x11, 17: 0x22, 63: 0x33 });
      expect(s.keep(0x10000, original, [0, 17, 63])).toBe(true);
      const into = new Uint8Array(64 * entryBytes).fill(0xff);
      expect(s.fill(0x10000, into)).toBe(true);
      expect(into).toEqual(original);
      expect(s.fill(0x20000, into)).toBe(false);
    }
  });
});
