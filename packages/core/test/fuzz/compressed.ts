/**
 * `pnpm fuzz --compressed [--cases N] [--seed S]`: N seeded mutations of the compressed payloads of the corpus
 * images that have compressed clusters (bit flips, cuts, declared sizes, zlib and zstd bombs), each read
 * whole in this process (as qemu-io -r read does). Every case must end in a read or a one-line Qcow2Error,
 * within SLOW_MS; the slowest case, the peak RSS of the process and the verdict counts are printed. QEMU's
 * verdicts on such payloads are compared in test/decompression.test.ts.
 * Run from packages/core: node --conditions=@qcowkit/source --import tsx test/fuzz/compressed.ts CASES SEED
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Qcow2Error } from "@qcowkit/spec";
import { openImage } from "../../src/node";
import { buildCorpus } from "./corpus";
import { READ_LIMIT, SLOW_MS } from "./harness";
import { mutateCompressed } from "./mutate";

const cases = Number(process.argv[2] ?? 10000);
const first = Number(process.argv[3] ?? 1);
const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "qcowkit-fuzz-compressed-"));
const seeds = buildCorpus(dir).filter((s) => mutateCompressed(s.bytes, 0) !== undefined);
const counts = { ok: 0, refused: 0 };
/** One line per case ("SEED ok" or "SEED message"), written to $QCOWKIT_FUZZ_VERDICTS when set. */
const verdicts: string[] = [];
const crashes: string[] = [];
const slow: string[] = [];
let slowest = 0;
let slowestSeed = 0;
let maxRss = 0;
const started = Date.now();
for (let seed = first; seed < first + cases; seed++) {
  const base = seeds[seed % seeds.length]!;
  const m = mutateCompressed(base.bytes, seed)!;
  const path = join(dir, "case.qcow2");
  writeFileSync(path, m.bytes);
  const t0 = performance.now();
  try {
    const image = await openImage(path, { readOnly: true, format: "qcow2", onWarning: () => undefined });
    try {
      await image.read(0, new Uint8Array(Math.min(image.virtualSize, READ_LIMIT)));
      counts.ok++;
      verdicts.push(`${seed} ok`);
    } finally {
      await image.close().catch(() => undefined);
    }
  } catch (e) {
    verdicts.push(`${seed} ${(e as Error).message}`);
    if (e instanceof Qcow2Error && !/[\n\r]/.test(e.message)) counts.refused++;
    else crashes.push(`seed ${seed} (${base.name}: ${m.description.join("; ")}): ${e instanceof Error ? e.stack : String(e)}`);
  }
  const ms = performance.now() - t0;
  if (ms > slowest) [slowest, slowestSeed] = [ms, seed];
  if (ms > SLOW_MS) slow.push(`seed ${seed}: ${ms.toFixed(0)} ms`);
  maxRss = Math.max(maxRss, process.memoryUsage().rss);
}
rmSync(dir, { recursive: true, force: true });
if (process.env.QCOWKIT_FUZZ_VERDICTS) writeFileSync(process.env.QCOWKIT_FUZZ_VERDICTS, `${verdicts.join("\n")}\n`);
console.log(
  `fuzz --compressed: ${cases} cases from seed ${first} on ${seeds.map((s) => s.name).join(", ")} in ${((Date.now() - started) / 1000).toFixed(0)} s: ` +
    `${counts.ok} read, ${counts.refused} refused with one line, ${crashes.length} crashes, ${slow.length} over ${SLOW_MS} ms ` +
    `(slowest ${slowest.toFixed(1)} ms, seed ${slowestSeed}); peak RSS ${(maxRss / 2 ** 20).toFixed(0)} MiB`,
);
for (const c of [...crashes, ...slow].slice(0, 10)) console.log(`  ${c}`);
process.exit(crashes.length || slow.length ? 1 : 0);
