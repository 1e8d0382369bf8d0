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
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
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
/** Resident memory of the whole test process (JavaScript heap, WebAssembly memory, buffers). */
const RSS_LIMIT = 1024 * 1024 * 1024;

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
    let maxRss = 0;
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
        maxRss = Math.max(maxRss, process.memoryUsage().rss);
      }
      if (process.env.QCOWKIT_FUZZ_TIMING) {
        console.log(`batch ${start}: ours ${Date.now() - t1} ms, heap ${process.memoryUsage().heapUsed >> 20} MiB`);
      }
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
    const compressedCases = results.filter((r) => r.description.some((d) => /compressed payload|zstd frame|bomb/.test(d)));
    const summary = [
      `${results.length} cases, ${compared} verdicts, ${(agreement * 100).toFixed(2)}% agree with QEMU ` +
        `(${qemuHangs} where QEMU hung not compared); max heap ${(maxHeap / 2 ** 20).toFixed(0)} MiB, max RSS ${(maxRss / 2 ** 20).toFixed(0)} MiB`,
      `${compressedCases.length} cases with damaged or hostile compressed payloads: read verdicts agree with QEMU on ` +
        `${compressedCases.filter((r) => r.qemu.read === "hang" || r.qemu.read === r.ours.verdicts.read).length}`,
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
    expect(maxRss).toBeLessThan(RSS_LIMIT);
    expect(agreement).toBeGreaterThanOrEqual(0.9);
  });
});

describe("named hostile images", () => {
  const t = tempDir("qcowkit-hostile-");
  afterAll(() => t.cleanup());

  /** A fresh QEMU image with `patch` applied to its bytes. */
  function hostile(name: string, patch: (b: Buffer) => void, opts: string[] = ["-o", "cluster_size=4096"]): string {
    const path = join(t.dir, name);
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, path, "1M"]);
    execFileSync("qemu-io", ["-c", "write -P 7 0 16k", path]);
    const b = readFileSync(path);
    patch(b);
    writeFileSync(path, b);
    return path;
  }
  const setBackingName = (b: Buffer, name: string, size = name.length) => {
    b.write(name, 2048, "latin1");
    b.writeBigUInt64BE(2048n, 8);
    b.writeUInt32BE(size, 16);
  };

  /**
   * Third element: where we answer differently on purpose. QEMU 7.2 opens character devices (/dev/zero as a
   * 0-byte raw backing file; a FIFO makes it hang); qcowkit's file backend accepts regular files only.
   */
  const cases: Array<[string, () => string, Partial<Verdicts>?]> = [
    ["L1 size 2^31 - 1", () => hostile("l1-max.qcow2", (b) => b.writeUInt32BE(0x7fffffff, 36))],
    ["L1 size 2^31", () => hostile("l1-2-31.qcow2", (b) => b.writeUInt32BE(0x80000000, 36))],
    ["L1 size at QEMU's 32 MiB limit", () => hostile("l1-limit.qcow2", (b) => b.writeUInt32BE(4 * 1024 * 1024, 36))],
    ["L1 size one past QEMU's limit", () => hostile("l1-over.qcow2", (b) => b.writeUInt32BE(4 * 1024 * 1024 + 1, 36))],
    ["L1 table over the header", () => hostile("l1-header.qcow2", (b) => b.writeBigUInt64BE(0n, 40))],
    ["L1 table past the end of the file", () => hostile("l1-eof.qcow2", (b) => b.writeBigUInt64BE(1n << 40n, 40))],
    ["refcount table naming itself as a refcount block", () => hostile("rt-self.qcow2", (b) => b.writeBigUInt64BE(b.readBigUInt64BE(48), Number(b.readBigUInt64BE(48))))],
    ["refcount block counting itself 0", () => hostile("rb-zero.qcow2", (b) => b.writeUInt16BE(0, Number(b.readBigUInt64BE(Number(b.readBigUInt64BE(48)))) + 2 * 2))],
    ["refcount table over the header", () => hostile("rt-header.qcow2", (b) => b.writeBigUInt64BE(0n, 48))],
    ["snapshot table of 2^32 - 1 entries", () => hostile("sn-max.qcow2", (b) => { b.writeUInt32BE(0xffffffff, 60); b.writeBigUInt64BE(4096n, 64); })],
    // `check -r all` drops the oversized extra data, then the overlap check of the new table's place (against
    // the table as read) marks the image corrupt and the repair fails (exit 1), as in QEMU.
    ["snapshot table of 65536 entries", () => hostile("sn-65536.qcow2", (b) => { b.writeUInt32BE(65536, 60); b.writeBigUInt64BE(8192n, 64); })],
    ["refcount table at the L1 table", () => hostile("rt-l1.qcow2", (b) => b.writeBigUInt64BE(b.readBigUInt64BE(40), 48))],
    ["backing name of 1023 bytes", () => hostile("bk-1023.qcow2", (b) => setBackingName(b, "x".repeat(1023)))],
    ["backing name of 1024 bytes", () => hostile("bk-1024.qcow2", (b) => setBackingName(b, "x".repeat(1024)))],
    ["backing name size 2^32 - 1", () => hostile("bk-huge.qcow2", (b) => setBackingName(b, "x", 0xffffffff))],
    ["backing file naming the image itself", () => hostile("bk-self.qcow2", (b) => setBackingName(b, "bk-self.qcow2"))],
    [
      "backing file naming /dev/zero",
      () => hostile("bk-dev.qcow2", (b) => setBackingName(b, "/dev/zero")),
      { check: "exit 1", read: "refused", repair: "exit 1" },
    ],
    ["backing chain a -> b -> a", () => {
      hostile("loop-b.qcow2", (b) => setBackingName(b, "loop-a.qcow2"));
      return hostile("loop-a.qcow2", (b) => setBackingName(b, "loop-b.qcow2"));
    }],
    ["header length over the cluster", () => hostile("hl.qcow2", (b) => b.writeUInt32BE(0x20000, 100))],
    ["extension length 2^32 - 1", () => hostile("ext.qcow2", (b) => { b.writeUInt32BE(0x12345678, 112); b.writeUInt32BE(0xffffffff, 116); })],
    ["virtual size 2^63 - 512", () => hostile("size.qcow2", (b) => b.writeBigUInt64BE((1n << 63n) - 512n, 24))],
  ];

  for (const [name, make, differences] of cases) {
    it(name, async () => {
      const path = make();
      const file = path.split("/").pop()!;
      const [ours, qemu] = [
        await runOurs(path, join(t.dir, `o-${file}`), true),
        await runQemu(file, `q-${file}`, true, t.dir),
      ];
      expect(ours.crashes).toEqual([]);
      expect(ours.slow).toEqual([]);
      expect(ours.changed).toEqual([]);
      // Where QEMU answers (it hangs on backing loops), our verdicts are QEMU's.
      const comparable = (v: Verdicts) => Object.fromEntries(Object.entries(v).filter(([k]) => qemu[k as keyof Verdicts] !== "hang"));
      expect(comparable(ours.verdicts)).toEqual(comparable({ ...qemu, ...differences }));
    });
  }
});
