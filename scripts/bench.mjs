#!/usr/bin/env node
// Benchmarks, side by side in one run on tmpfs (never asserted in tests):
//   qimg convert vs qemu-img convert: raw -> qcow2 and qcow2 -> raw of 1 GiB of random data;
//   streams: raw -> qcow2 written to a pipe (qimg, one pass) vs qemu-img convert to a file plus cat, and a
//   qcow2 on stdin -> raw (qimg) vs cat to a file plus qemu-img convert;
//   qio vs qemu-io: 4 KiB random writes into a new image;
//   and, for reference, a bare Node fs copy (scripts/bench/node-copy.mjs) vs qemu-img's raw->raw copy;
//   convert -c (zlib, zstd) and qio writes on LUKS: scripts/bench/compressed-encrypted.mjs (--compress-mib N);
//   convert -m 8 -W, start-up, check/map/convert of a 4 TiB sparse image: scripts/bench/scale-startup.mjs
//   (--parallel-mib N).
// Each measurement alternates the two tools over several rounds and reports the median time, the speed
// ratio (qemu time / qcowkit time: >= 1 means qcowkit is at least as fast) and qcowkit's peak RSS.
// How the figures are kept fair and steady (this VM's timings have outliers of 2-3x):
//   - one warm-up round per tool is run and not counted (page cache, tmpfs pages, CPU frequency);
//   - every round starts from a deleted output file, for both tools;
//   - qimg and qio run as an npm install runs them: `node <package>/bin/qimg.js`, not through pnpm's
//     node_modules/.bin shell shim (which adds a shell and ~10 ms per run);
//   - timed runs are not watched; peak RSS comes from one extra, untimed run sampled every 5 ms;
//   - children run without NODE_EXTRA_CA_CERTS: Node parses that CA bundle at start-up of every process
//     (~40 ms on our VMs), qcowkit never uses TLS, and the variable is a setting of the machine
//     (--keep-env keeps it, to see its cost).
// Usage: node scripts/bench.mjs [--size-mib N] [--rounds N] [--writes N] [--keep-env] [--only ROWS]   (after npm run setup)
import { spawn, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const argv = process.argv.slice(2);
const opt = (name, fallback) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : fallback);
const sizeMiB = opt("--size-mib", 1024);
const rounds = opt("--rounds", 11);
const writes = opt("--writes", 5000);
// --only convert|streams|floor|qio|compressed|scale: run those rows only.
const only = argv.includes("--only") ? argv[argv.indexOf("--only") + 1] : undefined;
const want = (rows) => only === undefined || only === rows;
const binFile = (name) => join(root, "apps", "cli", "bin", `${name}.js`);
for (const b of ["qimg", "qio"]) {
  if (!existsSync(binFile(b)) || !existsSync(join(root, "apps", "cli", "dist", `${b}.cjs`))) throw new Error(`bench: ${b} not built; run npm run setup first`);
}
const childEnv = { ...process.env };
const strippedCa = "NODE_EXTRA_CA_CERTS" in childEnv && !argv.includes("--keep-env");
if (strippedCa) delete childEnv.NODE_EXTRA_CA_CERTS;
/** A qcowkit tool as a command line: node and the package's bin file. */
const ours = (name, args) => [process.execPath, [binFile(name), ...args]];
for (const t of ["qemu-img", "qemu-io"]) if (spawnSync("sh", ["-c", `command -v ${t}`]).status !== 0) throw new Error(`bench: ${t} missing`);

const dir = mkdtempSync("/dev/shm/qcowkit-bench-");
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const p = (n) => join(dir, n);

