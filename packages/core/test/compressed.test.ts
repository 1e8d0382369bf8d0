/** Compressed clusters: QEMU-made zlib and zstd images read back byte for byte; our compressed writes pass QEMU. */
import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { openImage } from "../src/node";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

function randomishData(size: number, seed: number): Uint8Array {
  // Compressible but not trivial: runs of random bytes.
  const r = rng(seed);
  const out = new Uint8Array(size);
  let i = 0;
  while (i < size) {
    const run = 1 + Math.floor(r() * 64);
    const b = Math.floor(r() * 256);
    out.fill(b, i, Math.min(size, i + run));
    i += run;
  }
  return out;
}

describe("compressed images", () => {
  for (const type of ["zlib", "zstd"]) {
    for (const cs of ["512", "4k", "64k", "2M"]) {
      it(`reads a QEMU-compressed ${type} image with ${cs} clusters`, async () => {
        const t = tempDir();
        try {
          const raw = t.path("src.raw");
          const data = randomishData(5 * 1024 * 1024 + 4096, cs.length + type.length);
          data.fill(0, 1024 * 1024, 2 * 1024 * 1024);
          writeFileSync(raw, data);
          const img = t.path("c.qcow2");
          qemu("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", `compression_type=${type},cluster_size=${cs}`, raw, img]);
          const check = JSON.parse(qemu("qemu-img", ["check", "--output=json", img]));
          expect(check["compressed-clusters"]).toBeGreaterThan(0);
          const image = await openImage(img, { readOnly: true });
          const buf = new Uint8Array(image.virtualSize);
          await image.read(0, buf);
          await image.close();
          expect(Buffer.compare(Buffer.from(buf), readFileSync(raw))).toBe(0);
        } finally {
          t.cleanup();
        }
      });
    }

    it(`writes ${type} compressed clusters that QEMU reads and checks clean`, async () => {
      const t = tempDir();
      try {
        const img = t.path("w.qcow2");
        qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `compression_type=${type}`, img, "4M"]);
        const image = await openImage(img);
        const data = randomishData(1024 * 1024, 7);
        await image.write(0, data, { compressed: true });
        // Overwrite one compressed cluster normally; compressing over an allocated cluster fails (as in QEMU).
        await image.write(65536 + 100, new Uint8Array(1000).fill(0xaa));
        await expect(image.write(2 * 65536, randomishData(65536, 9), { compressed: true })).rejects.toMatchObject({ errno: "EIO" });
        await image.discard(2 * 65536, 65536);
        await image.write(2 * 65536, randomishData(65536, 9), { compressed: true });
        await image.close();
        const check = qemuStatus("qemu-img", ["check", img]);
        expect(check.stdout).toContain("No errors were found on the image.");
        const raw = t.path("out.raw");
        qemu("qemu-img", ["convert", "-O", "raw", img, raw]);
        const expected = new Uint8Array(4 * 1024 * 1024);
        expected.set(data, 0);
        expected.fill(0xaa, 65536 + 100, 65536 + 1100);
        expected.set(randomishData(65536, 9), 2 * 65536);
        expect(Buffer.compare(readFileSync(raw), Buffer.from(expected))).toBe(0);
        const json = JSON.parse(qemu("qemu-img", ["check", "--output=json", img]));
        expect(json["compressed-clusters"]).toBe(15);
      } finally {
        t.cleanup();
      }
    });
  }

  it("refuses compressed writes to a data-file image with ENOTSUP", async () => {
    const t = tempDir();
    try {
      const img = t.path("d.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${t.path("d.raw")}`, img, "1M"]);
      const image = await openImage(img);
      await expect(image.write(0, new Uint8Array(65536), { compressed: true })).rejects.toMatchObject({ errno: "ENOTSUP" });
      await image.close();
      expect(qemuStatus("qemu-img", ["check", img]).status).toBe(0);
    } finally {
      t.cleanup();
    }
  });
});
