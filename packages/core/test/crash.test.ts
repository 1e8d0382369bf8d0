/**
 * Crash safety, proven by simulation: for every workload and every N from 1 to its operation count, the power
 * fails after the N-th write/flush/discard/write-zeroes/resize of the image's stores. Afterwards the image
 * opens, the check finds no corruption (leaks allowed) and every byte acknowledged before the last completed
 * flush reads back, both with only the flushed state on disk and with seeded subsets of the unflushed
 * operations kept (a disk that reorders writes).
 *
 * CI mode: one reordering seed per crash point. QCOWKIT_CRASH_LONG=1: longer workloads and four seeds.
 */
import { writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import type { MemoryStore } from "@qcowkit/datafile";
import { crashAndCheck, prepare, type CrashOutcome } from "./crash/harness";
import { workloads } from "./crash/workloads";
import { qemuStatus, tempDir } from "./helpers";

const long = process.env.QCOWKIT_CRASH_LONG === "1";
const scale = long ? 3 : 1;
const seedsPerPoint = long ? 4 : 1;

describe("power loss at every write and flush boundary", () => {
  for (const w of workloads(scale)) {
    it(w.name, { timeout: long ? 3_600_000 : 120_000 }, async () => {
      const prepared = await prepare(w);
      const full = await crashAndCheck(w, prepared, Number.POSITIVE_INFINITY, []);
      expect(full.run.crashed).toBe(false);
      expect(full.outcomes[0]!.problems).toEqual([]);
      const total = full.run.operations;
      expect(total).toBeGreaterThan(10);
      const failures: CrashOutcome[] = [];
      let known = 0;
      for (let n = 1; n <= total; n++) {
        const seeds = Array.from({ length: seedsPerPoint }, (_, i) => n * 7919 + i);
        const { outcomes } = await crashAndCheck(w, prepared, n, seeds);
        for (const o of outcomes) {
          const problems = o.problems.filter((p) => !w.knownIssue?.pattern.test(p));
          known += o.problems.length - problems.length;
          if (problems.length) failures.push({ ...o, problems });
        }
        if (failures.length >= 5) break;
      }
      expect(failures).toEqual([]);
      // A known issue that no longer shows up: remove it from the workload.
      if (w.knownIssue) expect(known, w.knownIssue.why).toBeGreaterThan(0);
    });
  }
});

async function bytesOf(store: MemoryStore): Promise<Uint8Array> {
  const out = new Uint8Array(await store.size());
  await store.read(0, out);
  return out;
}

describe("qemu-img agrees: crashed images have no corruption", () => {
  const t = tempDir("qcowkit-crash-");
  afterAll(() => t.cleanup());
  for (const w of workloads(1)) {
    it(w.name, async () => {
      const prepared = await prepare(w);
      const total = (await crashAndCheck(w, prepared, Number.POSITIVE_INFINITY, [])).run.operations;
      const dir = t.path(String(workloads(1).indexOf(w)));
      qemuStatus("mkdir", ["-p", dir]);
      if (prepared.backing) writeFileSync(`${dir}/backing.qcow2`, await bytesOf(prepared.backing));
      const verdicts: string[] = [];
      for (const n of [1, 2, 3, 4, 5, 6].map((k) => Math.max(1, Math.floor((total * k) / 7)))) {
        await crashAndCheck(w, prepared, n, [n], async (variant, meta, data) => {
          writeFileSync(`${dir}/image.qcow2`, await bytesOf(meta));
          if (data) writeFileSync(`${dir}/image.data`, await bytesOf(data));
          // A dirty image is repaired by a read-write open first (QEMU's rule; check does not repair it).
          const opened = qemuStatus("qemu-io", ["-c", "read 0 512", "image.qcow2"], { cwd: dir });
          const check = qemuStatus("qemu-img", ["check", "image.qcow2"], { cwd: dir });
          const known = w.knownIssue && /OFLAG_COPIED/.test(check.stderr) && !/ERROR cluster/.test(check.stderr);
          if (opened.status !== 0 || (!known && check.status !== 0 && check.status !== 3)) {
            verdicts.push(`crash after ${n} (${variant}): qemu-io ${opened.status} ${opened.stderr.trim()} / check ${check.status} ${check.stderr.trim()}`);
          }
        });
      }
      expect(verdicts).toEqual([]);
    });
  }
});
