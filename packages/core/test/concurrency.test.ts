/**
 * Many requests in flight on one image (as the NBD server issues them): the result must equal the same
 * writes applied in order to a flat reference, and the image must check clean.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { createImage, openImage } from "../src/node";
import { qemu, qemuStatus, randomData, rng, tempDir } from "./helpers";

/** QEMU's check finds the closed image clean, and QEMU reads `flat` from it. */
function expectQemuReads(path: string, flat: Uint8Array, raw: string): void {
  const check = qemuStatus("qemu-img", ["check", path]);
  expect(check.status, check.stdout + check.stderr).toBe(0);
  qemu("qemu-img", ["convert", "-O", "raw", path, raw]);
  expect(Buffer.compare(readFileSync(raw), Buffer.from(flat))).toBe(0);
}

describe("concurrent requests", () => {
  for (const [name, opts] of [
    ["default", {}],
    ["extended L2", { extendedL2: true }],
    ["small clusters", { clusterSize: 4096 }],
    ["data file", { dataFile: "DATA" }],
  ] as const) {
    it(`${name}: hundreds of disjoint writes, zero writes, reads and flushes in flight at once`, async () => {
      const t = tempDir();
      try {
        const size = 16 * 1024 * 1024;
        const path = t.path("c.qcow2");
        const o = { size, ...opts } as Record<string, unknown>;
        if (o["dataFile"]) o["dataFile"] = t.path("c.data");
        await createImage(path, o as never);
        const img = await openImage(path);
        const r = rng(99);
        const flat = new Uint8Array(size);
        // Disjoint 64 KiB-aligned slots so that order between requests does not matter.
        const slots = Array.from({ length: size / 65536 }, (_, i) => i).sort(() => r() - 0.5);
        const pending: Promise<void>[] = [];
        for (let i = 0; i < 400 && i < slots.length * 2; i++) {
          const slot = slots[i % slots.length]!;
          if (i >= slots.length) break;
          const offset = slot * 65536 + Math.floor(r() * 16) * 512;
          const length = 512 * (1 + Math.floor(r() * ((65536 - (offset % 65536)) / 512)));
          const k = r();
          if (k < 0.7) {
            const data = new Uint8Array(length).fill(1 + (i % 250));
            flat.set(data, offset);
            pending.push(img.write(offset, data));
          } else if (k < 0.85) {
            flat.fill(0, offset, offset + length);
            pending.push(img.writeZeroes(offset, length, { unmap: r() < 0.5 }));
          } else {
            pending.push(img.read(offset, new Uint8Array(length)));
          }
          if (r() < 0.05) pending.push(img.flush());
        }
        await Promise.all(pending);
        const back = new Uint8Array(size);
        await img.read(0, back);
        expect(Buffer.compare(Buffer.from(back), Buffer.from(flat))).toBe(0);
        await img.close();
        expectQemuReads(path, flat, t.path("out.raw"));
      } finally {
        t.cleanup();
      }
    });
  }
});

describe("allocating writes in flight together", () => {
  for (const [name, opts] of [
    ["fresh image", {}],
    ["over a backing file (copy-on-write of partial clusters)", { backing: true }],
    ["external data file", { dataFile: true }],
    ["4 KiB clusters, requests across L2 tables", { clusterSize: 4096 }],
  ] as const) {
    it(`${name}: partial writes sharing clusters, with reads in flight, equal QEMU's reading of the same writes`, async () => {
      const t = tempDir();
      try {
        const size = 8 * 1024 * 1024;
        const path = t.path("c.qcow2");
        const base = t.path("base.raw");
        const flat = new Uint8Array(size);
        const o: Record<string, unknown> = { size };
        if ("clusterSize" in opts) o["clusterSize"] = opts.clusterSize;
        if ("dataFile" in opts) o["dataFile"] = t.path("c.data");
        if ("backing" in opts) {
          flat.set(randomData(size, 5));
          writeFileSync(base, flat);
          Object.assign(o, { backingFile: base, backingFormat: "raw" });
        }
        await createImage(path, o as never);
        const img = await openImage(path);
        const r = rng(7);
        // Disjoint byte ranges, so the result does not depend on the order; many share a cluster.
        const writes: Array<[number, Uint8Array]> = [];
        for (let offset = 0; offset < size; ) {
          const length = Math.min(size - offset, 512 * (1 + Math.floor(r() * 160)));
          writes.push([offset, randomData(length, writes.length + 11)]);
          offset += length + 512 * Math.floor(r() * 40);
        }
        writes.sort(() => r() - 0.5);
        const pending: Promise<unknown>[] = [];
        for (const [offset, data] of writes) {
          flat.set(data, offset);
          pending.push(img.write(offset, data));
          if (r() < 0.2) pending.push(img.read(Math.floor(r() * ((size - 4096) / 512)) * 512, new Uint8Array(4096)));
        }
        await Promise.all(pending);
        await img.close();
        expectQemuReads(path, flat, t.path("out.raw"));
      } finally {
        t.cleanup();
      }
    });
  }
});

