#!/usr/bin/env node
/**
 * The fuzz tests on demand (`pnpm fuzz` at the repository root):
 *
 *   pnpm fuzz [--cases N] [--seed S] [--chunk C]   N cases from seed S (default 20000 from 1), run as chunks of
 *                                                  C cases (default 2000), each in its own vitest process with
 *                                                  a time limit, so that a hang names its chunk
 *   pnpm fuzz --compressed [--cases N] [--seed S]  N mutations of compressed payloads only (zlib and zstd
 *                                                  bombs, flips, cuts, declared sizes), read in one process:
 *                                                  no crash, no slow case, peak RSS (see fuzz/compressed.ts)
 *   pnpm fuzz --show SEED [SEED...]                reproduce single cases: the mutation, both sides' verdicts
 *                                                  and messages, the files left in a temporary directory
 *   pnpm fuzz --nbd-handshake [--cases N] [--seed S]   mutated NBD handshakes against qnbd (nbd-handshake.mjs)
 *
 * Each chunk is test/fuzz.test.ts with QCOWKIT_FUZZ_CASES / QCOWKIT_FUZZ_SEED set; it fails on any crash,
 * hang, unexpected write, memory bound or an agreement with QEMU below 90%.
 */
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const coreDir = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? Number(args[i + 1]) : fallback;
};

if (args[0] === "--compressed") {
  const r = spawnSync(
    process.execPath,
    ["--conditions=@qcowkit/source", "--import", "tsx", "test/fuzz/compressed.ts", String(option("cases", 10000)), String(option("seed", 1))],
    { cwd: coreDir, stdio: "inherit" },
  );
  process.exit(r.status ?? 1);
}

if (args[0] === "--nbd-handshake") {
  const r = spawnSync(process.execPath, [join(coreDir, "test", "fuzz", "nbd-handshake.mjs"), ...args.slice(1)], { stdio: "inherit" });
  process.exit(r.status ?? 1);
}

if (args[0] === "--show") {
  const r = spawnSync(process.execPath, ["--conditions=@qcowkit/source", "--import", "tsx", "test/fuzz/show.ts", ...args.slice(1)], {
    cwd: coreDir,
    stdio: "inherit",
  });
  process.exit(r.status ?? 1);
}

const cases = option("cases", 20000);
const first = option("seed", 1);
const chunk = option("chunk", 2000);
let failed = 0;
for (let start = 0; start < cases; start += chunk) {
  const n = Math.min(chunk, cases - start);
  const seed = first + start;
  console.log(`fuzz: ${n} cases from seed ${seed}`);
  const r = spawnSync("pnpm", ["exec", "vitest", "run", "test/fuzz.test.ts"], {
    cwd: coreDir,
    stdio: "inherit",
    env: { ...process.env, QCOWKIT_FUZZ_CASES: String(n), QCOWKIT_FUZZ_SEED: String(seed) },
    // A chunk that runs far longer than its cases can take has hung.
    timeout: Math.max(600_000, n * 1_000),
    killSignal: "SIGKILL",
  });
  if (r.error || r.status !== 0) {
    failed++;
    console.log(`fuzz: chunk from seed ${seed} ${r.error ? `did not finish (${r.error.message})` : "failed"}`);
  }
}
console.log(failed ? `fuzz: ${failed} chunk(s) failed` : `fuzz: all ${cases} cases passed`);
process.exit(failed ? 1 : 0);
