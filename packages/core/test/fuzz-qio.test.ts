/**
 * qemu-io's verdicts on damaged images, compared with qio's (issue 19: the fuzz suite checked crashes, hangs
 * and the engine's accept/refuse verdicts, not what QEMU's tool prints). Each case is a seeded mutation of a
 * QEMU-made image (fuzz/mutate.ts); both tools run the same commands on their own copy: open, read, write,
 * read back. Compared: the exit code, the messages on stderr and the command results on stdout (timings
 * removed, tool names and paths normalized). The agreement must stay at or above the measured floor, and qio
 * must never print a stack trace.
 *
 * CI: QCOWKIT_QIO_FUZZ_CASES (default 48) cases from QCOWKIT_QIO_FUZZ_SEED (default 1).
 */
import { execFile } from "node:child_process";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { buildCorpus } from "./fuzz/corpus";
import { mutate } from "./fuzz/mutate";
import { tempDir } from "./helpers";

const CASES = Number(process.env.QCOWKIT_QIO_FUZZ_CASES ?? 48);
const FIRST_SEED = Number(process.env.QCOWKIT_QIO_FUZZ_SEED ?? 1);
/** Measured (2026-12-07): 48 cases from seed 1 agree on 45 (the test prints the disagreements). */
const AGREEMENT_FLOOR = 0.85;
const QIO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../apps/cli/dist/qio.cjs");
const COMMANDS = ["read 0 64k", "write -P 0x5a 4k 4k", "read -P 0x5a 4k 4k"];

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(program: string, args: string[], cwd: string): Promise<Run> {
  return new Promise((done) => {
    execFile(program, args, { cwd, timeout: 30_000, encoding: "utf8", maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = !error ? 0 : typeof error.code === "number" ? error.code : 124;
      done({ code, stdout, stderr });
    });
  });
}

/** What is compared: exit code, then stderr and stdout with timings, tool names and the directory removed. */
function verdict(r: Run, dir: string): string {
  const clean = (t: string) =>
    t
      .split(dir)
      .join("DIR")
      .replace(/qemu-io: /g, "qio: ")
      .replace(/(\d+ ops); [0-9:.]+(?: sec)? \([^()\n]*\/sec and [^()\n]* ops\/sec\)/g, "$1; TIME");
  return `exit ${r.code}\n${clean(r.stderr)}--\n${clean(r.stdout)}`;
}

describe("qemu-io's messages and exit codes on damaged images", () => {
  const t = tempDir("qcowkit-qio-fuzz-");
  afterAll(() => t.cleanup());

  it(`${CASES} seeded mutations from seed ${FIRST_SEED}: qio answers as qemu-io`, { timeout: 900_000 }, async () => {
    const corpusDir = join(t.dir, "corpus");
    mkdirSync(corpusDir);
    const corpus = buildCorpus(corpusDir);
    const disagreements: string[] = [];
    const traces: string[] = [];
    let agreed = 0;
    for (let i = 0; i < CASES; i++) {
      const seed = FIRST_SEED + i;
      const seedImage = corpus[seed % corpus.length]!;
      // Both copies live in the corpus directory (data and backing files are named relative to it).
      const q = `q${seed}.qcow2`;
      const o = `o${seed}.qcow2`;
      const m = mutate(seedImage.bytes, seed, q);
      writeFileSync(join(corpusDir, q), m.bytes);
      copyFileSync(join(corpusDir, q), join(corpusDir, o));
      const args = (file: string) => [...COMMANDS.flatMap((c) => ["-c", c]), file];
      const rq = await run("qemu-io", args(q), corpusDir);
      let ro = await run(process.execPath, [QIO, ...args(o)], corpusDir);
      // Another build may be replacing dist/ meanwhile: a start that failed to load is retried.
      for (let n = 0; n < 20 && /ERR_MODULE_NOT_FOUND/.test(ro.stderr); n++) {
        await new Promise((r) => setTimeout(r, 1000));
        copyFileSync(join(corpusDir, q), join(corpusDir, o));
        ro = await run(process.execPath, [QIO, ...args(o)], corpusDir);
      }
      if (/^\s+at .+:\d+:\d+\)?$/m.test(ro.stderr)) traces.push(`seed ${seed}: ${ro.stderr.split("\n")[0]}`);
      const [vq, vo] = [verdict(rq, corpusDir).split(q).join("IMG"), verdict(ro, corpusDir).split(o).join("IMG")];
      if (vq === vo) agreed++;
      else disagreements.push(`seed ${seed} (${seedImage.name}: ${m.description.join("; ")})\n  qemu-io: ${vq.replace(/\n/g, " | ")}\n  qio:     ${vo.replace(/\n/g, " | ")}`);
    }
    console.log(`${agreed} of ${CASES} cases: qio's exit code and output equal qemu-io's\n${disagreements.slice(0, 10).join("\n")}`);
    expect(traces).toEqual([]);
    expect(agreed / CASES).toBeGreaterThanOrEqual(AGREEMENT_FLOOR);
  });
});
