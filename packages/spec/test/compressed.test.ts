import { describe, expect, it } from "vitest";
import {
  Qcow2Error,
  classifyCluster,
  compressedOffsetBits,
  decodeCompressedDescriptor,
  encodeCompressedDescriptor,
  l2IsCompressed,
  l2IsCopied,
} from "../src/index";
import { randomBelow, seededRandom } from "./helpers/random";

const CLUSTER_BITS = Array.from({ length: 13 }, (_, i) => i + 9);

/** The descriptor as one 64-bit value, computed independently with bigints (docs/interop/qcow2.txt). */
function reference(hostOffset: number, byteLength: number, clusterBits: number): bigint {
  const x = BigInt(62 - (clusterBits - 8));
  const additional = BigInt(Math.floor((hostOffset + byteLength - 1) / 512) - Math.floor(hostOffset / 512));
  return (1n << 62n) | (additional << x) | BigInt(hostOffset);
}

const join = ({ hi, lo }: { hi: number; lo: number }) => (BigInt(hi) << 32n) | BigInt(lo);

describe("compressed cluster descriptors", () => {
  it("offset bits: x = 62 - (cluster_bits - 8)", () => {
    expect(CLUSTER_BITS.map(compressedOffsetBits)).toEqual([61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49]);
  });

  it("a known descriptor: 64 KiB clusters, data at 0x50123, 700 bytes", () => {
    // 0x50123 % 512 = 0x123 = 291; 291 + 700 = 991 -> 2 sectors -> 1 additional
    const d = encodeCompressedDescriptor(0x50123, 700, 16);
    expect(join(d)).toBe(0x4000000000000000n | (1n << 54n) | 0x50123n);
    expect(decodeCompressedDescriptor(d.hi, d.lo, 16)).toEqual({ hostOffset: 0x50123, byteLength: 2 * 512 - 291 });
  });

  describe.each(CLUSTER_BITS)("cluster_bits %i", (clusterBits) => {
    const clusterSize = 2 ** clusterBits;
    const x = compressedOffsetBits(clusterBits);
    const maxOffset = Math.min(2 ** x, 2 ** 53) - 1;

    it("round trips many offsets and lengths, matching an independent bigint encoding", () => {
      const rand = seededRandom(clusterBits * 1000 + 1);
      for (let i = 0; i < 300; i++) {
        const hostOffset = i < 4 ? [0, 1, 511, maxOffset - clusterSize][i]! : randomBelow(rand, maxOffset - clusterSize);
        // up to a whole cluster of compressed data, crossing sector boundaries at any alignment
        const byteLength = 1 + randomBelow(rand, clusterSize - (hostOffset % 512));
        const d = encodeCompressedDescriptor(hostOffset, byteLength, clusterBits);
        expect(join(d)).toBe(reference(hostOffset, byteLength, clusterBits));
        expect(l2IsCompressed(d.hi)).toBe(true);
        expect(l2IsCopied(d.hi)).toBe(false);
        expect(classifyCluster(d.hi, d.lo, { extendedL2: false, dataFile: false })).toBe("compressed");
        const back = decodeCompressedDescriptor(d.hi, d.lo, clusterBits);
        expect(back.hostOffset).toBe(hostOffset);
        // the decoded length covers the data and ends on a sector boundary
        expect(back.byteLength).toBeGreaterThanOrEqual(byteLength);
        expect((hostOffset + back.byteLength) % 512).toBe(0);
        expect(back.byteLength - byteLength).toBeLessThan(512);
      }
    });

    it("data may run into the next host cluster", () => {
      const hostOffset = 5 * clusterSize - 100;
      const byteLength = Math.min(clusterSize, 2 ** (clusterBits - 8) * 512 - 412);
      const e = encodeCompressedDescriptor(hostOffset, byteLength, clusterBits);
      const d = decodeCompressedDescriptor(e.hi, e.lo, clusterBits);
      expect(d.hostOffset).toBe(hostOffset);
      expect(d.hostOffset + d.byteLength).toBeGreaterThan(5 * clusterSize);
    });

    it("the largest sector count fits; one more sector is refused", () => {
      const sectors = 2 ** (clusterBits - 8); // additional field holds up to sectors - 1
      const ok = encodeCompressedDescriptor(0x1000, sectors * 512, clusterBits);
      expect(decodeCompressedDescriptor(ok.hi, ok.lo, clusterBits).byteLength).toBe(sectors * 512);
      expect(() => encodeCompressedDescriptor(0x1000 + 1, sectors * 512, clusterBits)).toThrow("compressed cluster too large");
    });

    it("decode ignores bit 63 and only reads its own fields", () => {
      const d = encodeCompressedDescriptor(12345, 400, clusterBits);
      const withTop = decodeCompressedDescriptor((d.hi | 0x80000000) >>> 0, d.lo, clusterBits);
      expect(withTop).toEqual(decodeCompressedDescriptor(d.hi, d.lo, clusterBits));
    });
  });

  it("refuses offsets beyond the offset field, unsafe offsets and empty data", () => {
    expect(() => encodeCompressedDescriptor(2 ** 49, 10, 21)).toThrow("compressed cluster offset too large");
    expect(() => encodeCompressedDescriptor(2 ** 49 - 1, 1, 21)).not.toThrow();
    expect(() => encodeCompressedDescriptor(2 ** 54, 10, 9)).toThrow(Qcow2Error);
    expect(() => encodeCompressedDescriptor(-512, 10, 16)).toThrow(Qcow2Error);
    expect(() => encodeCompressedDescriptor(512, 0, 16)).toThrow("at least 1 byte");
  });
});
