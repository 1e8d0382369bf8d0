/**
 * qio against qemu-io: the same seeded random sequence of writes (pattern, zero, zero+unmap, compressed) and
 * discards is applied by both, to twin images of each create option. Then: the same output (timings filtered),
 * `qemu-img compare` identical, `qemu-img check` clean on ours, and `qimg map` equal to `qemu-img map` (JSON
 * and human) on both images.
 */
import * as path from "node:path";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { filterTimings, firstDifference, normalizeQemu, ok, pool, qemuImg, qemuIo, qimg, qio, subDir, tempDir } from "./helpers";

const root = tempDir("qio-diff-");
const SIZE = 8 * 1024 * 1024;

interface Variant {
  name: string;
  create: string[];
  /** Compressed writes allowed (not with a data file). */
  compress: boolean;
  backing?: boolean;
}

const VARIANTS: Variant[] = [
  { name: "default", create: [], compress: true },
  { name: "v2", create: ["-o", "compat=0.10"], compress: true },
  { name: "c512", create: ["-o", "cluster_size=512"], compress: true },
  // (Compressed writes with 1-bit refcounts: see engine-bugs.test.ts.)
  { name: "c4k-rb1", create: ["-o", "cluster_size=4k,refcount_bits=1"], compress: false },
  { name: "c2M", create: ["-o", "cluster_size=2M"], compress: true },
  { name: "rb64-lazy", create: ["-o", "refcount_bits=64,lazy_refcounts=on"], compress: true },
  { name: "extl2", create: ["-o", "extended_l2=on"], compress: true },
  { name: "extl2-16k", create: ["-o", "extended_l2=on,cluster_size=16k"], compress: true },
  { name: "zstd", create: ["-o", "compression_type=zstd"], compress: true },
  { name: "prealloc-metadata", create: ["-o", "preallocation=metadata"], compress: false },
  { name: "prealloc-falloc", create: ["-o", "preallocation=falloc"], compress: false },
  { name: "data-file", create: ["-o", "data_file=DATA"], compress: false },
  { name: "data-file-raw", create: ["-o", "data_file=DATA,data_file_raw=on"], compress: false },
  { name: "data-file-extl2", create: ["-o", "data_file=DATA,extended_l2=on"], compress: false },
  { name: "backing", create: ["-b", "base.qcow2", "-F", "qcow2"], compress: true, backing: true },
  { name: "backing-v2", create: ["-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"], compress: true, backing: true },
  { name: "backing-extl2", create: ["-o", "extended_l2=on", "-b", "base.qcow2", "-F", "qcow2"], compress: true, backing: true },
];

/**
 * A reproducible sequence of qemu-io commands. Compressed writes go only to 64 KiB ranges nothing touched
 * before (QEMU refuses compressed writes over allocated clusters part by part: see engine-bugs.test.ts).
 */
function commands(seed: number, variant: Variant): string[] {
  const rnd = seededRandom(seed);
  const pick = (n: number) => Math.floor(rnd() * n);
  const out: string[] = [];
  const chunk = 65536;
  const touched = new Set<number>();
  const touch = (off: number, len: number) => {
    for (let c = Math.floor(off / chunk); c <= Math.floor((off + len - 1) / chunk); c++) touched.add(c);
  };
  for (let i = 0; i < 60; i++) {
    const aligned = rnd() < 0.7;
    const unit = aligned ? 512 : 1;
    const len = Math.max(1, pick(aligned ? 512 : 200_000)) * unit;
    const off = Math.min(pick(SIZE / unit) * unit, SIZE - len);
    const kind = pick(variant.compress ? 5 : 4);
    if (kind === 0) out.push(`write -P ${pick(256)} ${off} ${len}`);
    else if (kind === 1) out.push(`write -z ${off} ${len}`);
    else if (kind === 2) out.push(`write -z -u ${off} ${len}`);
    else if (kind === 3) out.push(`discard ${off} ${len}`);
    else {
      const c = pick(SIZE / chunk);
      if (touched.has(c) || (variant.backing && c * chunk < 6 * 1024 * 1024)) continue;
      out.push(`write -c -P ${pick(256)} ${c * chunk} ${chunk}`);
      touch(c * chunk, chunk);
      continue;
    }
    touch(off, len);
  }
  out.push("map", "alloc 0 8M", "length", "info");
  return out;
}

async function makeImage(dir: string, v: Variant): Promise<void> {
  if (v.backing) {
    await ok(qemuImg(["create", "-q", "-f", "qcow2", "base.qcow2", String(SIZE)], dir));
    await ok(qemuIo(["-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 5M 1M", "base.qcow2"], dir));
  }
  // Absolute data file names: each image keeps its own data file.
  const create = v.create.map((a) => a.replace("DATA", path.join(dir, "t.raw")));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", ...create, "t.qcow2", String(SIZE)], dir));
}

describe("qio and qemu-io apply the same random sequences alike", () => {
  it(`${VARIANTS.length} image variants x 2 seeds`, async () => {
    const failures: string[] = [];
    const jobs = VARIANTS.flatMap((v) => [1, 2].map((seed) => ({ v, seed })));
    await pool(jobs, 3, async ({ v, seed }) => {
      const label = `${v.name} seed ${seed}`;
      const theirs = subDir(root, `${v.name}-${seed}-q`);
      const ours = subDir(root, `${v.name}-${seed}-o`);
      await makeImage(theirs, v);
      await makeImage(ours, v);
      const args = commands(seed * 1000 + v.name.length, v).flatMap((c) => ["-c", c]);
      const q = await qemuIo([...args, "t.qcow2"], theirs);
      const o = await qio([...args, "t.qcow2"], ours);
      const qOut = filterTimings(normalizeQemu(q.stdout)).split(theirs).join("DIR");
      const oOut = filterTimings(o.stdout).split(ours).join("DIR");
      if (q.code !== o.code || qOut !== oOut || normalizeQemu(q.stderr) !== o.stderr) {
        failures.push(
          `${label}: qio output differs (exit ${q.code} / ${o.code})\nstdout ${firstDifference(qOut, oOut)}\nstderr ${firstDifference(normalizeQemu(q.stderr), o.stderr)}`,
        );
        return;
      }
      const cmp = await qemuImg(["compare", path.join(theirs, "t.qcow2"), path.join(ours, "t.qcow2")]);
      if (cmp.code !== 0) failures.push(`${label}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
      const check = await qemuImg(["check", "t.qcow2"], ours);
      if (check.code !== 0) failures.push(`${label}: qemu-img check on our image: ${check.stdout}${check.stderr}`);
      for (const dir of [theirs, ours]) {
        for (const mapArgs of [["map", "--output=json", "t.qcow2"], ["map", "t.qcow2"]]) {
          const qm = await qemuImg(mapArgs, dir);
          const om = await qimg(mapArgs, dir);
          if (qm.code !== om.code || qm.stdout !== om.stdout || normalizeQemu(qm.stderr) !== om.stderr) {
            failures.push(
              `${label}: ${mapArgs.join(" ")} in ${path.basename(dir)} (exit ${qm.code} / ${om.code})\n${firstDifference(qm.stdout + normalizeQemu(qm.stderr), om.stdout + om.stderr)}`,
            );
          }
        }
      }
    });
    expect(failures.join("\n\n")).toBe("");
  });
});
