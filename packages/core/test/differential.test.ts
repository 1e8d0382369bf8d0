/**
 * Differential tests against QEMU: the same seeded random operations applied by our engine and by qemu-io
 * to twin images, then `qemu-img compare` must find them identical, `qemu-img check` must find our image
 * clean, and `qemu-img map` must agree.
 */
import { copyFileSync, existsSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { openImage } from "../src/node";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

type Op =
  | { kind: "write"; offset: number; length: number; pattern: number }
  | { kind: "zero"; offset: number; length: number; unmap: boolean }
  | { kind: "discard"; offset: number; length: number };

function randomOps(seed: number, size: number, count: number, clusterSize: number): Op[] {
  const r = rng(seed);
  const ops: Op[] = [];
  const unit = () => (r() < 0.5 ? 512 : clusterSize);
  for (let i = 0; i < count; i++) {
    const u = unit();
    const offset = Math.floor((r() * size) / u) * u + (r() < 0.2 ? 512 * Math.floor(r() * 4) : 0);
    const maxLen = Math.min(size - offset, clusterSize * 4);
    if (maxLen <= 0) continue;
    const length = Math.max(512, Math.floor((r() * maxLen) / 512) * 512);
    const k = r();
    if (k < 0.55) ops.push({ kind: "write", offset, length, pattern: 1 + Math.floor(r() * 254) });
    else if (k < 0.75) ops.push({ kind: "zero", offset, length, unmap: false });
    else if (k < 0.88) ops.push({ kind: "zero", offset, length, unmap: true });
    else ops.push({ kind: "discard", offset, length });
  }
  return ops;
}

function qemuIoCommand(op: Op): string {
  switch (op.kind) {
    case "write":
      return `write -P ${op.pattern} ${op.offset} ${op.length}`;
    case "zero":
      return `write -z${op.unmap ? " -u" : ""} ${op.offset} ${op.length}`;
    case "discard":
      return `discard ${op.offset} ${op.length}`;
  }
}

async function applyOurs(path: string, ops: Op[], dataFile?: string): Promise<void> {
  const img = await openImage(path, { format: "qcow2", ...(dataFile ? { dataFile } : {}) });
  try {
    for (const op of ops) {
      if (op.kind === "write") await img.write(op.offset, new Uint8Array(op.length).fill(op.pattern));
      else if (op.kind === "zero") await img.writeZeroes(op.offset, op.length, { unmap: op.unmap });
      else await img.discard(op.offset, op.length);
    }
  } finally {
    await img.close();
  }
}

function mapJson(path: string, cwd: string): Array<Record<string, unknown>> {
  return JSON.parse(qemu("qemu-img", ["map", "--output=json", "-f", "qcow2", path], { cwd }));
}

/**
 * Map entries as runs of per-sector status without host offsets (merged where equal). For data ranges the
 * "zero" flag reflects holes in the host file (QEMU asks the file system), not the format: it is left out.
 */
function sectorStatus(map: Array<Record<string, unknown>>): string[] {
  const out: string[] = [];
  let last = "";
  for (const e of map) {
    const key = `${e.present}/${e.zero}/${e.data}/${e.depth}/${e.offset !== undefined}`;
    if (key === last) {
      out[out.length - 1] = out[out.length - 1]!.replace(/^(\d+)\+(\d+)/, (_m, a, b) => `${a}+${Number(b) + Number(e.length)}`);
    } else {
      out.push(`${e.start}+${e.length} ${key}`);
      last = key;
    }
  }
  return out;
}

const SIZE = 8 * 1024 * 1024;
const matrix: Array<[string, string]> = [
  ["default", ""],
  ["v2", "compat=0.10"],
  ["c512", "cluster_size=512"],
  ["c4k-r1", "cluster_size=4096,refcount_bits=1"],
  ["c2m", "cluster_size=2M"],
  ["r64", "refcount_bits=64"],
  ["extl2", "extended_l2=on"],
  ["extl2-c2m", "extended_l2=on,cluster_size=2M"],
  ["lazy", "lazy_refcounts=on"],
  ["prealloc-meta", "preallocation=metadata"],
  ["datafile", "data_file=DATA"],
  ["datafile-raw", "data_file=DATA,data_file_raw=on"],
  ["datafile-extl2", "data_file=DATA,extended_l2=on"],
];

describe("random operations: ours vs qemu-io", () => {
  for (const [name, opts] of matrix) {
    for (const seed of [1, 2]) {
      it(`${name} seed ${seed}`, async () => {
        const t = tempDir();
        try {
          const ours = t.path("ours.qcow2");
          const theirs = t.path("theirs.qcow2");
          const oursOpts = opts.replace("DATA", t.path("ours.data"));
          const theirsOpts = opts.replace("DATA", t.path("theirs.data"));
          qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...(oursOpts ? ["-o", oursOpts] : []), ours, String(SIZE)]);
          qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...(theirsOpts ? ["-o", theirsOpts] : []), theirs, String(SIZE)]);
          const cs = /cluster_size=(\d+)(M?)/.exec(opts);
          const clusterSize = cs ? Number(cs[1]) * (cs[2] ? 1048576 : 1) : 65536;
          const ops = randomOps(seed * 1000 + name.length, SIZE, 60, clusterSize);
          await applyOurs(ours, ops);
          const args = ops.flatMap((op) => ["-c", qemuIoCommand(op)]);
          qemu("qemu-io", ["-f", "qcow2", ...args, theirs]);
          const cmp = qemuStatus("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", ours, theirs]);
          expect(cmp.stdout + cmp.stderr).toContain("Images are identical.");
          const check = qemuStatus("qemu-img", ["check", "-f", "qcow2", ours]);
          expect(check.stdout + check.stderr).toContain("No errors were found on the image.");
          expect(check.status).toBe(0);
          const dataFile = opts.includes("data_file");
          if (dataFile) {
            // Flat layout: the host offsets must agree too, so the maps are equal entry for entry.
            expect(mapJson(ours, t.dir)).toEqual(mapJson(theirs, t.dir));
          } else {
            // Host offsets depend on allocation order; compare the status of every 512-byte sector.
            expect(sectorStatus(mapJson(ours, t.dir))).toEqual(sectorStatus(mapJson(theirs, t.dir)));
          }
          if (opts.includes("data_file_raw=on")) {
            const raw = qemuStatus("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", t.path("ours.data"), ours]);
            expect(raw.stdout).toContain("Images are identical.");
          }
          expect(existsSync(ours)).toBe(true);
        } finally {
          t.cleanup();
        }
      });
    }
  }
});

describe("reads of QEMU-made images", () => {
  it("reads back what qemu-io wrote, through a 3-deep backing chain", async () => {
    const t = tempDir();
    try {
      const base = t.path("base.qcow2");
      const mid = t.path("mid.qcow2");
      const top = t.path("top.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
      qemu("qemu-io", ["-c", "write -P 0x11 0 2M", base]);
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid]);
      qemu("qemu-io", ["-c", "write -P 0x22 1M 1M", "-c", "write -z 1536k 64k", mid]);
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top]);
      qemu("qemu-io", ["-c", "write -P 0x33 1792k 512k", top]);
      const raw = t.path("flat.raw");
      qemu("qemu-img", ["convert", "-O", "raw", top, raw]);
      const img = await openImage(top, { readOnly: true });
      const buf = new Uint8Array(img.virtualSize);
      await img.read(0, buf);
      await img.close();
      const expected = new Uint8Array((await import("node:fs")).readFileSync(raw));
      expect(Buffer.compare(Buffer.from(buf), Buffer.from(expected))).toBe(0);
      copyFileSync(raw, t.path("copy.raw"));
    } finally {
      t.cleanup();
    }
  });
});
