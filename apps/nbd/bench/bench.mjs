#!/usr/bin/env node
// Benchmark: qnbd against qemu-nbd, both serving the same kind of image on tmpfs (qcow2 by default; raw, or
// qcow2 with an external data file, on request), driven by the same clients.
//   nbdcopy sequential write and read of SIZE (default 256 MiB);
//   fio 4 KiB randread and randwrite at iodepth 32 through fio's nbd engine (RUNTIME seconds each).
// Prints MB/s or IOPS for both servers, the ratio qnbd/qemu-nbd, and qnbd's peak RSS.
// Usage: node apps/nbd/bench/bench.mjs [--format qcow2|raw|datafile] [--size-mib N] [--runtime S] [--repeat N]
//        [--only WORD] (run only the workloads whose name contains WORD, e.g. randread; repeatable)
//        [--dir DIR] (where the images go; default /dev/shm, tmpfs)
// (after npm run setup)
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const appDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const qnbdBin = path.join(appDir, "bin", "qnbd.js");
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const sizeMiB = opt("--size-mib", 256);
const runtime = opt("--runtime", 10);
const repeat = opt("--repeat", 2);
const only = args.flatMap((a, i) => (a === "--only" ? [args[i + 1]] : []));
const formatArg = args.includes("--format") ? args[args.indexOf("--format") + 1] : "qcow2";
const size = sizeMiB * 1024 * 1024;

if (!fs.existsSync(path.join(appDir, "dist", "qnbd.js"))) {
  console.error("bench: build qnbd first (cd apps/nbd && pnpm exec tsup)");
  process.exit(1);
}

const baseDir = args.includes("--dir") ? args[args.indexOf("--dir") + 1] : "/dev/shm";
const dir = fs.mkdtempSync(path.join(baseDir, "qnbd-bench-"));
const children = new Set();
const cleanup = () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
};
process.on("exit", cleanup);
for (const s of ["SIGINT", "SIGTERM"]) process.on(s, () => process.exit(130));

function run(cmd, argv, timeoutMs = 600_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${cmd} ${argv.join(" ")} exited ${code}: ${err}`));
    });
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitListening(port) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port}`);
}

/** Starts a server on a fresh image; both get -t -e 0 (persistent, any number of clients, multi-conn). */
async function startServer(kind) {
  let image;
  let format = "raw";
  if (formatArg === "raw") {
    image = path.join(dir, `${kind}.raw`);
    fs.writeFileSync(image, "");
    fs.truncateSync(image, size);
  } else {
    image = path.join(dir, `${kind}.qcow2`);
    format = "qcow2";
    const o = formatArg === "datafile" ? ["-o", `data_file=${path.join(dir, `${kind}.data`)}`] : [];
    await run("qemu-img", ["create", "-q", "-f", "qcow2", ...o, image, String(size)]);
  }
  const port = await freePort();
  const common = ["-f", format, "-t", "-e", "0", "-b", "127.0.0.1", "-p", String(port), image];
  const child =
    kind === "qnbd"
      ? spawn(process.execPath, [qnbdBin, ...common], { stdio: "ignore" })
      : spawn("qemu-nbd", common, { stdio: "ignore" });
  children.add(child);
  await waitListening(port);
  return { kind, child, uri: `nbd://127.0.0.1:${port}/`, image };
}

/** Peak resident set (VmHWM), MiB. For qnbd about 40 MiB of it is the node binary's own file pages. */
function peakRssMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

/** Current anonymous resident memory (RssAnon), MiB: heap, buffers and malloc arenas. */
function anonRssMiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

async function timed(fn) {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const source = path.join(dir, "source.raw");
{
  const fd = fs.openSync(source, "w");
  const chunk = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < sizeMiB; i++) {
    for (let j = 0; j < chunk.length; j += 4) chunk.writeUInt32LE((Math.random() * 0xffffffff) >>> 0, j);
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
}

const workloads = [
  {
    name: `nbdcopy seq write ${sizeMiB} MiB`,
    unit: "MB/s",
    run: async (s) => size / 1e6 / (await timed(() => run("nbdcopy", ["--flush", source, s.uri]))),
  },
  {
    name: `nbdcopy seq read ${sizeMiB} MiB`,
    unit: "MB/s",
    run: async (s) => size / 1e6 / (await timed(() => run("nbdcopy", [s.uri, "null:"]))),
  },
  ...["randread", "randwrite"].map((rw) => ({
    name: `fio ${rw} 4k qd32`,
    unit: "IOPS",
    run: async (s) => {
      const out = await run("fio", [
        "--name=bench", "--ioengine=nbd", `--uri=${s.uri}`, `--rw=${rw}`, "--bs=4k", "--iodepth=32",
        `--size=${sizeMiB}M`, "--time_based", `--runtime=${runtime}`, "--ramp_time=1", "--output-format=json",
      ]);
      const job = JSON.parse(out.slice(out.indexOf("{"))).jobs[0];
      return rw === "randread" ? job.read.iops : job.write.iops;
    },
  })),
];

console.log(`serving ${formatArg} images of ${sizeMiB} MiB`);
const servers = { "qemu-nbd": await startServer("qemu-nbd"), qnbd: await startServer("qnbd") };
// Fill both images once so reads are of data, not of never-written blocks.
await run("nbdcopy", ["--flush", source, servers["qemu-nbd"].uri]);
await run("nbdcopy", ["--flush", source, servers.qnbd.uri]);
console.log(`qnbd peak RSS after filling: ${peakRssMiB(servers.qnbd.child.pid).toFixed(0)} MiB`);

const rows = [];
for (const w of workloads.filter((w) => only.length === 0 || only.some((o) => w.name.includes(o)))) {
  const best = { "qemu-nbd": 0, qnbd: 0 };
  for (let i = 0; i < repeat; i++) {
    for (const kind of ["qemu-nbd", "qnbd"]) best[kind] = Math.max(best[kind], await w.run(servers[kind]));
  }
  rows.push({ name: w.name, unit: w.unit, ...best, ratio: best.qnbd / best["qemu-nbd"] });
  const r = rows.at(-1);
  console.log(
    `${r.name.padEnd(28)} qemu-nbd ${r["qemu-nbd"].toFixed(0).padStart(8)} ${r.unit.padEnd(4)}  ` +
      `qnbd ${r.qnbd.toFixed(0).padStart(8)} ${r.unit.padEnd(4)}  ratio ${r.ratio.toFixed(2)}  ` +
      `(qnbd peak RSS so far ${peakRssMiB(servers.qnbd.child.pid).toFixed(0)} MiB)`,
  );
}
console.log(
  `qnbd peak RSS: ${peakRssMiB(servers.qnbd.child.pid).toFixed(0)} MiB, anonymous now ${anonRssMiB(servers.qnbd.child.pid).toFixed(0)} MiB ` +
    `(qemu-nbd: ${peakRssMiB(servers["qemu-nbd"].child.pid).toFixed(0)} MiB, ${anonRssMiB(servers["qemu-nbd"].child.pid).toFixed(0)} MiB)`,
);
for (const s of Object.values(servers)) s.child.kill("SIGTERM");
process.exit(0);
