/**
 * Persistent dirty bitmaps against QEMU: bitmaps QEMU made and dirtied read the same through
 * `bitmapStatus` as through qemu-nbd -B + nbdinfo --map; bitmaps we add and dirty are listed by
 * qemu-img info, map the same over qemu-nbd, survive qemu-img bitmap --merge, and are in_use on disk while
 * we hold the image open for writing.
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { ChunkedBits } from "../src/bitmaps";
import { Qcow2Image, addBitmap, bitmapStatus, listBitmaps, removeBitmap } from "../src/index";
import { openImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

const tmp = tempDir("qcowkit-bitmaps-");
afterAll(tmp.cleanup);

type Run = { offset: number; length: number; dirty: boolean };

/** The dirty map of bitmap `name` as qemu-nbd exports it. */
async function nbdMap(path: string, name: string): Promise<Run[]> {
  const sock = `${path}.${name}.sock`;
  const server = spawn("qemu-nbd", ["-r", "-t", "-k", sock, "-f", "qcow2", "-B", name, path], { stdio: "ignore" });
  try {
    for (let i = 0; i < 100; i++) {
      const r = qemuStatus("nbdinfo", [`--map=qemu:dirty-bitmap:${name}`, `nbd+unix:///?socket=${sock}`]);
      if (r.status === 0) {
        return r.stdout
          .trim()
          .split("\n")
          .map((l) => l.trim().split(/\s+/))
          .map(([offset, length, flag]) => ({ offset: Number(offset), length: Number(length), dirty: flag === "1" }));
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    throw new Error("qemu-nbd did not start");
  } finally {
    server.kill();
  }
}

async function qcow2(path: string, readOnly = false): Promise<Qcow2Image> {
  const img = await openImage(path, { readOnly });
  if (!(img instanceof Qcow2Image)) throw new Error("not qcow2");
  return img;
}

describe("ChunkedBits", () => {
  it("sets ranges across bytes and chunks and reports maximal runs", () => {
    const b = new ChunkedBits(100_000, 512);
    b.setRange(3, 13);
    b.setRange(4090, 4200);
    b.setRange(99_999, 100_010);
    expect([...b.runs(0, 100_000)]).toEqual([
      [0, 3, false],
      [3, 13, true],
      [13, 4090, false],
      [4090, 4200, true],
      [4200, 99_999, false],
      [99_999, 100_000, true],
    ]);
    expect(b.get(4095)).toBe(true);
    expect(b.get(4200)).toBe(false);
  });
});

describe("persistent dirty bitmaps", () => {
  it("QEMU's bitmaps read the same as qemu-nbd exports them", async () => {
    const path = tmp.path("qemu.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
    qemu("qemu-img", ["bitmap", "--add", path, "b64k"]);
    qemu("qemu-img", ["bitmap", "--add", "-g", "4k", path, "b4k"]);
    qemu("qemu-io", ["-c", "write 0 100k", "-c", "write -z 1M 64k", "-c", "discard 8M 1M", "-c", "write 63M 1M", "-c", "write 5000 3", path]);
    const img = await qcow2(path, true);
    expect(await listBitmaps(img)).toEqual([
      { name: "b64k", granularity: 65536, flags: ["auto"] },
      { name: "b4k", granularity: 4096, flags: ["auto"] },
    ]);
    for (const name of ["b64k", "b4k"]) {
      const ours = await bitmapStatus(img, name, 0, img.virtualSize);
      expect(ours).toEqual(await nbdMap(path, name));
      expect(ours.some((r) => r.dirty)).toBe(true);
    }
    // A sub-range is clipped to the request.
    expect(await bitmapStatus(img, "b4k", 4096, 8192)).toEqual([{ offset: 4096, length: 8192, dirty: true }]);
    await img.close();
  });

  it("bitmaps we add and dirty are QEMU's to read and merge", async () => {
    const path = tmp.path("ours.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
    let img = await qcow2(path);
    await addBitmap(img, "a");
    await addBitmap(img, "off", { granularity: 512, disabled: true });
    await img.write(0, new Uint8Array(100 * 1024));
    await img.writeZeroes(1024 * 1024, 65536);
    await img.discard(8 * 1024 * 1024, 1024 * 1024);
    await img.write(63 * 1024 * 1024, new Uint8Array(4096).fill(1));
    await img.close();
    const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", path])) as { "format-specific": { data: { bitmaps: unknown } } };
    expect(info["format-specific"].data.bitmaps).toEqual([
      { flags: ["auto"], name: "a", granularity: 65536 },
      { flags: [], name: "off", granularity: 512 },
    ]);
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
    const expected: Run[] = [
      { offset: 0, length: 131072, dirty: true },
      { offset: 131072, length: 917504, dirty: false },
      { offset: 1048576, length: 65536, dirty: true },
      { offset: 1114112, length: 7274496, dirty: false },
      { offset: 8388608, length: 1048576, dirty: true },
      { offset: 9437184, length: 56623104, dirty: false },
      { offset: 66060288, length: 65536, dirty: true },
      { offset: 66125824, length: 983040, dirty: false },
    ];
    expect(await nbdMap(path, "a")).toEqual(expected);
    expect(await nbdMap(path, "off")).toEqual([{ offset: 0, length: 64 * 1024 * 1024, dirty: false }]);
    // QEMU writes with the bitmap enabled, then merges it into the disabled one.
    qemu("qemu-io", ["-c", "write 20M 4k", path]);
    qemu("qemu-img", ["bitmap", "--merge", "a", path, "off"]);
    img = await qcow2(path, true);
    const merged = (await bitmapStatus(img, "off", 0, img.virtualSize)).filter((r) => r.dirty);
    expect(merged.map((r) => r.offset)).toEqual([0, 1048576, 8388608, 20 * 1024 * 1024, 66060288]);
    expect(await bitmapStatus(img, "off", 0, img.virtualSize)).toEqual(await nbdMap(path, "off"));
    await img.close();
  });

  it("in_use while open for writing, consistent after close; remove clears the autoclear bit", async () => {
    const path = tmp.path("inuse.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "8M"]);
    qemu("qemu-img", ["bitmap", "--add", path, "b"]);
    const img = await qcow2(path);
    await img.write(0, new Uint8Array(512));
    const during = JSON.parse(qemu("qemu-img", ["info", "-U", "--output=json", path])) as { "format-specific": { data: { bitmaps: Array<{ flags: string[] }> } } };
    expect(during["format-specific"].data.bitmaps[0]!.flags).toEqual(["in-use", "auto"]);
    await img.close();
    const after = JSON.parse(qemu("qemu-img", ["info", "--output=json", path])) as { "format-specific": { data: { bitmaps: Array<{ flags: string[] }> } } };
    expect(after["format-specific"].data.bitmaps[0]!.flags).toEqual(["auto"]);
    const again = await qcow2(path);
    await removeBitmap(again, "b");
    await again.close();
    const autoclear = readFileSync(path).readBigUInt64BE(88);
    expect(autoclear & 1n).toBe(0n);
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
  });

  it("refuses what QEMU refuses", async () => {
    const v2 = tmp.path("v2.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M"]);
    const img = await qcow2(v2);
    await expect(addBitmap(img, "x", { nodeName: "n" })).rejects.toThrow("Can't make bitmap 'x' persistent in 'n': Cannot store dirty bitmaps in qcow2 v2 files");
    await expect(addBitmap(img, "x", { granularity: 1000 })).rejects.toThrow("Granularity must be power of 2 and at least 512");
    await img.close();
    const v3 = tmp.path("v3.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", v3, "1M"]);
    const img3 = await qcow2(v3);
    await addBitmap(img3, "x");
    await expect(addBitmap(img3, "x")).rejects.toThrow("Bitmap already exists: x");
    await expect(removeBitmap(img3, "nope")).rejects.toThrow("Dirty bitmap 'nope' not found");
    await img3.close();
  });
});

describe("bitmaps and resizing", () => {
  it("a grown image's new area is tracked, a shrunk one's bits are dropped", async () => {
    const path = tmp.path("resize.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    const img = await qcow2(path);
    await addBitmap(img, "b");
    await img.write(960 * 1024, new Uint8Array(4096));
    await img.resize(4 * 1024 * 1024);
    await img.write(3 * 1024 * 1024, new Uint8Array(4096));
    await img.close();
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
    expect((await nbdMap(path, "b")).filter((r) => r.dirty).map((r) => r.offset)).toEqual([960 * 1024, 3 * 1024 * 1024]);
  });
});

describe("BlockImage bitmap methods", () => {
  it("openImage's images answer listBitmaps and bitmapStatus (for the NBD server)", async () => {
    const path = tmp.path("methods.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    qemu("qemu-img", ["bitmap", "--add", "-g", "4k", path, "m"]);
    qemu("qemu-io", ["-c", "write 8k 4k", path]);
    const img = await openImage(path, { readOnly: true });
    expect(await img.listBitmaps!()).toEqual([{ name: "m", granularity: 4096, flags: ["auto"] }]);
    expect(await img.bitmapStatus!("m", 0, 16384)).toEqual([
      { offset: 0, length: 8192, dirty: false },
      { offset: 8192, length: 4096, dirty: true },
      { offset: 12288, length: 4096, dirty: false },
    ]);
    await img.close();
  });
});

describe("bitmap methods of opened images", () => {
  it("are the class's own, so a bitmaps extension without its autoclear bit is ignored as QEMU ignores it", async () => {
    const path = tmp.path("autoclear-off.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
    qemu("qemu-img", ["bitmap", "--add", path, "b0"]);
    qemu("qemu-io", ["-c", "write 0 64k", path]);
    const withBit = await qcow2(path, true);
    expect(Object.hasOwn(withBit, "listBitmaps")).toBe(false);
    expect(Object.hasOwn(withBit, "bitmapStatus")).toBe(false);
    expect((await withBit.listBitmaps()).map((b) => b.name)).toEqual(["b0"]);
    // A range past the end is refused by the class method's range check.
    await expect(withBit.bitmapStatus("b0", 0, 128 << 20)).rejects.toThrow();
    await withBit.close();

    // Clear autoclear bit 0 (bitmaps) in the header: QEMU then treats the extension as stale and shows no bitmaps.
    const hdr = readFileSync(path);
    hdr[95] = hdr[95]! & ~1;
    writeFileSync(path, hdr);
    const qemuInfo = JSON.parse(qemu("qemu-img", ["info", "--output=json", "-U", path])) as { "format-specific": { data: { bitmaps?: unknown[] } } };
    expect(qemuInfo["format-specific"].data.bitmaps ?? []).toEqual([]);
    const without = await qcow2(path, true);
    expect(await without.listBitmaps()).toEqual([]);
    await without.close();
  });
});
