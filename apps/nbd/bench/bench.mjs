#!/usr/bin/env node
// Benchmark: qnbd against qemu-nbd (and qemu-nbd against itself, for the noise band), on tmpfs, driven by the
// same clients. The matrix, each part selectable:
//   transports: Unix socket and TCP (loopback);
//   images: qcow2, raw, qcow2 with an external data file;
//   states: fresh (a new, empty image) and allocated (every cluster written beforehand);
//   workloads: nbdcopy sequential write and read of SIZE (default 1 GiB), fio 4 KiB randread and randwrite at
//   iodepth 32 through fio's nbd engine (RUNTIME seconds each).
// Every measurement gets its own server process on its own copy of the image, so rounds are independent and
// each process's peak RSS (VmHWM) belongs to one workload. Rounds are paired and alternate the order of the
// three servers (qemu-nbd, qemu-nbd again, qnbd). Reported per row: medians, qnbd's min-max, the ratio
// qnbd/qemu-nbd (>= 1: qnbd at least as fast), the noise band (qemu-nbd's second copy against its first),
// and median peak RSS of both servers. A bare `node -e` process's peak RSS is printed as Node's baseline.
// Usage: node apps/nbd/bench/bench.mjs [--size-mib N] [--runtime S] [--rounds N]
//        [--transport unix|tcp]... [--format qcow2|raw|datafile]... [--state fresh|allocated]...
//        [--only WORD]... (workloads whose name contains WORD, e.g. randread)  [--dir DIR] (default /dev/shm)
// (after npm run setup)
import { spawn, spawnSync } from "node:child_process";
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
const many = (name, all) => {
  const picked = args.flatMap((a, i) => (a === name ? [args[i + 1]] : []));
  return picked.length > 0 ? picked : all;
};
const sizeMiB = opt("--size-mib", 1024);
const runtime = opt("--runtime", 10);
const rounds = opt("--rounds", 7);
const only = many("--only", []);
const transports = many("--transport", ["unix", "tcp"]);
const formats = many("--format", ["qcow2", "raw", "datafile"]);
const states = many("--state", ["fresh", "allocated"]);
const size = sizeMiB * 1024 * 1024;

if (!fs.existsSync(path.join(appDir, "dist", "qnbd.cjs"))) {
  console.error("bench: build qnbd first (cd apps/nbd && pnpm exec tsup)");
  process.exit(1);
}
for (const tool of ["qemu-nbd", "qemu-img", "nbdcopy", "fio"]) {
  if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) throw new Error(`bench: ${tool} missing`);
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
const childEnv = { ...process.env };
delete childEnv.NODE_EXTRA_CA_CERTS;

function run(cmd, argv, { timeoutMs = 900_000, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"], env: childEnv, cwd });
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

async function waitListening(connectOpts, child) {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(connectOpts);
      s.once("connect", () => (s.destroy(), resolve(true)));
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (child && child.exitCode !== null) throw new Error(`server exited with status ${child.exitCode}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${JSON.stringify(connectOpts)}`);
}

/** Peak resident set (VmHWM) of a process, MiB. */
function peakRssMiB(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  } catch {
    return NaN;
  }
}

async function timed(fn) {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// Random data to write: incompressible, so no layer can take a shortcut.
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

/** Template images per format and state; each measurement serves a copy. */
const templates = new Map();
async function template(format, state) {
  const key = `${format}-${state}`;
  if (templates.has(key)) return templates.get(key);
  const base = path.join(dir, `template-${key}`);
  const t = { image: `${base}.${format === "raw" ? "raw" : "qcow2"}`, data: format === "datafile" ? `${base}.data` : undefined };
  if (format === "raw") {
    if (state === "allocated") fs.copyFileSync(source, t.image);
    else fs.writeFileSync(t.image, ""), fs.truncateSync(t.image, size);
  } else {
    // The data file is named relative (QEMU resolves it from the working directory: servers start in the copy's
    // folder), so a copy of both next to each other is self-contained.
    const o = t.data ? ["-o", `data_file=${path.basename(t.data)}`] : [];
    await run("qemu-img", ["create", "-q", "-f", "qcow2", ...o, path.basename(t.image), String(size)], { cwd: dir });
    if (state === "allocated") await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "qcow2", source, t.image], { cwd: dir });
  }
  templates.set(key, t);
  return t;
}

/** A copy of the template for one measurement (a data-file image keeps its data file's name relative to it). */
function imageCopy(t, tag) {
  const sub = fs.mkdtempSync(path.join(dir, `${tag}-`));
  const image = path.join(sub, path.basename(t.image));
  fs.copyFileSync(t.image, image);
  if (t.data) fs.copyFileSync(t.data, path.join(sub, path.basename(t.data)));
  return { image, sub };
}

