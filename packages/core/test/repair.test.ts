/**
 * Repair (`qemu-img check -r leaks|all`) against QEMU 7.2: each damaged image is copied, qemu-img repairs one
 * copy and we repair the other; the messages, counters and exit codes must agree, and the repaired files
 * must be byte-identical (QEMU's allocation choices reproduced), then check clean with qemu-img.
 */
import { copyFileSync, readFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { MemoryStore } from "@qcowkit/datafile";
import { checkImage } from "../src/check";
import { openImage } from "../src/node";
import { Qcow2Image } from "../src/qcow2-image";
import type { RepairMode } from "../src/repair";
import { qemu, qemuStatus, tempDir } from "./helpers";
import { bothChecks, peek, poke, qemuCheck } from "./qemu-check";

const t = tempDir("qcowkit-repair-");
afterAll(() => t.cleanup());
let n = 0;

/** The refcount of host cluster `cluster`, set to `value` in the image's own refcount block. */
function setRefcount(path: string, cluster: number, value: number): void {
  const clusterBits = Number(peek(path, 20, 4));
  const cs = 2 ** clusterBits;
  const order = Number(peek(path, 4, 4)) >= 3 ? Number(peek(path, 96, 4)) : 4;
  const bits = 2 ** order;
  const perBlock = (cs * 8) / bits;
  const reftable = Number(peek(path, 48));
  const block = Number(peek(path, reftable + Math.floor(cluster / perBlock) * 8));
  if (block === 0) throw new Error("no refcount block");
  const index = cluster % perBlock;
  if (bits >= 8) {
    poke(path, block + index * (bits / 8), bits / 8, value);
  } else {
    const byteAt = block + Math.floor((index * bits) / 8);
    const shift = (index * bits) % 8;
    const old = Number(peek(path, byteAt, 1));
    const mask = ((1 << bits) - 1) << shift;
    poke(path, byteAt, 1, (old & ~mask) | (value << shift));
  }
}

function l1Entry(path: string, index: number): bigint {
  return peek(path, Number(peek(path, 40)) + index * 8);
}

function setL1Entry(path: string, index: number, value: bigint): void {
  poke(path, Number(peek(path, 40)) + index * 8, 8, value);
}

function setL2Entry(path: string, l1Index: number, l2Index: number, value: bigint, entryBytes = 8): void {
  const l2 = Number(l1Entry(path, l1Index) & 0x00fffffffffffe00n);
  poke(path, l2 + l2Index * entryBytes, 8, value);
}

function create(opts: string, size: string, cmds: string[] = []): string {
  const path = t.path(`src${++n}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), path, size]);
  if (cmds.length) qemu("qemu-io", [...cmds.flatMap((c) => ["-c", c]), path]);
  return path;
}

interface Scenario {
  name: string;
  build: () => string;
  modes: Array<RepairMode | undefined>;
  /**
   * QEMU clears the dirty bit when it closes an image it opened read-write, even after a check that could
   * not repair it (`-r leaks` on stale lazy refcounts). We keep it set so that the next writable open still
   * repairs: the one intended difference in the repaired bytes.
   */
  keepsDirty?: RepairMode;
}

const scenarios: Scenario[] = [
  {
    name: "leaked clusters past the old end of the file",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      qemu("truncate", ["-s", String(0x90000), p]);
      setRefcount(p, 7, 1);
      setRefcount(p, 8, 1);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "a leaked data cluster (reference dropped from the L2 table)",
    build: () => {
      const p = create("", "1M", ["write -P 0x33 0 64k", "write -P 0x44 64k 64k"]);
      setL2Entry(p, 0, 1, 0n);
      return p;
    },
    modes: ["leaks", "all"],
  },
  {
    name: "refcount 2 on a cluster referenced once (leak and COPIED error)",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setRefcount(p, 5, 2);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "refcount 0 on a used cluster: rebuild",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setRefcount(p, 5, 0);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "refcount 1 on a cluster referenced twice (snapshot)",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      qemu("qemu-img", ["snapshot", "-c", "s1", p]);
      setRefcount(p, 6, 1);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "COPIED flags missing in L1 and L2",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setL1Entry(p, 0, 0x40000n);
      setL2Entry(p, 0, 1, 0x60000n);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "COPIED set on a shared cluster",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      qemu("qemu-img", ["snapshot", "-c", "s1", p]);
      setL2Entry(p, 0, 0, 0x8000000000050000n);
      return p;
    },
    modes: ["leaks", "all"],
  },
  {
    name: "refcount block outside the image",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      poke(p, 0x10000, 8, 0x1000000);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "refcount table entry cleared",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      poke(p, 0x10000, 8, 0);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "refcount table entry with reserved bits",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      poke(p, 0x10000, 8, 0x20001);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "refcount block referenced as a data cluster too",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setL2Entry(p, 0, 1, 0x8000000000020000n);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "unaligned preallocated zero cluster",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setL2Entry(p, 0, 1, 0x8000000000060201n);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "unaligned data cluster",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      setL2Entry(p, 0, 1, 0x8000000000060200n);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "unaligned refcount block",
    build: () => {
      const p = create("", "1M", ["write -P 0x11 0 128k"]);
      poke(p, 0x10000, 8, 0x20200);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "corrupt bit on a consistent image",
    build: () => {
      const p = create("", "1M", ["write -P 0x77 0 64k"]);
      poke(p, 72, 8, 2);
      return p;
    },
    modes: [undefined, "leaks"],
  },
  {
    name: "dirty bit with stale refcounts (lazy refcounts, killed writer)",
    build: () => {
      const p = create("lazy_refcounts=on", "1M");
      qemuStatus("qemu-io", ["-c", "write -P 0x5a 0 512", "-c", "write -P 0x5b 64k 64k", "-c", "sigraise 9", p]);
      return p;
    },
    modes: [undefined, "leaks", "all"],
    keepsDirty: "leaks",
  },
  {
    name: "512-byte clusters, many refcount blocks, rebuild",
    build: () => {
      const p = create("cluster_size=512", "4M", ["write -P 0x21 0 300k", "write -P 0x22 1M 200k"]);
      setRefcount(p, 700, 0);
      setRefcount(p, 20, 3);
      return p;
    },
    modes: ["leaks", "all"],
  },
  {
    name: "1-bit refcounts: a leak and a missing refcount",
    build: () => {
      const p = create("refcount_bits=1,cluster_size=4096", "4M", ["write -P 1 0 1M"]);
      setRefcount(p, 100, 0);
      qemu("truncate", ["-s", String(2 * 1024 * 1024), p]);
      setRefcount(p, 400, 1);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "extended L2 entries: refcount 0 on a data cluster",
    build: () => {
      const p = create("extended_l2=on", "4M", ["write -P 1 0 5k", "write -P 2 1M 64k"]);
      setRefcount(p, 5, 0);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "compressed clusters sharing a host cluster, refcount too low",
    build: () => {
      const p = create("", "4M", ["write -c -P 3 0 64k", "write -c -P 4 64k 64k", "write -P 5 256k 8k"]);
      setRefcount(p, 5, 1);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "data file image: the L2 table's refcount dropped",
    build: () => {
      const p = create(`data_file=${t.path(`d${n + 1}.raw`)}`, "4M", ["write -P 1 0 1M"]);
      setRefcount(p, 4, 0);
      return p;
    },
    modes: [undefined, "all"],
  },
  {
    name: "incomplete snapshot table entries (the count raised over zeros)",
    build: () => {
      const p = create("cluster_size=4096", "1M", ["write -P 0x11 0 16k"]);
      qemu("qemu-img", ["snapshot", "-c", "s1", p]);
      qemu("qemu-io", ["-c", "write -P 0x12 4k 4k", p]);
      qemu("qemu-img", ["snapshot", "-c", "s2", p]);
      poke(p, 60, 4, 5);
      return p;
    },
    modes: [undefined, "leaks", "all"],
  },
  {
    name: "v2 image: a leak",
    build: () => {
      const p = create("compat=0.10", "4M", ["write -P 1 0 200k"]);
      setRefcount(p, 3, 2);
      return p;
    },
    modes: [undefined, "leaks"],
  },
];

describe("repair agrees with qemu-img check -r", () => {
  for (const s of scenarios) {
    for (const mode of s.modes) {
      it(`${s.name} (${mode ? `-r ${mode}` : "no -r"})`, async () => {
        const src = s.build();
        const paths = { qemu: t.path(`q${++n}.qcow2`), ours: t.path(`o${n}.qcow2`) };
        const { qemu: q, ours: o } = await bothChecks(src, mode, paths);
        expect(o.stderr).toEqual(q.stderr);
        expect(o.counts).toEqual(q.counts);
        expect(o.exitCode).toBe(q.exitCode);
        // Same repaired bytes, and qemu-img finds the same in both.
        const ours = readFileSync(paths.ours);
        if (s.keepsDirty !== undefined && s.keepsDirty === mode) {
          expect(ours[79]! & 1).toBe(1);
          expect(readFileSync(paths.qemu)[79]! & 1).toBe(0);
          ours[79] = ours[79]! & ~1;
        }
        expect(Buffer.compare(ours, readFileSync(paths.qemu))).toBe(0);
        if (s.keepsDirty !== undefined && s.keepsDirty === mode) return;
        const after = qemuCheck(paths.ours);
        expect(after).toEqual(qemuCheck(paths.qemu));
      });
    }
  }
});

describe("dirty and corrupt images", () => {
  it("a dirty lazy-refcount image is repaired when opened read-write, as qemu-io repairs it", async () => {
    const src = create("lazy_refcounts=on", "1M");
    qemuStatus("qemu-io", ["-c", "write -P 0x5a 0 512", "-c", "write -P 0x5b 64k 64k", "-c", "sigraise 9", src]);
    expect(peek(src, 72) & 1n).toBe(1n);
    const q = t.path(`q${++n}.qcow2`);
    const o = t.path(`o${n}.qcow2`);
    copyFileSync(src, q);
    copyFileSync(src, o);
    const qemuIo = qemuStatus("qemu-io", ["-c", "read -P 0x5b 64k 64k", q]);
    expect(qemuIo.status).toBe(0);
    const lines: string[] = [];
    const img = await openImage(o, { format: "qcow2", onWarning: (l) => lines.push(l) });
    const buf = new Uint8Array(65536);
    await img.read(65536, buf);
    await img.close();
    expect(buf.every((b) => b === 0x5b)).toBe(true);
    expect(lines).toEqual(qemuIo.stderr.split("\n").filter((l) => l !== ""));
    expect(lines).toContain("Rebuilding refcount structure");
    expect(peek(o, 72) & 1n).toBe(0n);
    expect(Buffer.compare(readFileSync(o), readFileSync(q))).toBe(0);
    expect(qemuCheck(o).exitCode).toBe(0);
  });

  it("a read-only open leaves a dirty image alone; the library default repairs too (Qcow2Image.open)", async () => {
    const src = create("lazy_refcounts=on", "1M");
    qemuStatus("qemu-io", ["-c", "write -P 0x5a 0 512", "-c", "sigraise 9", src]);
    const before = readFileSync(src);
    const ro = await openImage(src, { format: "qcow2", readOnly: true });
    await ro.close();
    expect(Buffer.compare(readFileSync(src), before)).toBe(0);
    const store = new MemoryStore({ size: before.byteLength });
    await store.write(0, new Uint8Array(before));
    const img = await Qcow2Image.open(store);
    expect(img.isDirty).toBe(false);
    const report = await checkImage(img);
    expect(report.corruptions + report.leaks).toBe(0);
    await img.close();
  });

  it("a corrupt image opens read-only only; a metadata overlap on write marks the image corrupt", async () => {
    const src = create("", "1M", ["write -P 0x11 0 128k"]);
    // Data cluster 1 points at the L1 table: the next write to it would overwrite metadata.
    setL2Entry(src, 0, 1, 0x8000000000030000n);
    const warnings: string[] = [];
    const img = await openImage(src, { format: "qcow2", onWarning: (w) => warnings.push(w) });
    const err = await img.write(65536, new Uint8Array(512).fill(0x22)).then(() => undefined, (e: Error) => e);
    expect(err?.message).toBe("Preventing invalid write on metadata (overlaps with active L1 table)");
    await img.close();
    expect(warnings).toEqual([
      "qcow2: Marking image as corrupt: Preventing invalid write on metadata (overlaps with active L1 table); further corruption events will be suppressed",
    ]);
    expect(peek(src, 72) & 2n).toBe(2n);
    const qemuRefusal = qemuStatus("qemu-io", ["-c", "read 0 512", src]).stderr.trim();
    const refused = await openImage(src, { format: "qcow2" }).then(() => "opened", (e: Error) => e.message);
    expect(`qemu-io: can't open device ${src}: ${refused}`).toBe(qemuRefusal);
    expect(refused).toBe("qcow2: Image is corrupt; cannot be opened read/write");
    const ro = await openImage(src, { format: "qcow2", readOnly: true });
    const b = new Uint8Array(512);
    await ro.read(0, b);
    await ro.close();
    expect(b[0]).toBe(0x11);
  });
});
