/** `checkImage` against `qemu-img check`: the same findings, counts and image end offset. */
import { openSync, writeSync, closeSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { checkImage } from "../src/check";
import { Qcow2Image } from "../src/qcow2-image";
import { openImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

interface QemuCheck {
  lines: string[];
  json: Record<string, number | string>;
}

function qemuCheck(path: string): QemuCheck {
  const human = qemuStatus("qemu-img", ["check", path]);
  const json = qemuStatus("qemu-img", ["check", "--output=json", path]);
  const lines = human.stderr.split("\n").filter((l) => l.trim() !== "");
  return { lines, json: JSON.parse(json.stdout) };
}

async function ourCheck(path: string) {
  const img = (await openImage(path, { readOnly: true, checkMode: true })) as Qcow2Image;
  try {
    return await checkImage(img);
  } finally {
    await img.close();
  }
}

function patch(path: string, offset: number, bytes: number[]): void {
  const fd = openSync(path, "r+");
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

function u64(path: string, offset: number): bigint {
  return readFileSync(path).readBigUInt64BE(offset);
}

async function expectSameAsQemu(path: string): Promise<void> {
  const q = qemuCheck(path);
  const r = await ourCheck(path);
  expect(r.messages).toEqual(q.lines);
  expect(r.corruptions).toBe(Number(q.json["corruptions"] ?? 0));
  expect(r.leaks).toBe(Number(q.json["leaks"] ?? 0));
  expect(r.imageEndOffset).toBe(Number(q.json["image-end-offset"] ?? 0));
  expect(r.allocatedClusters).toBe(Number(q.json["allocated-clusters"] ?? 0));
  expect(r.fragmentedClusters).toBe(Number(q.json["fragmented-clusters"] ?? 0));
  expect(r.compressedClusters).toBe(Number(q.json["compressed-clusters"] ?? 0));
  expect(r.totalClusters).toBe(Number(q.json["total-clusters"] ?? 0));
}

describe("check agrees with qemu-img check", () => {
  const clean: Array<[string, string, string[]]> = [
    ["empty", "", []],
    ["written", "", ["write -P 1 0 1M", "write -P 2 3M 100k", "write -z 5M 64k"]],
    ["compressed", "", ["write -c -P 3 0 64k", "write -c -P 4 128k 64k", "write -P 5 256k 8k"]],
    ["v2", "compat=0.10", ["write -P 1 1M 1M"]],
    ["refcount1", "refcount_bits=1,cluster_size=4096", ["write -P 1 0 3M"]],
    ["refcount64", "refcount_bits=64", ["write -P 1 0 3M"]],
    ["extl2", "extended_l2=on", ["write -P 1 0 5k", "write -z 64k 64k"]],
    ["datafile", "data_file=DATA", ["write -P 1 0 1M", "write -z 2M 1M"]],
    ["prealloc", "preallocation=metadata", ["write -P 1 0 1M"]],
    ["small-clusters", "cluster_size=512", ["write -P 1 0 300k"]],
  ];
  for (const [name, opts, cmds] of clean) {
    it(`clean image: ${name}`, async () => {
      const t = tempDir();
      try {
        const img = t.path("a.qcow2");
        const o = opts.replace("DATA", t.path("a.data"));
        qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...(o ? ["-o", o] : []), img, "8M"]);
        if (cmds.length) qemu("qemu-io", cmds.flatMap((c) => ["-c", c]).concat([img]));
        await expectSameAsQemu(img);
        const r = await ourCheck(img);
        expect(r.corruptions + r.leaks).toBe(0);
      } finally {
        t.cleanup();
      }
    });
  }

  it("a leaked cluster (refcount raised by hand)", async () => {
    const t = tempDir();
    try {
      const img = t.path("a.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", img, "8M"]);
      qemu("qemu-io", ["-c", "write -P 1 0 64k", "-c", "write -P 2 64k 64k", "-c", "discard 0 64k", img]);
      // Refcount block at cluster 2: cluster 5 held the discarded data; give it its refcount back.
      patch(img, 2 * 65536 + 5 * 2, [0, 1]);
      await expectSameAsQemu(img);
      expect((await ourCheck(img)).leaks).toBe(1);
    } finally {
      t.cleanup();
    }
  });

  it("a referenced cluster with refcount 0, and the COPIED error that follows", async () => {
    const t = tempDir();
    try {
      const img = t.path("a.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", img, "8M"]);
      qemu("qemu-io", ["-c", "write -P 1 0 64k", img]);
      patch(img, 2 * 65536 + 5 * 2, [0, 0]);
      await expectSameAsQemu(img);
      expect((await ourCheck(img)).corruptions).toBe(2);
    } finally {
      t.cleanup();
    }
  });

  it("a data cluster without COPIED, a compressed cluster in a data-file image", async () => {
    const t = tempDir();
    try {
      const img = t.path("a.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${t.path("a.data")}`, img, "8M"]);
      qemu("qemu-io", ["-c", "write -P 1 0 128k", img]);
      const l1 = Number(u64(img, 40));
      const l2 = Number(u64(img, l1) & 0x00fffffffffffe00n);
      patch(img, l2, [0x00, 0, 0, 0, 0, 0, 0, 0]); // entry 0: offset 0 without COPIED -> unallocated
      patch(img, l2 + 8, [0x00, 0, 0, 0, 0, 1, 0, 0]); // entry 1: 0x10000 without COPIED
      patch(img, l2 + 16, [0x40, 0, 0, 0, 0, 7, 0, 0]); // entry 2: compressed
      await expectSameAsQemu(img);
    } finally {
      t.cleanup();
    }
  });

  it("an L2 table offset past the end of the file", async () => {
    const t = tempDir();
    try {
      const img = t.path("a.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", img, "8M"]);
      const l1 = Number(u64(img, 40));
      patch(img, l1, [0x80, 0, 0, 0, 0x10, 0, 0, 0]);
      await expectSameAsQemu(img);
    } finally {
      t.cleanup();
    }
  });

  // 2 MiB clusters: the check's L2 table cache (8 MiB) holds four tables, so the COPIED-flag pass finds the
  // first tables gone from it and walks the used entries the first pass kept (check-sparse-l2.ts).
  for (const ext of [false, true]) {
    it(`COPIED errors in sparse L2 tables past the check's table cache${ext ? ", extended L2 entries" : ""}`, async () => {
      const t = tempDir();
      try {
        const img = t.path("a.qcow2");
        const cs = 2 * 1024 * 1024;
        const perTable = (cs / (ext ? 16 : 8)) * cs;
        qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs}${ext ? ",extended_l2=on" : ""}`, img, String(12 * perTable)]);
        qemu("qemu-io", Array.from({ length: 12 }, (_, i) => ["-c", `write -P ${i + 1} ${i * perTable + (i % 3) * cs} 4k`]).flat().concat([img]));
        const l1 = Number(u64(img, 40));
        const entryAt = (i: number) => Number(u64(img, l1 + i * 8) & 0x00fffffffffffe00n) + (i % 3) * (ext ? 16 : 8);
        // Tables 0 and 1: the data cluster's entry without COPIED.
        for (const i of [0, 1]) patch(img, entryAt(i), [Number(u64(img, entryAt(i)) >> 56n) & 0x7f]);
        // Table 2's data cluster: refcount 2 with COPIED set.
        const host = Number(u64(img, entryAt(2)) & 0x00fffffffffffe00n);
        const refblock = Number(u64(img, Number(u64(img, 48))));
        patch(img, refblock + (host / cs) * 2, [0, 2]);
        await expectSameAsQemu(img);
        const r = await ourCheck(img);
        expect(r.corruptions).toBe(3);
        expect(r.leaks).toBe(1);
        expect(r.messages.filter((l) => l.includes("OFLAG_COPIED data cluster"))).toHaveLength(3);
        // L1 entry 11 names table 3 as well (gone from the table cache by then: the first pass rebuilds it from
        // its kept entries), leaving table 11 and its data cluster leaked.
        patch(img, l1 + 11 * 8, [...Buffer.from(u64(img, l1 + 3 * 8).toString(16).padStart(16, "0"), "hex")]);
        await expectSameAsQemu(img);
        expect((await ourCheck(img)).leaks).toBeGreaterThan(1);
      } finally {
        t.cleanup();
      }
    });
  }
});
