/**
 * CompressingTarget (streamToImage's `compress`): writes gathered into whole compressed clusters, in any order,
 * over a backing file; and concatImages (several images read as one disk). Checked against QEMU: qemu-io
 * applies the same writes to a reference, qemu-img compare and check judge.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { CompressingTarget } from "../src/compressing-target";
import { concatImages, imageToStream, openImage, streamToImage } from "../src/node";
import { collect } from "./browser/stream-consumer";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

const t = tempDir("qcowkit-compress-concat-");
afterAll(() => t.cleanup());
let n = 0;
const name = (ext: string) => t.path(`c${n++}.${ext}`);

function checkJson(file: string): { "compressed-clusters"?: number; corruptions?: number; leaks?: number } {
  const r = qemuStatus("qemu-img", ["check", "--output=json", file]);
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout);
}

function expectSame(a: string, b: string, fa = "qcow2", fb = "qcow2"): void {
  const r = qemuStatus("qemu-img", ["compare", "-f", fa, "-F", fb, a, b]);
  expect(r.stdout + r.stderr).toContain("Images are identical.");
}

describe("CompressingTarget", () => {
  it("gathers out-of-order partial writes into compressed clusters; missing bytes come from the backing file", async () => {
    const base = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "2M"]);
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 0x55 0 2M", base]);
    const mk = () => {
      const f = name("qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", f, "2M"]);
      return f;
    };
    const ours = mk();
    const ref = mk();
    // Random sector-aligned and unaligned writes, in random order, over 2 MiB of 64 KiB clusters.
    const r = rng(7);
    const writes: Array<{ off: number; len: number; pattern: number }> = [];
    for (let i = 0; i < 60; i++) {
      const aligned = i % 3 !== 0;
      const off = aligned ? Math.floor(r() * 4000) * 512 : Math.floor(r() * (2 * 1024 * 1024 - 70_000));
      const len = aligned ? 512 * (1 + Math.floor(r() * 140)) : 1 + Math.floor(r() * 70_000);
      writes.push({ off: Math.min(off, 2 * 1024 * 1024 - len), len, pattern: 1 + Math.floor(r() * 200) });
    }
    // Whole clusters 8..11 in one write, and a run of zeros over half of cluster 20.
    writes.push({ off: 8 * 65536, len: 4 * 65536, pattern: 0x77 });
    const img = await openImage(ours, { readOnly: false });
    try {
      const target = new CompressingTarget(img, 3);
      for (const w of writes) await target.write(w.off, new Uint8Array(w.len).fill(w.pattern));
      await target.writeZeroes(20 * 65536, 32768);
      await target.finish();
      await img.flush();
    } finally {
      await img.close();
    }
    qemu("qemu-io", ["-f", "qcow2", ...writes.flatMap((w) => ["-c", `write -P ${w.pattern} ${w.off} ${w.len}`]), "-c", `write -z ${20 * 65536} 32768`, ref]);
    const check = checkJson(ours);
    expect(check["compressed-clusters"]).toBeGreaterThan(0);
    expectSame(ref, ours);
  });

  it("refuses a raw target as qemu-img does", async () => {
    const raw = name("raw");
    qemu("qemu-img", ["create", "-q", "-f", "raw", raw, "1M"]);
    const img = await openImage(raw, { readOnly: false, format: "raw" });
    try {
      expect(() => new CompressingTarget(img)).toThrow("Compression not supported for this file format");
    } finally {
      await img.close();
    }
  });
});

describe("concatImages", () => {
  it("reads and streams several images as one disk, as qemu-img convert concatenates them", async () => {
    const a = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", a, "1536K"]);
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 100k", "-c", "write -P 2 1400k 136k", a]);
    const b = name("raw");
    qemu("qemu-img", ["create", "-q", "-f", "raw", b, "3000K"]);
    qemu("qemu-io", ["-f", "raw", "-c", "write -P 3 4k 700k", b]);
    const ref = name("qcow2");
    qemu("qemu-img", ["convert", "-O", "qcow2", a, b, a, ref]);
    const ia = await openImage(a, { readOnly: true });
    const ib = await openImage(b, { readOnly: true, format: "raw" });
    try {
      const joined = concatImages([ia, ib, ia]);
      expect(joined.virtualSize).toBe(2 * ia.virtualSize + ib.virtualSize);
      // A read across both boundaries.
      const mid = new Uint8Array(ib.virtualSize + 200_000);
      await joined.read(ia.virtualSize - 100_000, mid);
      expect(mid[0]).toBe(2);
      expect(mid[100_000 + 4096]).toBe(3);
      expect(mid[100_000 + ib.virtualSize]).toBe(1);
      // Block status: the zeros between the data extents are not data.
      const status = await joined.blockStatus(0, joined.virtualSize);
      expect(status[0]).toMatchObject({ offset: 0, data: true });
      expect(status.some((e) => e.offset === 131_072 && !e.data)).toBe(true);
      expect(status.every((e) => e.hostOffset === undefined)).toBe(true);
      const out = name("qcow2");
      const bytes = await collect(imageToStream(joined, {}));
      const target = name("qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", target, String(joined.virtualSize)]);
      const img = await openImage(target, { readOnly: false });
      try {
        await streamToImage(new Blob([bytes]).stream(), img, { targetZeroInit: true });
      } finally {
        await img.close();
      }
      writeFileSync(out, bytes);
      expect(checkJson(out).corruptions ?? 0).toBe(0);
      expectSame(ref, out);
      expectSame(ref, target);
      await expect(joined.write(0, new Uint8Array(512))).rejects.toThrow("read-only");
      expect(concatImages([ia])).toBe(ia);
      expect(readFileSync(out).byteLength).toBeLessThan(3 * 1024 * 1024);
    } finally {
      await ia.close();
      await ib.close();
    }
  });
});
