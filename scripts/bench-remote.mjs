#!/usr/bin/env node
/**
 * pnpm bench:remote: remote images on loopback, side by side with QEMU's curl driver.
 * - ranged-read throughput (nbdcopy of the whole export to null:) and 4 KiB random-read latency (fio, nbd
 *   engine, iodepth 1) through qnbd on an S3 object (s3rver) and on the same object over HTTP (nginx),
 *   against qemu-nbd with the curl driver on HTTP;
 * - convert throughput from HTTP to a local raw file: qimg convert against qemu-img convert (-m 1: QEMU 7.2's
 *   curl driver hangs with parallel requests in convert).
 * Everything on tmpfs (/dev/shm). REMOTE_BENCH_MB sets the object size (default 64), REMOTE_BENCH_ROUNDS the
 * rounds per figure (default 3, the best is kept), REMOTE_BENCH_SECONDS fio's run time (default 5).
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { promisify } from "node:util";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { startNginx, startS3rver } from "./remote-servers.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const QIMG = path.join(root, "apps/cli/bin/qimg.js");
const QNBD = path.join(root, "apps/nbd/bin/qnbd.js");
const MB = Number(process.env.REMOTE_BENCH_MB ?? 64);
const ROUNDS = Number(process.env.REMOTE_BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.REMOTE_BENCH_SECONDS ?? 5);

const dir = fs.mkdtempSync(path.join(fs.existsSync("/dev/shm") ? "/dev/shm" : "/tmp", "qcowkit-bench-remote-"));
const www = path.join(dir, "www");
fs.mkdirSync(www);
fs.mkdirSync(path.join(dir, "s3"));
const children = [];
// s3rver runs in this process: every child is waited for asynchronously, never with a blocking call.
// Each run is bounded (QEMU 7.2's curl driver can hang under parallel requests): a run past the limit counts as
// "hung" in the table instead of stalling the benchmark.
const LIMIT_MS = Number(process.env.REMOTE_BENCH_LIMIT_SECONDS ?? 120) * 1000;
const exec = (program, args, opts = {}) => promisify(execFile)(program, args, { maxBuffer: 64 << 20, timeout: LIMIT_MS, killSignal: "SIGKILL", ...opts });
let nginx;
let s3;

function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
}

async function main() {
  console.log(`remote bench: ${MB} MiB object on loopback, best of ${ROUNDS}; tmpfs ${dir}`);
  const file = path.join(www, "disk.raw");
  execFileSync("sh", ["-c", `head -c ${MB * 1048576} /dev/urandom > ${file}`]);
  nginx = await startNginx(www);
  s3 = await startS3rver(path.join(dir, "s3"), ["b"]);
  const env = { ...process.env, ...s3.env };
  await exec(process.execPath, [QIMG, "convert", "-f", "raw", "-O", "raw", file, "s3://b/disk.raw"], { env });
  const url = `${nginx.url}/disk.raw`;

  const servers = {
    "qnbd, S3 (s3rver)": await serve(process.execPath, [QNBD, "-r", "-t", "-f", "raw"], "s3://b/disk.raw", env),
    "qnbd, HTTP (nginx)": await serve(process.execPath, [QNBD, "-r", "-t", "-f", "raw"], url, env),
    "qemu-nbd, HTTP (nginx, curl)": await serve("qemu-nbd", ["-r", "-t", "-f", "raw"], url, env),
  };
  const rows = [];
  for (const [name, uri] of Object.entries(servers)) {
    const copy = await best(() => timed(() => exec("nbdcopy", [uri, "null:"])));
    const lat = await fioLatency(uri).catch((e) => {
      if (e.killed) return { mean: NaN, p50: NaN, p99: NaN };
      throw e;
    });
    rows.push({ name, mibps: MB / copy, ...lat });
  }
  const q = rows[2];
  console.log("\nthrough NBD                        read MiB/s  ratio   4k p50 us  4k mean us  4k p99 us  ratio(mean)");
  for (const r of rows) {
    console.log(
      `${r.name.padEnd(34)} ${r.mibps.toFixed(1).padStart(10)} ${(r.mibps / q.mibps).toFixed(2).padStart(6)} ${r.p50.toFixed(0).padStart(11)} ${r.mean.toFixed(0).padStart(11)} ${r.p99.toFixed(0).padStart(10)} ${(r.mean / q.mean).toFixed(2).padStart(12)}`,
    );
  }

  const out = path.join(dir, "out.raw");
  const ours = await best(() => timed(() => exec(process.execPath, [QIMG, "convert", "-f", "raw", "-O", "raw", url, out])));
  const theirs = await best(() => timed(() => exec("qemu-img", ["convert", "-m", "1", "-f", "raw", "-O", "raw", url, out])));
  console.log("\nconvert HTTP -> local raw           MiB/s");
  console.log(`${"qimg convert".padEnd(34)} ${(MB / ours).toFixed(1).padStart(6)}  ratio ${(theirs / ours).toFixed(2)}`);
  console.log(`${"qemu-img convert -m 1 (curl)".padEnd(34)} ${(MB / theirs).toFixed(1).padStart(6)}`);
  console.log("(0.0 MiB/s or NaN: the run hung and was stopped after the limit.)");
  console.log("\nratio > 1: qcowkit faster (throughput) / slower (latency). Shared CPU: figures are noisy.");
}

async function timed(fn) {
  const t = process.hrtime.bigint();
  try {
    await fn();
  } catch (e) {
    if (e.killed) return Infinity; // hung
    throw e;
  }
  return Number(process.hrtime.bigint() - t) / 1e9;
}

async function best(fn) {
  let b = Infinity;
  for (let i = 0; i < ROUNDS; i++) b = Math.min(b, await fn());
  return b;
}

/** fio 4 KiB random reads at iodepth 1: completion latency percentiles in microseconds. */
async function fioLatency(uri) {
  const { stdout: outText } = await exec("fio", [
    "--name=lat", "--ioengine=nbd", `--uri=${uri}`, "--rw=randread", "--bs=4k", "--iodepth=1", `--runtime=${SECONDS}`,
    "--time_based", "--randseed=1", "--output-format=json",
  ]);
  const job = JSON.parse(outText.slice(outText.indexOf("{"))).jobs[0].read;
  const pct = job.clat_ns.percentile ?? {};
  return { mean: job.clat_ns.mean / 1000, p50: (pct["50.000000"] ?? 0) / 1000, p99: (pct["99.000000"] ?? 0) / 1000 };
}

async function serve(program, args, name, env) {
  const socket = path.join(dir, `nbd-${children.length}.sock`);
  const child = spawn(program, [...args, "-k", socket, name], { stdio: ["ignore", "ignore", "inherit"], env });
  children.push(child);
  for (let i = 0; i < 400 && !fs.existsSync(socket); i++) {
    if (child.exitCode !== null) throw new Error(`${program} exited with ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!fs.existsSync(socket)) throw new Error(`${program} did not start`);
  return `nbd+unix:///?socket=${socket}`;
}

try {
  await main();
} finally {
  cleanup();
  await nginx?.stop();
  await s3?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}
