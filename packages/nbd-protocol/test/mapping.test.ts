import { Qcow2Error } from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import { allocationDepthFlags, allocationFlags, dirtyFlags, errorMessageOf, nbdErrnoOf, statusRuns, type ExtentState } from "../src/index";

type BlockStatusExtent = ExtentState & { offset: number; length: number };

const ext = (offset: number, length: number, kind: "data" | "hole" | "zero", depth = 0): BlockStatusExtent => ({
  offset,
  length,
  depth,
  present: kind !== "hole",
  zero: kind !== "data",
  data: kind === "data",
});

describe("block status descriptors", () => {
  const extents = [ext(0, 4096, "data"), ext(4096, 4096, "zero"), ext(8192, 8192, "hole", 1)];

  it("map base:allocation to HOLE (no data) and ZERO (reads as zeros) flags", () => {
    expect(allocationFlags(ext(0, 1, "data"))).toBe(0);
    expect(allocationFlags({ ...ext(0, 1, "data"), zero: true })).toBe(2);
    expect(statusRuns(extents, allocationFlags, 0, 16384)).toEqual([
      { length: 4096, flags: 0 },
      { length: 12288, flags: 3 },
    ]);
  });

  it("map allocation depth (0 absent, 1 this image) and merge equal neighbours", () => {
    expect(statusRuns(extents, allocationDepthFlags, 0, 16384)).toEqual([
      { length: 8192, flags: 1 },
      { length: 8192, flags: 0 },
    ]);
  });

  it("clip to the request, honour REQ_ONE and cap the count", () => {
    expect(statusRuns(extents, allocationFlags, 1000, 4000, { reqOne: true })).toEqual([{ length: 3096, flags: 0 }]);
    expect(statusRuns(extents, allocationFlags, 2048, 4096)).toEqual([
      { length: 2048, flags: 0 },
      { length: 2048, flags: 3 },
    ]);
    expect(statusRuns(extents, allocationFlags, 0, 16384, { maxRuns: 2 })).toHaveLength(2);
  });

  it("stop at a gap and never return nothing", () => {
    expect(statusRuns([ext(0, 512, "data"), ext(1024, 512, "zero")], allocationFlags, 0, 2048)).toEqual([{ length: 512, flags: 0 }]);
    expect(statusRuns([], allocationFlags, 0, 2048)).toEqual([{ length: 2048, flags: 0 }]);
  });

  it("map dirty bitmaps to bit 0", () => {
    const ranges = [{ offset: 0, length: 512, dirty: true }, { offset: 512, length: 512, dirty: false }];
    expect(statusRuns(ranges, dirtyFlags, 0, 1024)).toEqual([{ length: 512, flags: 1 }, { length: 512, flags: 0 }]);
  });
});

describe("error mapping", () => {
  it("maps Qcow2Error errno names to NBD values", () => {
    expect(nbdErrnoOf(new Qcow2Error("READ_ONLY", "ro"))).toBe(1);
    expect(nbdErrnoOf(new Qcow2Error("IO_ERROR", "io"))).toBe(5);
    expect(nbdErrnoOf(new Qcow2Error("OUT_OF_BOUNDS", "oob"))).toBe(22);
    expect(nbdErrnoOf(new Qcow2Error("NO_SPACE", "full"))).toBe(28);
    expect(nbdErrnoOf(new Qcow2Error("NO_SPACE", "big", { errno: "EFBIG" }))).toBe(28);
    expect(nbdErrnoOf(new Qcow2Error("NOT_SUPPORTED", "no"))).toBe(95);
    expect(nbdErrnoOf(new Qcow2Error("IO_ERROR", "rofs", { errno: "EROFS" }))).toBe(1);
    expect(nbdErrnoOf(new Qcow2Error("NOT_FOUND", "gone"))).toBe(22);
  });

  it("maps Node system errors by code and anything else to EIO", () => {
    expect(nbdErrnoOf(Object.assign(new Error("x"), { code: "ENOSPC" }))).toBe(28);
    expect(nbdErrnoOf(Object.assign(new Error("x"), { code: "ESHUTDOWN" }))).toBe(108);
    expect(nbdErrnoOf(Object.assign(new Error("x"), { code: "ENOMEM" }))).toBe(12);
    expect(nbdErrnoOf(Object.assign(new Error("x"), { code: "EOVERFLOW" }))).toBe(75);
    expect(nbdErrnoOf(new TypeError("bug"))).toBe(5);
    expect(nbdErrnoOf("weird")).toBe(5);
  });

  it("keeps error messages to one bounded line", () => {
    expect(errorMessageOf(new Error("first\nsecond"))).toBe("first");
    expect(errorMessageOf(new Error("x".repeat(5000)), 100)).toHaveLength(100);
  });
});
