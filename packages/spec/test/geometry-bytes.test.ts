import { describe, expect, it } from "vitest";
import {
  Qcow2Error,
  alignUp,
  bytesPerL2Table,
  decodeText,
  encodeText,
  errnoText,
  getU64,
  isAligned,
  isAllZero,
  isQcow2Error,
  l1EntriesForSize,
  l2EntriesPerTable,
  l2EntryBytes,
  maxRefcount,
  refcountBlockEntries,
  setU64,
  sizeToClusters,
  subclusterSize,
  viewOf,
} from "../src/index";

describe("geometry", () => {
  it("L2 entry size and entries per table", () => {
    expect(l2EntryBytes(false)).toBe(8);
    expect(l2EntryBytes(true)).toBe(16);
    expect(l2EntriesPerTable(16, false)).toBe(8192);
    expect(l2EntriesPerTable(16, true)).toBe(4096);
    expect(l2EntriesPerTable(9, false)).toBe(64);
    expect(l2EntriesPerTable(21, true)).toBe(131072);
  });

  it("guest bytes per L2 table", () => {
    expect(bytesPerL2Table(16, false)).toBe(512 * 1024 * 1024);
    expect(bytesPerL2Table(16, true)).toBe(256 * 1024 * 1024);
    expect(bytesPerL2Table(9, false)).toBe(32 * 1024);
    expect(bytesPerL2Table(21, false)).toBe(2 ** 39);
  });

  it("L1 entries for a size (rounded up), as qemu-img create sizes the L1 table", () => {
    expect(l1EntriesForSize(0, 16, false)).toBe(0);
    expect(l1EntriesForSize(1, 16, false)).toBe(1);
    expect(l1EntriesForSize(512 * 1024 * 1024, 16, false)).toBe(1);
    expect(l1EntriesForSize(512 * 1024 * 1024 + 512, 16, false)).toBe(2);
    expect(l1EntriesForSize(2 ** 40, 16, false)).toBe(2048);
    expect(l1EntriesForSize(2 ** 40, 16, true)).toBe(4096);
  });

  it("refcount block entries and maximum refcounts", () => {
    expect(refcountBlockEntries(16, 4)).toBe(32768);
    expect(refcountBlockEntries(16, 0)).toBe(524288);
    expect(refcountBlockEntries(9, 6)).toBe(64);
    expect([0, 1, 2, 3, 4, 5].map(maxRefcount)).toEqual([1, 3, 15, 255, 65535, 4294967295]);
    expect(maxRefcount(6)).toBe(Number.MAX_SAFE_INTEGER);
  });

  it("subcluster size and clusters for a byte count", () => {
    expect(subclusterSize(16)).toBe(2048);
    expect(subclusterSize(14)).toBe(512);
    expect(sizeToClusters(0, 16)).toBe(0);
    expect(sizeToClusters(1, 16)).toBe(1);
    expect(sizeToClusters(65536, 16)).toBe(1);
    expect(sizeToClusters(65537, 16)).toBe(2);
  });
});

describe("byte helpers", () => {
  it("viewOf covers exactly the bytes of a subarray", () => {
    const u8 = new Uint8Array(32);
    const sub = u8.subarray(5, 13);
    const v = viewOf(sub);
    expect(v.byteOffset).toBe(5);
    expect(v.byteLength).toBe(8);
    v.setUint8(0, 7);
    expect(u8[5]).toBe(7);
  });

  it("getU64/setU64 round trip safe integers across the 32-bit boundary", () => {
    const v = new DataView(new ArrayBuffer(8));
    for (const n of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 53 - 1, 0x123456789abc]) {
      setU64(v, 0, n);
      expect(v.getBigUint64(0)).toBe(BigInt(n));
      expect(getU64(v, 0)).toBe(n);
    }
  });

  it("getU64 of values of 2^53 and more is not a safe integer", () => {
    const v = new DataView(new ArrayBuffer(8));
    v.setBigUint64(0, 2n ** 53n + 1n);
    expect(Number.isSafeInteger(getU64(v, 0))).toBe(false);
  });

  it("text codecs are UTF-8", () => {
    expect(Array.from(encodeText("\u00e9"))).toEqual([0xc3, 0xa9]);
    expect(decodeText(Uint8Array.of(0xe2, 0x82, 0xac))).toBe("\u20ac");
  });

  it("alignUp and isAligned", () => {
    expect(alignUp(0, 512)).toBe(0);
    expect(alignUp(1, 512)).toBe(512);
    expect(alignUp(512, 512)).toBe(512);
    expect(alignUp(2 ** 40 + 1, 65536)).toBe(2 ** 40 + 65536);
    expect(isAligned(1024, 512)).toBe(true);
    expect(isAligned(1000, 512)).toBe(false);
  });

  it("isAllZero finds a non-zero byte anywhere, at any alignment", () => {
    const buf = new Uint8Array(67);
    for (const start of [0, 1, 3]) {
      const sub = buf.subarray(start);
      expect(isAllZero(sub)).toBe(true);
      for (const i of [0, 1, sub.length - 4, sub.length - 1]) {
        sub[i] = 1;
        expect(isAllZero(sub)).toBe(false);
        sub[i] = 0;
      }
    }
    expect(isAllZero(new Uint8Array(0))).toBe(true);
  });
});

describe("Qcow2Error", () => {
  it("carries code, errno (defaulted per code), message and cause", () => {
    const cause = new Error("root");
    const e = new Qcow2Error("NO_SPACE", "full", { cause });
    expect(e.message).toBe("full");
    expect(e.name).toBe("Qcow2Error");
    expect(e.code).toBe("NO_SPACE");
    expect(e.errno).toBe("ENOSPC");
    expect(e.cause).toBe(cause);
    expect(new Qcow2Error("CORRUPT", "x", { errno: "EACCES" }).errno).toBe("EACCES");
    expect(new Qcow2Error("UNSUPPORTED_FEATURE", "x").errno).toBe("ENOTSUP");
    expect(errnoText[e.errno]).toBe("No space left on device");
  });

  it("isQcow2Error recognises copies from another module instance", () => {
    const foreign = Object.assign(new Error("x"), { name: "Qcow2Error", code: "CORRUPT" });
    expect(isQcow2Error(foreign)).toBe(true);
    expect(isQcow2Error(new Error("x"))).toBe(false);
    expect(isQcow2Error(new Qcow2Error("INTERNAL", "y"))).toBe(true);
  });
});
