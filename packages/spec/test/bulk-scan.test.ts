import { describe, expect, it } from "vitest";
import { fillRefcounts, firstNonZeroByte, firstUsedRefcount, getRefcount, setRefcount } from "../src/index";

/** Deterministic pseudo-random numbers (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296;
  };
}

describe("firstNonZeroByte", () => {
  it("finds the first non-zero byte of any range, at any alignment, like a byte-by-byte search", () => {
    const r = rng(7);
    const backing = new Uint8Array(300);
    for (let round = 0; round < 400; round++) {
      backing.fill(0);
      const nonZero = Math.floor(r() * 4);
      for (let k = 0; k < nonZero; k++) backing[Math.floor(r() * 300)] = 1 + Math.floor(r() * 255);
      const offset = Math.floor(r() * 5);
      const bytes = backing.subarray(offset, offset + 200 + Math.floor(r() * 90));
      const from = Math.floor(r() * bytes.length);
      const to = from + Math.floor(r() * (bytes.length - from + 10));
      let expected = -1;
      for (let i = from; i < Math.min(to, bytes.length); i++) {
        if (bytes[i] !== 0) {
          expected = i;
          break;
        }
      }
      expect(firstNonZeroByte(bytes, from, to)).toBe(expected);
    }
  });
  it("defaults to the whole array and answers -1 for empty ranges", () => {
    expect(firstNonZeroByte(new Uint8Array(64))).toBe(-1);
    const b = new Uint8Array(64);
    b[63] = 9;
    expect(firstNonZeroByte(b)).toBe(63);
    expect(firstNonZeroByte(b, 10, 10)).toBe(-1);
    expect(firstNonZeroByte(b, 20, 5)).toBe(-1);
  });
});

describe("firstUsedRefcount and fillRefcounts", () => {
  for (let order = 0; order <= 6; order++) {
    it(`match entry-by-entry reads and writes for ${1 << order}-bit refcounts`, () => {
      const r = rng(100 + order);
      const entries = 600;
      const bytes = Math.ceil((entries << order) / 8);
      const max = order === 6 ? 2 ** 40 : 2 ** (1 << order) - 1;
      for (let round = 0; round < 150; round++) {
        const block = new Uint8Array(bytes);
        const used = Math.floor(r() * 4);
        for (let k = 0; k < used; k++) setRefcount(block, Math.floor(r() * entries), order, 1 + Math.floor(r() * Math.min(max, 1000)));
        const from = Math.floor(r() * entries);
        const to = from + Math.floor(r() * (entries - from + 1));
        let expected = -1;
        for (let i = from; i < to; i++) {
          if (getRefcount(block, i, order) !== 0) {
            expected = i;
            break;
          }
        }
        expect(firstUsedRefcount(block, from, to, order)).toBe(expected);

        const value = Math.floor(r() * Math.min(max, 5000)) + (r() < 0.2 ? 0 : 1);
        const want = block.slice();
        for (let i = from; i < to; i++) setRefcount(want, i, order, Math.min(value, max));
        fillRefcounts(block, from, to, order, Math.min(value, max));
        expect(block).toEqual(want);
      }
    });
  }
});
