import { describe, expect, it } from "vitest";
import {
  L1_ENTRY_BYTES,
  SubclusterType,
  classifyCluster,
  classifySubcluster,
  l1EntryCopied,
  l1EntryHasReservedBits,
  l1EntryL2Offset,
  l1EntryRaw,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2EntryRaw,
  l2HasReservedBits,
  l2HasZeroFlag,
  l2Hi,
  l2HostOffset,
  l2IsCompressed,
  l2IsCopied,
  l2Lo,
  setL1Entry,
  setL2Bitmap,
  setL2Entry,
  setL2Raw,
  subclusterMask,
  type L2Format,
} from "../src/index";
import { seededRandom, randomBelow } from "./helpers/random";

const view = (n: number) => new DataView(new ArrayBuffer(n));
const rawView = (...words: bigint[]) => {
  const v = view(words.length * 8);
  words.forEach((w, i) => v.setBigUint64(i * 8, w));
  return v;
};
const hiLo = (w: bigint): [number, number] => [Number(w >> 32n), Number(w & 0xffffffffn)];

describe("L1 entries", () => {
  it("entries are 8 bytes", () => {
    expect(L1_ENTRY_BYTES).toBe(8);
  });

  it("decodes offset, COPIED and reserved bits of raw entries", () => {
    const v = rawView(0n, 0x8000000000050000n, 0x00fffffffffffe00n, 0x0100000000010000n, 0x0000000000010001n, 0x7f00000000000000n);
    expect([0, 1, 2, 3, 4].map((i) => l1EntryL2Offset(v, i))).toEqual([0, 0x50000, 2 ** 56 - 512, 0x10000, 0x10000]);
    expect([0, 1, 2, 3].map((i) => l1EntryCopied(v, i))).toEqual([false, true, false, false]);
    expect([0, 1, 2, 3, 4, 5].map((i) => l1EntryHasReservedBits(v, i))).toEqual([false, false, false, true, true, true]);
    expect(l1EntryRaw(v, 1)).toBe(0x8000000000050000n);
  });

  it("every reserved bit (1..8 low, 56..62 high) is detected, no other bit is", () => {
    for (let bit = 0; bit < 64; bit++) {
      const v = rawView(1n << BigInt(bit));
      const reserved = bit <= 8 || (bit >= 56 && bit <= 62);
      expect(l1EntryHasReservedBits(v, 0), `bit ${bit}`).toBe(reserved);
    }
  });

  it("setL1Entry round trips offsets across the 32-bit boundary, seeded", () => {
    const rand = seededRandom(1);
    const v = view(8 * 64);
    const offsets: number[] = [];
    for (let i = 0; i < 64; i++) {
      const off = randomBelow(rand, 2 ** 47) * 512;
      offsets.push(off);
      setL1Entry(v, i, off, i % 2 === 0);
    }
    offsets.forEach((off, i) => {
      expect(l1EntryL2Offset(v, i)).toBe(off);
      expect(l1EntryCopied(v, i)).toBe(off !== 0 && i % 2 === 0);
      expect(l1EntryHasReservedBits(v, i)).toBe(false);
      expect(l1EntryRaw(v, i)).toBe(BigInt(off) | (off !== 0 && i % 2 === 0 ? 1n << 63n : 0n));
    });
  });

  it("setL1Entry never sets COPIED on an unallocated entry, nor reserved bits from a stray offset", () => {
    const v = view(16);
    setL1Entry(v, 0, 0, true);
    expect(l1EntryRaw(v, 0)).toBe(0n);
    setL1Entry(v, 1, 0x10000 + 0x1ff, false);
    expect(l1EntryHasReservedBits(v, 1)).toBe(false);
    expect(l1EntryL2Offset(v, 1)).toBe(0x10000);
  });

  it("leaves neighbouring entries alone", () => {
    const v = rawView(0xffffffffffffffffn, 0n, 0xffffffffffffffffn);
    setL1Entry(v, 1, 0x123400000, true);
    expect(v.getBigUint64(0)).toBe(0xffffffffffffffffn);
    expect(v.getBigUint64(16)).toBe(0xffffffffffffffffn);
  });
});