/** Run a command; resolves with wall time (ms) and, when `watch` is set, peak RSS (MiB, /proc VmHWM sampling). */
function run(cmd, args, watch) {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"], env: childEnv });
    let err = "";
    let peak = 0;
    child.stderr.on("data", (d) => (err += d));
    const sample = () => {
      try {
        const s = readFileSync(`/proc/${child.pid}/status`, "utf8");
        const m = /VmHWM:\s+(\d+) kB/.exec(s);
        if (m) peak = Math.max(peak, Number(m[1]) / 1024);
      } catch {}
    };
    const timer = watch ? setInterval(sample, 5) : undefined;
    child.on("exit", (code) => {
      clearInterval(timer);
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err.trim()}`));
      else resolve({ ms, peak });
    });
  });
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Time `qemuCmd` against `oursCmd` (each `[cmd, args]`); `prepare` runs before every run of either (deletes
 * the output). One uncounted warm-up round, then `rounds` alternating rounds, then one watched run of ours.
 */
async function compare(title, prepare, qemuCmd, oursCmd, unitBytes, measurePeak) {
  const q = [];
  const o = [];
  const once = async (cmd, watch) => {
    await prepare();
    return run(cmd[0], cmd[1], watch);
  };
  await once(qemuCmd, false);
  await once(oursCmd, false);
  for (let r = 0; r < rounds; r++) {
    // Alternate which tool goes first, so neither always gets the warmer machine.
    const order = r % 2 === 0 ? [[q, qemuCmd], [o, oursCmd]] : [[o, oursCmd], [q, qemuCmd]];
    for (const [times, cmd] of order) times.push((await once(cmd, false)).ms);
  }
  let { peak } = await once(oursCmd, !measurePeak);
  if (measurePeak) {
    await prepare();
    peak = measurePeak();
  }
  const qm = median(q);
  const om = median(o);
  const rate = (ms) => (unitBytes ? `${(unitBytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s` : `${((writes / ms) * 1000).toFixed(0)} IOPS`);
  const line = `${title.padEnd(40)} qemu ${rate(qm).padStart(11)}   qcowkit ${rate(om).padStart(11)}   ratio ${(qm / om).toFixed(2)}x   qcowkit peak RSS ${peak.toFixed(0)} MiB`;
  console.log(line);
  return { title, qemuMs: qm, oursMs: om, ratio: qm / om, peakMiB: peak };
}

console.log(`qcowkit benchmarks on tmpfs (${dir}); ${rounds} rounds, medians\n`);
// 1 GiB of random data, written in 16 MiB pieces.
const src = p("src.raw");
const fd = openSync(src, "w");
const piece = new Uint8Array(16 * 1024 * 1024);
for (let i = 0; i < sizeMiB / 16; i++) {
  randomFillSync(piece);
  writeSync(fd, piece);
}
closeSync(fd);
const bytes = sizeMiB * 1024 * 1024;

const results = [];
const rmAll = (...names) => () => names.forEach((n) => rmSync(p(n), { force: true }));
if (want("convert")) results.push(
  await compare(
    `convert raw -> qcow2 (${sizeMiB} MiB)`,
    rmAll("q.qcow2", "o.qcow2"),
    ["qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, p("q.qcow2")]],
    ours("qimg", ["convert", "-f", "raw", "-O", "qcow2", src, p("o.qcow2")]),
    bytes,
  ),
);
const qcow2Src = p("src.qcow2");
spawnSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, qcow2Src]);
rmAll("q.qcow2", "o.qcow2")();
if (want("convert")) results.push(
  await compare(
    `convert qcow2 -> raw (${sizeMiB} MiB)`,
    rmAll("q.raw", "o.raw"),
    ["qemu-img", ["convert", "-f", "qcow2", "-O", "raw", qcow2Src, p("q.raw")]],
    ours("qimg", ["convert", "-f", "qcow2", "-O", "raw", qcow2Src, p("o.raw")]),
    bytes,
  ),
);
// Streams: qimg writes a qcow2 to a pipe in one pass; qemu-img cannot, so its side is the two-step
// convert to a file plus cat. And a qcow2 arriving on stdin: qemu-img needs it in a file first.
const sh = (script) => ["sh", ["-c", script]];
const qimgCmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(binFile("qimg"))}`;
/** Peak RSS (MiB) of the qimg process inside a pipeline: /usr/bin/time -f %M around it. */
function pipelinePeak(script) {
  const r = spawnSync("sh", ["-c", script.replace(qimgCmd, `/usr/bin/time -f 'rss=%M' ${qimgCmd}`)], { encoding: "utf8", env: childEnv });
  const m = /rss=(\d+)/.exec(r.stderr);
  return m ? Number(m[1]) / 1024 : NaN;
}
// Stream rows: paired rounds (QEMU twice, qimg once per round; scripts/bench/paired.mjs): the ratio of the
// medians, each round's ratio at its worst and best, QEMU against itself (noise band) and qimg's peak RSS
// (the highest of three runs). qimg keeps what its plan read past the 32 MiB cache in TMPDIR, set to this
// tmpfs folder as qemu-img's intermediate file is.
const { pairedRounds } = await import("./bench/paired.mjs");
childEnv.TMPDIR = dir;
for (const [title, prepare, qemuScript, oursScript] of want("streams") ? [
  [
    `stream raw -> qcow2 | cat (${sizeMiB} MiB)`,
    rmAll("q.qcow2", "q.out", "o.out"),
    `qemu-img convert -f raw -O qcow2 ${src} ${p("q.qcow2")} && cat ${p("q.qcow2")} > ${p("q.out")}`,
    `${qimgCmd} convert -f raw -O qcow2 ${src} - | cat > ${p("o.out")}`,
  ],
  [
    `stream stdin qcow2 -> raw (${sizeMiB} MiB)`,
    rmAll("q.in", "q.raw", "o.raw"),
    `cat ${qcow2Src} > ${p("q.in")} && qemu-img convert -f qcow2 -O raw ${p("q.in")} ${p("q.raw")}`,
    `cat ${qcow2Src} | ${qimgCmd} convert -f qcow2 -O raw - ${p("o.raw")}`,
  ],
] : []) {
  const t = await pairedRounds({ rounds, run, median, prepare, qemuCmd: sh(qemuScript), oursCmd: sh(oursScript) });
  let peak = 0;
  for (let i = 0; i < 3; i++) {
    prepare();
    peak = Math.max(peak, pipelinePeak(oursScript));
  }
  const rate = (ms) => `${(bytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s`;
  console.log(
    `${title.padEnd(40)} qemu ${rate(t.qemuMs).padStart(11)}   qcowkit ${rate(t.oursMs).padStart(11)}   ratio ${t.ratio.toFixed(2)}x ` +
      `(worst ${t.worst.toFixed(2)}x, best ${t.best.toFixed(2)}x)   qemu vs itself ${t.noise[0].toFixed(2)}-${t.noise[1].toFixed(2)}x   qcowkit peak RSS ${peak.toFixed(0)} MiB`,
  );
  results.push({ title, qemuMs: t.qemuMs, oursMs: t.oursMs, ratio: t.ratio, peakMiB: peak });
}
delete childEnv.TMPDIR;
rmAll("q.raw", "o.raw", "src.qcow2", "q.qcow2", "q.out", "o.out", "q.in")();
// The floor: a bare Node copy (no format logic) against qemu-img's raw copy, for reading the ratios above.
const floor = !want("floor") ? undefined : await compare(
  `floor: bare Node copy vs raw->raw`,
  rmAll("q.copy", "o.copy"),
  ["qemu-img", ["convert", "-f", "raw", "-O", "raw", src, p("q.copy")]],
  [process.execPath, [join(root, "scripts", "bench", "node-copy.mjs"), src, p("o.copy")]],
  bytes,
);
rmAll("q.copy", "o.copy")();
// Random 4 KiB writes into a new 1 GiB image, one process each, the same offsets for both.
const offsets = Array.from({ length: writes }, () => Math.floor(Math.random() * (bytes / 4096)) * 4096);
const cmds = offsets.flatMap((o) => ["-c", `write -P 0x5a ${o} 4k`]);
const fresh = () => {
  for (const name of ["w.qcow2", "v.qcow2"]) {
    rmSync(p(name), { force: true });
    spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", p(name), `${sizeMiB}M`]);
  }
};
const qio = !want("qio") ? undefined : await compare(
  `qio random 4k writes (${writes})`,
  fresh,
  ["qemu-io", ["-f", "qcow2", ...cmds, p("w.qcow2")]],
  ours("qio", ["-f", "qcow2", ...cmds, p("v.qcow2")]),
  0,
);
// The watched run's preparation made both images afresh and wrote only ours: write qemu-io's again.
if (qio) spawnSync("qemu-io", ["-f", "qcow2", ...cmds, p("w.qcow2")]);
const same = qio && spawnSync("qemu-img", ["compare", p("w.qcow2"), p("v.qcow2")], { encoding: "utf8" });
// Compressed and encrypted images: at least 7 paired rounds, with min-max and QEMU's own noise band.
console.log("");
const { benchCompressedEncrypted } = await import("./bench/compressed-encrypted.mjs");
if (want("compressed")) await benchCompressedEncrypted({ dir, rounds: Math.max(rounds, 7), run, ours, median, mib: opt("--compress-mib", 128) });
// Parallel uncompressed convert, start-up, and a 4 TiB sparse image (issue 17, items 5-8).
if (want("scale")) {
  console.log("");
  const { benchScaleStartup } = await import("./bench/scale-startup.mjs");
  benchScaleStartup({ dir, rounds: Math.max(rounds, 7), sizeMiB: opt("--parallel-mib", 256), env: childEnv });
}
if (same) console.log(`\nqio and qemu-io images identical: ${same.status === 0 ? "yes" : "NO: " + same.stdout.trim()}`);
if (floor) console.log(`bare Node fs copy ${floor.ratio.toFixed(2)}x qemu-img's raw copy (reference: Node's start-up and its fs module, no format logic; qimg copies through the native addon)`);
if (strippedCa) console.log("NODE_EXTRA_CA_CERTS was removed from the tools' environment (see the comment at the top of this script)");
console.log(
  `convert: minimum ratio ${Math.min(...results.map((r) => r.ratio)).toFixed(2)}x (target >= 0.80x); ` +
    `max qcowkit RSS ${Math.max(...[...results, ...(qio ? [qio] : [])].map((r) => r.peakMiB)).toFixed(0)} MiB (target < 200 MiB)`,
);
