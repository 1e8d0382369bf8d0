/**
 * The one L2 entry classification: every kind and flag encodes and decodes back to itself, at the edges of
 * the format (largest host offsets, compressed sector counts at the smallest and largest cluster sizes), and
 * values no valid entry holds are refused.
 */
import { isQcow2Error, setL2Raw, viewOf } from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import {
  classifyL2Entry,
  encodeL2Entry,
  entryIsAllocated,
  readL2Entry,
  referencedClusters,
  setL2Copied,
  writeL2Entry,
  type ClusterGeometry,
  type L2EntryValue,
} from "../src/index";

const std = (clusterBits: number, dataFile = false): ClusterGeometry => ({ clusterBits, extendedL2: false, dataFile });
const ext = (clusterBits: number): ClusterGeometry => ({ clusterBits, extendedL2: true, dataFile: false });

function roundTrip(value: L2EntryValue, g: ClusterGeometry) {
  const view = viewOf(new Uint8Array(64));
  writeL2Entry(view, 1, value, g);
  const e = readL2Entry(view, 1, g);
  // Encoding the decoded entry again gives the same bits.
  const again = viewOf(new Uint8Array(64));
  writeL2Entry(again, 1, e, g);
  expect(Array.from(new Uint8Array(again.buffer))).toEqual(Array.from(new Uint8Array(view.buffer)));
  return e;
}

const refused = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return isQcow2Error(e) ? e.code : "other";
  }
  return "accepted";
};

