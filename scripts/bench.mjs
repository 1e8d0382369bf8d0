#!/usr/bin/env node
// Benchmarks, side by side in one run on tmpfs (never asserted in tests):
//   qimg convert vs qemu-img convert: raw -> qcow2 and qcow2 -> raw of 1 GiB of random data;
//   qio vs qemu-io: 4 KiB random writes into a new image;
//   and, for reference, a bare Node fs copy (scripts/bench/node-copy.mjs) vs qemu-img's raw->raw copy.
// Each measurement alternates the two tools over several rounds and reports the median time, the speed
// ratio (qemu time / qcowkit time: >= 1 means qcowkit is at least as fast) and qcowkit's peak RSS.
// Usage: node scripts/bench.mjs [--size-mib N] [--rounds N] [--writes N]   (after npm run setup)
import { spawn, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const argv = process.argv.slice(2);
const opt = (name, fallback) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : fallback);
const sizeMiB = opt("--size-mib", 1024);
const rounds = opt("--rounds", 5);
const writes = opt("--writes", 5000);
const bin = (name) => join(root, "node_modules", ".bin", name);
for (const b of ["qimg", "qio"]) if (!existsSync(bin(b))) throw new Error(`bench: ${b} missing; run npm run setup first`);
for (const t of ["qemu-img", "qemu-io"]) if (spawnSync("sh", ["-c", `command -v ${t}`]).status !== 0) throw new Error(`bench: ${t} missing`);

const dir = mkdtempSync("/dev/shm/qcowkit-bench-");
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
const p = (n) => join(dir, n);

/** Run a command; resolves with wall time (ms) and peak RSS (MiB, from /proc VmHWM sampling). */
function timed(cmd, args) {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
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
    const timer = setInterval(sample, 20);
    child.on("exit", (code) => {
      clearInterval(timer);
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err.trim()}`));
      else resolve({ ms, peak });
    });
  });
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function compare(title, qemuRun, oursRun, unitBytes) {
  const q = [];
  const o = [];
  let peak = 0;
  for (let r = 0; r < rounds; r++) {
    // Alternate which tool goes first, so neither always gets the warmer machine.
    const order = r % 2 === 0 ? [["q", qemuRun], ["o", oursRun]] : [["o", oursRun], ["q", qemuRun]];
    for (const [who, fn] of order) {
      const res = await fn();
      (who === "q" ? q : o).push(res.ms);
      if (who === "o") peak = Math.max(peak, res.peak);
    }
  }
  const qm = median(q);
  const om = median(o);
  const rate = (ms) => (unitBytes ? `${(unitBytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s` : `${((writes / ms) * 1000).toFixed(0)} IOPS`);
  const line = `${title.padEnd(34)} qemu ${rate(qm).padStart(11)}   qcowkit ${rate(om).padStart(11)}   ratio ${(qm / om).toFixed(2)}x   qcowkit peak RSS ${peak.toFixed(0)} MiB`;
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
results.push(
  await compare(
    `convert raw -> qcow2 (${sizeMiB} MiB)`,
    () => (rmSync(p("q.qcow2"), { force: true }), timed("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, p("q.qcow2")])),
    () => (rmSync(p("o.qcow2"), { force: true }), timed(bin("qimg"), ["convert", "-f", "raw", "-O", "qcow2", src, p("o.qcow2")])),
    bytes,
  ),
);
results.push(
  await compare(
    `convert qcow2 -> raw (${sizeMiB} MiB)`,
    () => (rmSync(p("q.raw"), { force: true }), timed("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", p("q.qcow2"), p("q.raw")])),
    () => (rmSync(p("o.raw"), { force: true }), timed(bin("qimg"), ["convert", "-f", "qcow2", "-O", "raw", p("q.qcow2"), p("o.raw")])),
    bytes,
  ),
);
// The floor: a bare Node copy (no format logic) against qemu-img's raw copy, for reading the ratios above.
const floor = await compare(
  `floor: bare Node copy vs raw->raw`,
  () => (rmSync(p("q.copy"), { force: true }), timed("qemu-img", ["convert", "-f", "raw", "-O", "raw", src, p("q.copy")])),
  () => (rmSync(p("o.copy"), { force: true }), timed(process.execPath, [join(root, "scripts", "bench", "node-copy.mjs"), src, p("o.copy")])),
  bytes,
);
rmSync(p("q.copy"), { force: true });
rmSync(p("o.copy"), { force: true });
// Random 4 KiB writes into a new 1 GiB image, one process each, the same offsets for both.
const offsets = Array.from({ length: writes }, () => Math.floor(Math.random() * (bytes / 4096)) * 4096);
const cmds = offsets.flatMap((o) => ["-c", `write -P 0x5a ${o} 4k`]);
const fresh = (name) => {
  rmSync(p(name), { force: true });
  spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", p(name), `${sizeMiB}M`]);
};
results.push(
  await compare(
    `qio random 4k writes (${writes})`,
    () => (fresh("w.qcow2"), timed("qemu-io", ["-f", "qcow2", ...cmds, p("w.qcow2")])),
    () => (fresh("v.qcow2"), timed(bin("qio"), ["-f", "qcow2", ...cmds, p("v.qcow2")])),
    0,
  ),
);
const same = spawnSync("qemu-img", ["compare", p("w.qcow2"), p("v.qcow2")], { encoding: "utf8" });
console.log(`\nqio and qemu-io images identical: ${same.status === 0 ? "yes" : "NO: " + same.stdout.trim()}`);
console.log(`bare Node fs copy ${floor.ratio.toFixed(2)}x qemu-img's raw copy (reference: Node's start-up and its fs module, no format logic; qimg copies through the native addon)`);
console.log(`minimum ratio ${Math.min(...results.map((r) => r.ratio)).toFixed(2)}x (target >= 0.80x); max qcowkit RSS ${Math.max(...results.map((r) => r.peakMiB)).toFixed(0)} MiB (target < 200 MiB)`);