describe("standard L2 entries", () => {
  const std: L2Format = { extendedL2: false, dataFile: false };
  const df: L2Format = { extendedL2: false, dataFile: true };
  const cls = (w: bigint, f = std) => classifyCluster(...hiLo(w), f);

  it("positions: 8 bytes per entry, 16 with extended L2", () => {
    expect(l2EntryPosition(5, false)).toBe(40);
    expect(l2EntryPosition(5, true)).toBe(80);
  });

  it("classifies every cluster kind as qcow2_get_cluster_type does", () => {
    expect(cls(0n)).toBe("unallocated");
    expect(cls(0x8000000000000000n)).toBe("unallocated"); // COPIED alone, no data file
    expect(cls(0x0000000000050000n)).toBe("normal");
    expect(cls(0x8000000000050000n)).toBe("normal");
    expect(cls(0x0000000000000001n)).toBe("zero-plain");
    expect(cls(0x8000000000000001n)).toBe("zero-plain");
    expect(cls(0x0000000000050001n)).toBe("zero-alloc");
    expect(cls(0x8000000000050001n)).toBe("zero-alloc");
    expect(cls(0x4000000000000000n)).toBe("compressed");
    expect(cls(0x4000000000050001n)).toBe("compressed"); // compressed wins over the zero flag
  });

  it("with a data file, offset 0 with COPIED is a normal cluster; without COPIED unallocated", () => {
    expect(cls(0x8000000000000000n, df)).toBe("normal");
    expect(cls(0n, df)).toBe("unallocated");
    expect(cls(0x0000000000010000n, df)).toBe("normal");
    // zeroed preallocated guest cluster 0: the zero flag wins, offset 0 makes it ZERO_PLAIN (QEMU 7.2)
    expect(cls(0x8000000000000001n, df)).toBe("zero-plain");
  });

  it("with extended L2 the zero flag bit is ignored", () => {
    const ext: L2Format = { extendedL2: true, dataFile: false };
    expect(cls(0x0000000000000001n, ext)).toBe("unallocated");
    expect(cls(0x0000000000050001n, ext)).toBe("normal");
  });

  it("field accessors", () => {
    const [hi, lo] = hiLo(0xc0fffffffffffe01n);
    expect(l2IsCompressed(hi)).toBe(true);
    expect(l2IsCopied(hi)).toBe(true);
    expect(l2HasZeroFlag(lo)).toBe(true);
    expect(l2HostOffset(hi, lo)).toBe(2 ** 56 - 512);
    expect(l2HostOffset(...hiLo(0x3f000000000001fen))).toBe(0);
  });

  it("reserved bits are 1..8 and 56..61", () => {
    for (let bit = 0; bit < 64; bit++) {
      const [hi, lo] = hiLo(1n << BigInt(bit));
      const reserved = (bit >= 1 && bit <= 8) || (bit >= 56 && bit <= 61);
      expect(l2HasReservedBits(hi, lo), `bit ${bit}`).toBe(reserved);
    }
  });

  it("setL2Entry writes offset, COPIED and zero flags; l2Hi/l2Lo/l2EntryRaw read them back", () => {
    const v = view(8 * 4);
    setL2Entry(v, 0, false, 0x50000, { copied: true });
    setL2Entry(v, 1, false, 0x1234560000, { zero: true });
    setL2Entry(v, 2, false, 0, { zero: true, copied: false });
    setL2Entry(v, 3, false, 2 ** 55, {});
    expect(l2EntryRaw(v, 0, false)).toBe(0x8000000000050000n);
    expect(l2EntryRaw(v, 1, false)).toBe(0x0000001234560001n);
    expect(l2EntryRaw(v, 2, false)).toBe(1n);
    expect(l2EntryRaw(v, 3, false)).toBe(1n << 55n);
    expect(l2Hi(v, 1, false)).toBe(0x12);
    expect(l2Lo(v, 1, false)).toBe(0x34560001);
  });

  it("setL2Raw writes raw halves (unsigned)", () => {
    const v = view(16);
    setL2Raw(v, 1, false, -1, 0x80000000);
    expect(l2EntryRaw(v, 1, false)).toBe(0xffffffff80000000n);
  });

  it("seeded round trip of host offsets and flags", () => {
    const rand = seededRandom(7);
    const v = view(8 * 256);
    const want: [number, boolean, boolean][] = [];
    for (let i = 0; i < 256; i++) {
      const off = randomBelow(rand, 2 ** 38) * 512;
      const copied = rand() < 0.5;
      const zero = rand() < 0.3;
      want.push([off, copied, zero]);
      setL2Entry(v, i, false, off, { copied, zero });
    }
    want.forEach(([off, copied, zero], i) => {
      const hi = l2Hi(v, i, false);
      const lo = l2Lo(v, i, false);
      expect(l2HostOffset(hi, lo)).toBe(off);
      expect(l2IsCopied(hi)).toBe(copied);
      expect(l2HasZeroFlag(lo)).toBe(zero);
      expect(l2IsCompressed(hi)).toBe(false);
      expect(l2HasReservedBits(hi, lo)).toBe(false);
    });
  });
});