describe("L2 entry classification", () => {
  it("every kind round-trips through encode and decode (standard entries)", () => {
    const g = std(16);
    expect(roundTrip({ kind: "unallocated" }, g)).toMatchObject({ kind: "unallocated", hostOffset: 0, copied: false, zeroFlag: false });
    expect(roundTrip({ kind: "zero" }, g)).toMatchObject({ kind: "zero", hostOffset: 0, copied: false, zeroFlag: true });
    expect(roundTrip({ kind: "zero", hostOffset: 5 << 16, copied: true }, g)).toMatchObject({ kind: "zero", hostOffset: 5 << 16, copied: true, zeroFlag: true });
    expect(roundTrip({ kind: "normal", hostOffset: 7 << 16, copied: false }, g)).toMatchObject({ kind: "normal", hostOffset: 7 << 16, copied: false });
    expect(roundTrip({ kind: "normal", hostOffset: 7 << 16, copied: true }, g)).toMatchObject({ kind: "normal", copied: true, reservedBits: false });
    const c = roundTrip({ kind: "compressed", hostOffset: 0x12345, sectors: 3 }, g);
    expect(c).toMatchObject({ kind: "compressed", hostOffset: 0, copied: false });
    expect(c.compressed).toEqual({ hostOffset: 0x12345, sectors: 3, byteLength: 3 * 512 - 0x145 });
  });

  it("extended entries carry the subcluster bitmap; the zero kind needs zero bits, not a flag", () => {
    const g = ext(16);
    const e = roundTrip({ kind: "normal", hostOffset: 9 << 16, copied: true, allocBits: 0x0000ffff, zeroBits: 0xff000000 }, g);
    expect(e).toMatchObject({ kind: "normal", allocBits: 0x0000ffff, zeroBits: 0xff000000, zeroFlag: false });
    expect(roundTrip({ kind: "unallocated", zeroBits: 0xffffffff }, g)).toMatchObject({ kind: "unallocated", allocBits: 0, zeroBits: 0xffffffff });
    // A normal value without bits is all allocated; a compressed entry has none.
    expect(roundTrip({ kind: "normal", hostOffset: 1 << 16, copied: true }, g).allocBits).toBe(0xffffffff);
    expect(roundTrip({ kind: "compressed", hostOffset: 3 << 16, sectors: 1 }, g)).toMatchObject({ allocBits: 0, zeroBits: 0 });
    expect(refused(() => encodeL2Entry({ kind: "zero" }, g))).toBe("INVALID_ARGUMENT");
  });

  it("the largest host offsets: the last cluster below 2^53, and anything past the 56-bit field refused", () => {
    for (const bits of [9, 16, 21]) {
      const cs = 2 ** bits;
      const max = 2 ** 53 - cs;
      expect(roundTrip({ kind: "normal", hostOffset: max, copied: true }, std(bits)).hostOffset).toBe(max);
      expect(roundTrip({ kind: "zero", hostOffset: max, copied: false }, std(bits)).hostOffset).toBe(max);
    }
    expect(refused(() => encodeL2Entry({ kind: "normal", hostOffset: 2 ** 56, copied: false }, std(16)))).toBe("INVALID_ARGUMENT");
    expect(refused(() => encodeL2Entry({ kind: "normal", hostOffset: 2 ** 54, copied: false }, std(16)))).toBe("INVALID_ARGUMENT");
    // Bits 0-8 are flags and reserved bits, never part of an offset.
    expect(refused(() => encodeL2Entry({ kind: "normal", hostOffset: 0x10100, copied: false }, std(16)))).toBe("INVALID_ARGUMENT");
  });

  it("compressed sector counts at 512-byte and 2 MiB clusters", () => {
    // 512-byte clusters: one bit of sector count (1 or 2 sectors); 2 MiB clusters: 13 bits (up to 8192 sectors).
    for (const [bits, maxSectors] of [
      [9, 2],
      [21, 8192],
    ] as const) {
      const g = std(bits);
      for (const sectors of [1, maxSectors]) {
        // The highest offset the descriptor holds, or (512-byte clusters: 61 bits) the highest safe integer.
        for (const hostOffset of [512, 0x1234567 + 3, Math.min(2 ** (62 - (bits - 8)), 2 ** 53) - 1 - sectors * 512]) {
          const e = roundTrip({ kind: "compressed", hostOffset, sectors }, g);
          expect(e.compressed?.sectors).toBe(sectors);
          expect(e.compressed?.hostOffset).toBe(hostOffset);
          expect(e.compressed!.byteLength).toBe(sectors * 512 - (hostOffset % 512));
        }
      }
      expect(refused(() => encodeL2Entry({ kind: "compressed", hostOffset: 512, sectors: maxSectors + 1 }, g))).toBe("INVALID_ARGUMENT");
      expect(refused(() => encodeL2Entry({ kind: "compressed", hostOffset: 512, sectors: 0 }, g))).toBe("INVALID_ARGUMENT");
      expect(refused(() => encodeL2Entry({ kind: "compressed", hostOffset: 2 ** (62 - (bits - 8)), sectors: 1 }, g))).toBe("INVALID_ARGUMENT");
    }
    // A byte length gives the sectors it touches.
    const view = viewOf(new Uint8Array(16));
    writeL2Entry(view, 0, { kind: "compressed", hostOffset: 1000, byteLength: 100 }, std(16));
    expect(readL2Entry(view, 0, std(16)).compressed).toEqual({ hostOffset: 1000, sectors: 2, byteLength: 1024 - 1000 + 512 });
  });

  it("reserved bits are reported by decode and refused by encode", () => {
    const g = std(16);
    for (const [hi, lo] of [
      [0x01000000, 0x10000], // bit 56
      [0x20000000, 0x10000], // bit 61
      [0x80000000, 0x10002], // bit 1
      [0x00000000, 0x10100], // bit 8
    ] as const) {
      const e = classifyL2Entry(hi, lo, g);
      expect(e.reservedBits).toBe(true);
      expect(refused(() => encodeL2Entry(e, g))).toBe("INVALID_ARGUMENT");
    }
    // Compressed descriptors have no reserved bits of that kind: their bits are offset and length.
    expect(classifyL2Entry(0x40000000 | 0x3fffff, 0xffffffff, g).reservedBits).toBe(false);
  });

  it("external data files: host offset 0 with COPIED is data; without COPIED it is unallocated", () => {
    const g = std(16, true);
    expect(classifyL2Entry(0x80000000, 0, g)).toMatchObject({ kind: "normal", hostOffset: 0, copied: true });
    expect(classifyL2Entry(0, 0, g).kind).toBe("unallocated");
    expect(classifyL2Entry(0x80000000, 0, std(16)).kind).toBe("unallocated");
  });

  it("referenced clusters, allocation, and the COPIED flag alone", () => {
    const g = std(12);
    const cs = 4096;
    const view = viewOf(new Uint8Array(64));
    writeL2Entry(view, 0, { kind: "compressed", hostOffset: 3 * cs - 100, byteLength: 300 }, g);
    const c = readL2Entry(view, 0, g);
    expect(referencedClusters(c, cs)).toEqual([2, 2]);
    expect(entryIsAllocated(c)).toBe(true);
    expect(referencedClusters(classifyL2Entry(0, 1, g), cs)).toBeUndefined();
    expect(entryIsAllocated(classifyL2Entry(0, 1, g))).toBe(false);
    expect(referencedClusters(classifyL2Entry(0, 5 * cs + 1, g), cs)).toEqual([5, 1]);
    expect(referencedClusters(classifyL2Entry(0, 5 * cs + 512, g), cs)).toBeUndefined(); // unaligned: not released
    setL2Raw(view, 1, false, 0x01000000, 7 * cs); // reserved bit 56 stays as it is
    setL2Copied(view, 1, g, true);
    expect(view.getUint32(8)).toBe(0x81000000);
    setL2Copied(view, 1, g, false);
    expect(view.getUint32(8)).toBe(0x01000000);
    expect(view.getUint32(12)).toBe(7 * cs);
  });
});
