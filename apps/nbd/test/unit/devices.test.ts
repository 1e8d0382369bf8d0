import * as fs from "node:fs";
import * as path from "node:path";
import { isQcow2Error } from "@qcowkit/spec";
import { afterAll, describe, expect, it } from "vitest";
import { MemoryDevice } from "../../src/memory-device";
import { ProbedRawGuard, openExport } from "../../src/open";
import { openImage } from "@qcowkit/core/node";
import { makeTempDir, patternBytes } from "../helpers";

const tmp = makeTempDir();
afterAll(tmp.cleanup);

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (isQcow2Error(e)) return e.code;
    throw e;
  }
  throw new Error("expected a failure");
}

describe("raw images from @qcowkit/core", () => {
  it("reads and writes at positions, zeroes, and flushes", async () => {
    const file = path.join(tmp.dir, "a.raw");
    fs.writeFileSync(file, Buffer.alloc(1 << 20));
    const dev = await openImage(file, { format: "raw" });
    expect(dev.virtualSize).toBe(1 << 20);
    const data = patternBytes(8192, 7);
    await dev.write(4096, data, { fua: true });
    const back = new Uint8Array(8192);
    await dev.read(4096, back);
    expect(Buffer.from(back).equals(data)).toBe(true);
    await dev.writeZeroes(6144, 1024);
    await dev.read(4096, back);
    expect(back.subarray(2048, 3072).every((x) => x === 0)).toBe(true);
    expect(back[2047]).toBe(data[2047]);
    // FAST_ZERO: zeroing without writing zero bytes (fallocate) or ENOTSUP at once.
    try {
      await dev.writeZeroes(0, 512, { noFallback: true });
    } catch (e) {
      expect(isQcow2Error(e) && e.code).toBe("NOT_SUPPORTED");
    }
    const status = await dev.blockStatus(0, 1 << 20);
    expect(status[0]).toMatchObject({ offset: 0, present: true });
    expect(status.reduce((n, e) => n + e.length, 0)).toBe(1 << 20);
    await dev.flush();
    await dev.close();
    expect(fs.readFileSync(file).subarray(4096, 6144).equals(data.subarray(0, 2048))).toBe(true);
  });

  it("refuses out-of-range, unsafe and read-only operations", async () => {
    const file = path.join(tmp.dir, "b.raw");
    fs.writeFileSync(file, Buffer.alloc(4096));
    const dev = await openImage(file, { format: "raw", readOnly: true });
    expect(await codeOf(dev.read(4000, new Uint8Array(200)))).toBe("OUT_OF_BOUNDS");
    expect(await codeOf(dev.read(2 ** 53, new Uint8Array(1)))).toBe("OUT_OF_BOUNDS");
    expect(await codeOf(dev.write(0, new Uint8Array(1)))).toBe("READ_ONLY");
    expect(await codeOf(dev.discard(0, 512))).toBe("READ_ONLY");
    await dev.close();
    expect(await codeOf(dev.read(0, new Uint8Array(1)))).toBe("INVALID_ARGUMENT");
  });

  it("reports a missing file in QEMU's words", async () => {
    await expect(openImage(path.join(tmp.dir, "nope"), { format: "raw" })).rejects.toThrow(/^Could not open '.*nope': No such file or directory$/);
  });
});

describe("openExport", () => {
  it("refuses unknown formats and files that are not qcow2 when qcow2 is asked for", async () => {
    const file = path.join(tmp.dir, "c.raw");
    fs.writeFileSync(file, Buffer.alloc(4096));
    await expect(openExport(file, { format: "vmdk", readOnly: false })).rejects.toThrow("Unknown driver 'vmdk'");
    await expect(openExport(file, { format: "qcow2", readOnly: false })).rejects.toThrow("Image is not in qcow2 format");
  });

  it("guards probed raw images against writing a qcow2 header", async () => {
    const file = path.join(tmp.dir, "d.raw");
    fs.writeFileSync(file, Buffer.alloc(4096));
    const dev = await openExport(file, { readOnly: false });
    expect(dev).toBeInstanceOf(ProbedRawGuard);
    expect(await codeOf(dev.write(0, Uint8Array.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])))).toBe("READ_ONLY");
    await dev.write(0, Uint8Array.from([0x51, 0x46, 0x49])); // not the whole magic: fine
    expect(await codeOf(dev.write(3, Uint8Array.from([0xfb])))).toBe("READ_ONLY");
    await dev.write(512, Uint8Array.from([0x51, 0x46, 0x49, 0xfb]));
    await dev.close();
    const explicit = await openExport(file, { format: "raw", readOnly: false });
    expect(explicit).not.toBeInstanceOf(ProbedRawGuard);
    // With the format given, the header may be written (as qemu-nbd -f raw allows).
    await explicit.write(0, Uint8Array.from([0x51, 0x46, 0x49, 0xfb]));
    await explicit.close();
  });
});

describe("MemoryDevice", () => {
  it("tracks data, zero and unallocated clusters and dirty bitmaps", async () => {
    const dev = new MemoryDevice({ size: 1 << 20, clusterSize: 65536, bitmaps: ["b"] });
    await dev.write(65536, patternBytes(65536, 1));
    await dev.writeZeroes(131072, 65536);
    await dev.writeZeroes(65536 + 100, 10);
    const st = await dev.blockStatus(0, 4 * 65536);
    expect(st.map((e) => [e.offset, e.length, e.present, e.zero, e.data])).toEqual([
      [0, 65536, false, true, false],
      [65536, 65536, true, false, true],
      [131072, 65536, true, true, false],
      [196608, 65536, false, true, false],
    ]);
    const back = new Uint8Array(20);
    await dev.read(65536 + 95, back);
    expect([...back.subarray(5, 15)].every((x) => x === 0)).toBe(true);
    expect(await dev.bitmapStatus("b", 0, 4 * 65536)).toEqual([
      { offset: 0, length: 65536, dirty: false },
      { offset: 65536, length: 131072, dirty: true },
      { offset: 196608, length: 65536, dirty: false },
    ]);
    await dev.discard(65536, 65536);
    expect(dev.allocatedClusters).toBe(0);
  });

  it("injects failures once", async () => {
    const dev = new MemoryDevice({ size: 4096 });
    dev.failNext("read", new Error("boom"));
    await expect(dev.read(0, new Uint8Array(1))).rejects.toThrow("boom");
    await dev.read(0, new Uint8Array(1));
  });
});