describe("extended L2 entries and subclusters", () => {
  const ext: L2Format = { extendedL2: true, dataFile: false };
  const extDf: L2Format = { extendedL2: true, dataFile: true };
  const T = SubclusterType;

  it("the bitmap follows the entry: zero bits in the high word, allocation bits in the low word", () => {
    const v = view(32);
    setL2Entry(v, 1, true, 0x70000, { copied: true });
    setL2Bitmap(v, 1, 0x0000000f, 0xf0000000);
    expect(v.getBigUint64(16)).toBe(0x8000000000070000n);
    expect(v.getBigUint64(24)).toBe(0xf00000000000000fn);
    expect(l2BitmapAlloc(v, 1)).toBe(0xf);
    expect(l2BitmapZero(v, 1)).toBe(0xf0000000);
    expect(l2EntryRaw(v, 1, true)).toBe(0x8000000000070000n);
    expect(v.getBigUint64(0)).toBe(0n); // entry 0 untouched
  });

  const sub = (w: bigint, alloc: number, zero: number, sc: number, f = ext) => classifySubcluster(...hiLo(w), alloc, zero, sc, f);

  it("allocated cluster: NORMAL, ZERO_ALLOC, UNALLOCATED_ALLOC per subcluster", () => {
    const w = 0x8000000000070000n;
    expect(sub(w, 0b001, 0b010, 0)).toBe(T.NORMAL);
    expect(sub(w, 0b001, 0b010, 1)).toBe(T.ZERO_ALLOC);
    expect(sub(w, 0b001, 0b010, 2)).toBe(T.UNALLOCATED_ALLOC);
    expect(sub(w, 0x80000000, 0, 31)).toBe(T.NORMAL);
    expect(sub(w, 0, 0x80000000, 31)).toBe(T.ZERO_ALLOC);
  });

  it("allocated cluster: any subcluster both allocated and zero makes every subcluster INVALID", () => {
    const w = 0x8000000000070000n;
    for (const sc of [0, 5, 31]) expect(sub(w, 0b100000, 0b100000, sc)).toBe(T.INVALID);
    expect(sub(w, 0x80000000, 0x80000000, 0)).toBe(T.INVALID);
  });

  it("unallocated cluster: ZERO_PLAIN or UNALLOCATED_PLAIN; any allocation bit is INVALID", () => {
    expect(sub(0n, 0, 0b10, 1)).toBe(T.ZERO_PLAIN);
    expect(sub(0n, 0, 0b10, 0)).toBe(T.UNALLOCATED_PLAIN);
    expect(sub(0n, 0, 0, 31)).toBe(T.UNALLOCATED_PLAIN);
    expect(sub(0n, 1 << 7, 0, 0)).toBe(T.INVALID);
    expect(sub(0n, 0x80000000, 0, 3)).toBe(T.INVALID);
  });

  it("compressed cluster: COMPRESSED whatever the bitmap", () => {
    expect(sub(0x4000000000000000n, 0xffffffff, 0xffffffff, 3)).toBe(T.COMPRESSED);
  });

  it("data file: offset 0 with COPIED is an allocated cluster", () => {
    expect(sub(0x8000000000000000n, 1, 0, 0, extDf)).toBe(T.NORMAL);
    expect(sub(0x8000000000000000n, 1, 0, 1, extDf)).toBe(T.UNALLOCATED_ALLOC);
    expect(sub(0x8000000000000000n, 1, 0, 0, ext)).toBe(T.INVALID);
  });

  it("standard entries map cluster kinds to subcluster types and ignore sc and bitmaps", () => {
    const std: L2Format = { extendedL2: false, dataFile: false };
    expect(sub(0n, 0xff, 0xff, 9, std)).toBe(T.UNALLOCATED_PLAIN);
    expect(sub(1n, 0, 0, 0, std)).toBe(T.ZERO_PLAIN);
    expect(sub(0x50001n, 0, 0, 0, std)).toBe(T.ZERO_ALLOC);
    expect(sub(0x50000n, 0, 0, 0, std)).toBe(T.NORMAL);
    expect(sub(0x4000000000050000n, 0, 0, 0, std)).toBe(T.COMPRESSED);
  });

  it("subcluster type numbering follows QEMU's enum", () => {
    expect(Object.entries(T)).toEqual([
      ["UNALLOCATED_PLAIN", 0],
      ["UNALLOCATED_ALLOC", 1],
      ["ZERO_PLAIN", 2],
      ["ZERO_ALLOC", 3],
      ["NORMAL", 4],
      ["COMPRESSED", 5],
      ["INVALID", 6],
    ]);
  });

  it("subclusterMask", () => {
    expect(subclusterMask(0, 1)).toBe(1);
    expect(subclusterMask(3, 2)).toBe(0b11000);
    expect(subclusterMask(0, 31)).toBe(0x7fffffff);
    expect(subclusterMask(1, 31)).toBe(0xfffffffe);
    expect(subclusterMask(31, 1)).toBe(0x80000000);
    expect(subclusterMask(0, 32)).toBe(0xffffffff);
    expect(subclusterMask(5, 0)).toBe(0);
    for (let first = 0; first < 32; first++) {
      for (let count = 1; first + count <= 32; count++) {
        let want = 0;
        for (let b = first; b < first + count; b++) want += 2 ** b;
        expect(subclusterMask(first, count)).toBe(want);
      }
    }
  });
});