/** Starts one server (persistent, shared, multi-conn) on a copy of the template; resolves with its URI. */
async function startServer(kind, format, state, transport) {
  const t = await template(format, state);
  const { image, sub } = imageCopy(t, kind);
  const listen =
    transport === "unix"
      ? { argv: ["-k", path.join(sub, "s.sock")], connect: { path: path.join(sub, "s.sock") }, uri: `nbd+unix:///?socket=${path.join(sub, "s.sock")}` }
      : await (async () => {
          const port = await freePort();
          return { argv: ["-b", "127.0.0.1", "-p", String(port)], connect: { port, host: "127.0.0.1" }, uri: `nbd://127.0.0.1:${port}/` };
        })();
  const common = ["-f", format === "raw" ? "raw" : "qcow2", "-t", "-e", "0", ...listen.argv, image];
  const child =
    kind === "qnbd"
      ? spawn(qnbdBin, common, { stdio: "ignore", env: childEnv, cwd: sub }) // as a program: its #! line's Node options apply
      : spawn("qemu-nbd", common, { stdio: "ignore", env: childEnv, cwd: sub });
  children.add(child);
  await waitListening(listen.connect, child);
  return {
    uri: listen.uri,
    stop: async () => {
      const rss = peakRssMiB(child.pid);
      child.kill("SIGTERM");
      if (child.exitCode === null) await new Promise((r) => child.once("exit", r));
      children.delete(child);
      fs.rmSync(sub, { recursive: true, force: true });
      return rss;
    },
  };
}

const fio = (rw) => async (uri) => {
  const out = await run("fio", [
    "--name=bench", "--ioengine=nbd", `--uri=${uri}`, `--rw=${rw}`, "--bs=4k", "--iodepth=32",
    `--size=${sizeMiB}M`, "--time_based", `--runtime=${runtime}`, "--ramp_time=1", "--output-format=json",
  ]);
  const job = JSON.parse(out.slice(out.indexOf("{"))).jobs[0];
  return rw === "randread" ? job.read.iops : job.write.iops;
};

const workloads = [
  { name: `nbdcopy write ${sizeMiB} MiB`, unit: "MB/s", run: async (uri) => size / 1e6 / (await timed(() => run("nbdcopy", ["--flush", source, uri]))) },
  { name: `nbdcopy read ${sizeMiB} MiB`, unit: "MB/s", run: async (uri) => size / 1e6 / (await timed(() => run("nbdcopy", [uri, "null:"]))) },
  { name: "fio randread 4k qd32", unit: "IOPS", run: fio("randread") },
  { name: "fio randwrite 4k qd32", unit: "IOPS", run: fio("randwrite") },
].filter((w) => only.length === 0 || only.some((o) => w.name.includes(o)));

/** One measurement: a fresh server on a fresh copy, the workload, the server's peak RSS. */
async function measure(kind, w, format, state, transport) {
  const server = await startServer(kind, format, state, transport);
  try {
    const value = await w.run(server.uri);
    return { value, rss: await server.stop() };
  } catch (e) {
    await server.stop();
    throw e;
  }
}

const baseline = await new Promise((resolve) => {
  const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 300)"], { env: childEnv });
  setTimeout(() => resolve(peakRssMiB(c.pid)), 200);
});
console.log(
  `qnbd vs qemu-nbd on ${dir}: ${sizeMiB} MiB images, ${rounds} paired alternating rounds, medians; ` +
    `Node's own baseline peak RSS ${baseline.toFixed(0)} MiB`,
);
console.log("ratio = qnbd / qemu-nbd (>= 1: qnbd faster); noise = qemu-nbd (2nd) / qemu-nbd\n");
const kinds = ["qemu-nbd", "qemu-nbd#2", "qnbd"];
for (const format of formats) {
  for (const transport of transports) {
    for (const state of states) {
      for (const w of workloads) {
        const values = { "qemu-nbd": [], "qemu-nbd#2": [], qnbd: [] };
        const rss = { "qemu-nbd": [], "qemu-nbd#2": [], qnbd: [] };
        // One uncounted warm-up of each (tmpfs pages, page cache, CPU frequency).
        for (const kind of kinds) await measure(kind === "qnbd" ? "qnbd" : "qemu-nbd", w, format, state, transport);
        for (let r = 0; r < rounds; r++) {
          const order = r % 2 === 0 ? kinds : [...kinds].reverse();
          for (const kind of order) {
            const m = await measure(kind === "qnbd" ? "qnbd" : "qemu-nbd", w, format, state, transport);
            values[kind].push(m.value);
            rss[kind].push(m.rss);
          }
        }
        const q = median(values["qemu-nbd"]);
        const q2 = median(values["qemu-nbd#2"]);
        const o = median(values.qnbd);
        const f = (v) => v.toFixed(0).padStart(7);
        console.log(
          `${format.padEnd(8)} ${transport.padEnd(4)} ${state.padEnd(9)} ${w.name.padEnd(24)} ` +
            `qemu-nbd ${f(q)} ${w.unit.padEnd(4)} qnbd ${f(o)} (${Math.min(...values.qnbd).toFixed(0)}-${Math.max(...values.qnbd).toFixed(0)}) ` +
            `ratio ${(o / q).toFixed(2)} noise ${(q2 / q).toFixed(2)}  ` +
            `peak RSS qemu-nbd ${median(rss["qemu-nbd"]).toFixed(0)} MiB, qnbd ${median(rss.qnbd).toFixed(0)} MiB`,
        );
      }
    }
  }
}
process.exit(0);
