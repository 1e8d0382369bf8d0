/**
 * Damaged and hostile images: seeded mutations of QEMU-made images (see fuzz/mutate.ts). Every case must give
 * one-line errors only (no crash), take no more than a few seconds per operation (no hang), stay within a
 * memory bound, and never be changed by an operation that only reads it or that refused it. The verdicts
 * (info accepted, check's exit code, reading accepted, check -r all's exit code) must agree with QEMU 7.2's on
 * at least 90% of them.
 *
 * CI: QCOWKIT_FUZZ_CASES (default 2000) cases from QCOWKIT_FUZZ_SEED (default 1). More on demand:
 * `pnpm fuzz --cases 20000` (packages/core/test/fuzz/run.mjs).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { buildCorpus } from "./fuzz/corpus";
import { pool, runOurs, runQemu, type OurOutcome, type Verdicts } from "./fuzz/harness";
import { mutate } from "./fuzz/mutate";
import { tempDir } from "./helpers";

const CASES = Number(process.env.QCOWKIT_FUZZ_CASES ?? 2000);
const FIRST_SEED = Number(process.env.QCOWKIT_FUZZ_SEED ?? 1);
const BATCH = 64;
const MEMORY_LIMIT = 1.5 * 1024 * 1024 * 1024;

interface CaseResult {
  seed: number;
  seedImage: string;
  description: string[];
  ours: OurOutcome;
  qemu: Verdicts;
}

describe("fuzzed images", () => {
  const t = tempDir("qcowkit-fuzz-");
  afterAll(() => t.cleanup());

  it(`${CASES} seeded mutations from seed ${FIRST_SEED}: no crash, hang or write; verdicts as QEMU's`, { timeout: 3_600_000 }, async () => {
    const corpusDir = join(t.dir, "corpus");
    mkdirSync(corpusDir);
    const corpus = buildCorpus(corpusDir);
    const results: CaseResult[] = [];
    let maxHeap = 0;
    // A promise rejected with nobody listening ends a Node process with a stack trace: a crash of the case.
    let currentSeed = 0;
    const unhandled: string[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(`seed ${currentSeed}: ${e instanceof Error ? e.message : String(e)}`);
    process.on("unhandledRejection", onUnhandled);
    for (let start = 0; start < CASES; start += BATCH) {
      const batch = Array.from({ length: Math.min(BATCH, CASES - start) }, (_, i) => {
        const seed = FIRST_SEED + start + i;
        const name = `c${String(seed).padStart(9, "0")}.qcow2`;
        const seedImage = corpus[seed % corpus.length]!;
        const m = mutate(seedImage.bytes, seed, name);
        const path = join(corpusDir, name);
        writeFileSync(path, m.bytes);
        // Check -r all on every fourth case (it is the slowest).
        return { seed, name, path, seedImage: seedImage.name, description: m.description, repair: seed % 4 === 0 };
      });
      const t0 = Date.now();
      const qemu = await pool(batch, 8, (c) => runQemu(c.name, `q-${c.name}`, c.repair, corpusDir));
      const t1 = Date.now();
      if (process.env.QCOWKIT_FUZZ_TIMING) console.log(`batch ${start}: qemu ${t1 - t0} ms`);
      for (const [i, c] of batch.entries()) {
        currentSeed = c.seed;
        const ours = await runOurs(c.path, join(corpusDir, `o-${c.name}`), c.repair);
        results.push({ seed: c.seed, seedImage: c.seedImage, description: c.description, ours, qemu: qemu[i]! });
        maxHeap = Math.max(maxHeap, process.memoryUsage().heapUsed);
      }
      if (process.env.QCOWKIT_FUZZ_TIMING) console.log(`batch ${start}: ours ${Date.now() - t1} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
    process.off("unhandledRejection", onUnhandled);
    expect(unhandled).toEqual([]);
    const crashes = results.filter((r) => r.ours.crashes.length > 0);
    const slow = results.filter((r) => r.ours.slow.length > 0);
    const changed = results.filter((r) => r.ours.changed.length > 0);
    let compared = 0;
    let qemuHangs = 0;
    let agreed = 0;
    const disagreements = new Map<string, CaseResult[]>();
    for (const r of results) {
      for (const op of ["info", "check", "read", "repair"] as const) {
        const q = r.qemu[op];
        const o = r.ours.verdicts[op];
        if (q === undefined || o === undefined) continue;
        if (q === "hang") {
          qemuHangs++;
          continue;
        }
        compared++;
        if (q === o) agreed++;
        else {
          const key = `${op}: qemu ${q}, ours ${o}`;
          disagreements.set(key, [...(disagreements.get(key) ?? []), r]);
        }
      }
    }
    const agreement = agreed / compared;
    const summary = [
      `${results.length} cases, ${compared} verdicts, ${(agreement * 100).toFixed(2)}% agree with QEMU ` +
        `(${qemuHangs} where QEMU hung not compared); max heap ${(maxHeap / 2 ** 20).toFixed(0)} MiB`,
      ...[...disagreements.entries()]
        .sort((a, b) => b[1].length - a[1].length)
        .slice(0, 12)
        .map(([k, rs]) => `  ${rs.length} x ${k} (e.g. seed ${rs[0]!.seed}, ${rs[0]!.seedImage}: ${rs[0]!.description.join("; ")})`),
    ];
    console.log(summary.join("\n"));
    const show = (rs: CaseResult[], f: (r: CaseResult) => string[]) =>
      rs.slice(0, 5).map((r) => `seed ${r.seed} (${r.seedImage}: ${r.description.join("; ")}): ${f(r).join(" / ")}`);
    expect(show(crashes, (r) => r.ours.crashes)).toEqual([]);
    expect(show(slow, (r) => r.ours.slow)).toEqual([]);
    expect(show(changed, (r) => r.ours.changed)).toEqual([]);
    expect(maxHeap).toBeLessThan(MEMORY_LIMIT);
    expect(agreement).toBeGreaterThanOrEqual(0.9);
  });
});