describe("large images", () => {
  it("a 4 TiB sparse image with a multi-cluster L1 table: writes near the end, QEMU reads them", async () => {
    const t = tempDir();
    try {
      const path = t.path("big.qcow2");
      // 4 KiB clusters: one L2 table maps 2 MiB, so 4 TiB needs 2M L1 entries = 16 MiB of L1 (4096 clusters).
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "4T"]);
      const img = await openImage(path);
      const tiB = 2 ** 40;
      const spots = [0, 3 * tiB + 12345 * 512, 4 * tiB - 8192];
      for (const [i, off] of spots.entries()) await img.write(off, new Uint8Array(8192).fill(0x10 + i));
      await img.close();
      expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
      for (const [i, off] of spots.entries()) {
        const r = qemuStatus("qemu-io", ["-r", "-c", `read -P ${0x10 + i} ${off} 8192`, path]);
        expect(r.stdout).not.toContain("Pattern verification failed");
        expect(r.stdout).toContain("read 8192/8192");
      }
      const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", path])) as Array<{ start: number; data: boolean }>;
      // Extents start at the 4 KiB cluster holding each write (copy-on-write fills the rest of the cluster).
      expect(map.filter((e) => e.data).map((e) => e.start)).toEqual(spots.map((s) => Math.floor(s / 4096) * 4096));
      const again = await openImage(path, { readOnly: true });
      const ext = await again.blockStatus(4 * tiB - 65536, 65536);
      expect(ext[ext.length - 1]).toMatchObject({ offset: 4 * tiB - 8192, length: 8192, data: true });
      await again.close();
    } finally {
      t.cleanup();
    }
  });

  it("growing an image across refcount-table growth keeps QEMU's check clean", async () => {
    const t = tempDir();
    try {
      const path = t.path("grow.qcow2");
      // 512-byte clusters and 64-bit refcounts: one refcount block covers 64 clusters, so the refcount
      // table (one cluster, 64 entries) is full after 2 MiB of file.
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", path, "64M"]);
      const img = await openImage(path);
      const data = new Uint8Array(6 * 1024 * 1024);
      for (let i = 0; i < data.length; i += 512) data[i] = (i / 512) & 0xff;
      await img.write(1024 * 1024, data);
      await img.close();
      const check = JSON.parse(qemu("qemu-img", ["check", "--output=json", path]));
      expect(check["check-errors"]).toBe(0);
      expect(check.corruptions ?? 0).toBe(0);
      expect(check.leaks ?? 0).toBe(0);
      const raw = t.path("grow.raw");
      qemu("qemu-img", ["convert", "-O", "raw", path, raw]);
      const got = readFileSync(raw);
      expect(Buffer.compare(got.subarray(1024 * 1024, 1024 * 1024 + data.length), Buffer.from(data))).toBe(0);
      const header = readFileSync(path).subarray(0, 64);
      expect(header.readUInt32BE(56)).toBeGreaterThan(1); // the refcount table grew
    } finally {
      t.cleanup();
    }
  });
});
