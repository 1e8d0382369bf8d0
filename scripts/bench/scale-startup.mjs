// Benchmark rows for issue 17's items 5-8, run by scripts/bench.mjs (or alone: node scripts/bench/scale-startup.mjs
// [--rounds N] [--size-mib N] [--only parallel,startup,scale]):
//   - qimg convert -m 8 -W vs qemu-img convert -m 8 -W, raw -> qcow2 and qcow2 -> raw, uncompressed;
//   - start-up: `info` on a small image and `--version`, with and without NODE_EXTRA_CA_CERTS, beside
//     `node -e 0` (the floor any Node program pays);
//   - check, map and convert of a 4 TiB sparse image with 3000 clusters (each under its own L2 table), with
//     the peak RSS of both tools.
// qcowkit's tools run as programs (their #! line, as npm's links run them). Each row: one uncounted warm-up per
// tool, then `rounds` paired rounds, alternating which tool goes first; each round times QEMU twice, so the
// noise band (min-max of QEMU's two runs' ratio) says what QEMU against itself looks like in the same run.
// Times are medians, qcowkit's min-max beside them; ratio = QEMU time / qcowkit time (>= 1: qcowkit as fast).
// Each row also gives the median CPU time (user + system) of both: on a busy machine the steadier figure.
import { spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = (name) => join(root, "apps", "cli", "bin", `${name}.js`);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Wall time and CPU time (user + system, of the program and its children), in ms, of one run, as bash's `time`
 * reports them (getrusage, millisecond resolution); throws when the run fails. CPU time is the steadier
 * figure on a loaded machine, where wall time also counts the time spent waiting for a core.
 */
function timed(cmd, args, env) {
  const script = 'TIMEFORMAT="bench-time %3R %3U %3S"; time "$@" >/dev/null';
  const r = spawnSync("bash", ["-c", script, "bench", cmd, ...args], { stdio: ["ignore", "ignore", "pipe"], env, encoding: "utf8" });
  const m = /bench-time ([\d.]+) ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr ?? "");
  if (r.status !== 0 || !m) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return { ms: Number(m[1]) * 1000, cpuMs: (Number(m[2]) + Number(m[3])) * 1000 };
}

/** Peak RSS (MiB) of one run, from /usr/bin/time. */
function peakMiB(cmd, args, env) {
  const r = spawnSync("/usr/bin/time", ["-f", "peak-kib=%M", cmd, ...args], { stdio: ["ignore", "ignore", "pipe"], env, encoding: "utf8" });
  const m = /peak-kib=(\d+)/.exec(r.stderr ?? "");
  return m ? Number(m[1]) / 1024 : NaN;
}

/** One row: paired alternating rounds of `qemu` ([cmd, args]) against `ours`, `prepare` before each run. */
function row(title, { rounds, env, prepare = () => {}, qemu, ours, rss = false }) {
  const q = [];
  const q2 = [];
  const o = [];
  const once = (c) => {
    prepare();
    return timed(c[0], c[1], env);
  };
  once(qemu);
  once(ours);
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) o.push(once(ours)), q.push(once(qemu)), q2.push(once(qemu));
    else q.push(once(qemu)), o.push(once(ours)), q2.push(once(qemu));
  }
  const noise = q.map((t, i) => t.ms / q2[i].ms);
  const qm = median([...q, ...q2].map((t) => t.ms));
  const om = median(o.map((t) => t.ms));
  const qc = median([...q, ...q2].map((t) => t.cpuMs));
  const oc = median(o.map((t) => t.cpuMs));
  const oms = o.map((t) => t.ms);
  let rssText = "";
  if (rss) {
    prepare();
    const qr = peakMiB(qemu[0], qemu[1], env);
    prepare();
    const or = peakMiB(ours[0], ours[1], env);
    rssText = `   peak RSS qemu ${qr.toFixed(0)} MiB, qcowkit ${or.toFixed(0)} MiB`;
  }
  console.log(
    `${title.padEnd(44)} qemu ${qm.toFixed(1).padStart(8)} ms   qcowkit ${om.toFixed(1).padStart(8)} ms ` +
      `(${Math.min(...oms).toFixed(1)}-${Math.max(...oms).toFixed(1)})   ratio ${(qm / om).toFixed(2)}x   ` +
      `noise ${Math.min(...noise).toFixed(2)}-${Math.max(...noise).toFixed(2)}x   ` +
      `CPU qemu ${qc.toFixed(1)} ms, qcowkit ${oc.toFixed(1)} ms (${Math.min(...o.map((t) => t.cpuMs)).toFixed(1)}-${Math.max(...o.map((t) => t.cpuMs)).toFixed(1)})${rssText}`,
  );
  return { title, qemuMs: qm, oursMs: om, ratio: qm / om, qemuCpuMs: qc, oursCpuMs: oc };
}

export function benchScaleStartup({ dir, rounds = 7, sizeMiB = 256, env = { ...process.env }, parts = ["parallel", "startup", "scale"] }) {
  rounds = Math.max(rounds, 7);
  const p = (n) => join(dir, n);
  const rm = (...names) => () => names.forEach((n) => rmSync(p(n), { force: true }));
  const withoutCa = { ...env };
  delete withoutCa.NODE_EXTRA_CA_CERTS;
  const quiet = (cmd, args) => {
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${cmd} ${args.slice(0, 4).join(" ")}: ${r.stderr}`);
  };

  if (parts.includes("parallel")) benchParallel();
  if (parts.includes("startup")) benchStartup();
  if (parts.includes("scale")) benchScale();

  function benchParallel() {
  // Parallel uncompressed convert.
  const src = p("ps.raw");
  const data = Buffer.alloc(sizeMiB * 1024 * 1024);
  randomFillSync(data);
  writeFileSync(src, data);
  const srcQcow2 = p("ps.qcow2");
  quiet("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, srcQcow2]);
  const mw = ["-m", "8", "-W"];
  for (const [from, input, to] of [["raw", src, "qcow2"], ["qcow2", srcQcow2, "raw"]]) {
    const args = (out) => ["convert", ...mw, "-f", from, "-O", to, input, p(out)];
    row(`convert -m 8 -W ${from} -> ${to} (${sizeMiB} MiB)`, {
      rounds,
      env: withoutCa,
      prepare: rm(`pq.${to}`, `po.${to}`),
      qemu: ["qemu-img", args(`pq.${to}`)],
      ours: [bin("qimg"), args(`po.${to}`)],
    });
  }
  rm("ps.raw", "ps.qcow2", "pq.qcow2", "po.qcow2", "pq.raw", "po.raw")();
  }

  function benchStartup() {
  // Start-up.
  const small = p("small.qcow2");
  quiet("qemu-img", ["create", "-q", "-f", "qcow2", small, "1G"]);
  const ca = env.NODE_EXTRA_CA_CERTS ?? ["/etc/ssl/certs/ca-certificates.crt"].find((f) => existsSync(f));
  const envs = [["", withoutCa], ...(ca ? [[", NODE_EXTRA_CA_CERTS set", { ...withoutCa, NODE_EXTRA_CA_CERTS: ca }]] : [])];
  for (const [label, e] of envs) {
    // One uncounted run first, so qimg's code cache (dist/compile-cache.cjs) exists, as on any later run.
    timed(bin("qimg"), ["info", small], e);
    const node = row(`node -e 0 vs qemu-img --version${label}`, { rounds, env: e, qemu: ["qemu-img", ["--version"]], ours: [process.execPath, ["-e", "0"]] });
    row(`qimg --version${label}`, { rounds, env: e, qemu: ["qemu-img", ["--version"]], ours: [bin("qimg"), ["--version"]] });
    const info = row(`qimg info, small qcow2${label}`, { rounds, env: e, qemu: ["qemu-img", ["info", small]], ours: [bin("qimg"), ["info", small]] });
    console.log(
      `  qimg info minus node -e 0${label}: ${(info.oursMs - node.oursMs).toFixed(1)} ms wall, ` +
        `${(info.oursCpuMs - node.oursCpuMs).toFixed(1)} ms CPU (issue 17's target: within 25 ms)`,
    );
  }
  rm("small.qcow2")();
  }

  function benchScale() {
  // A 4 TiB sparse image, 3000 clusters each under an L2 table of its own (written by qemu-io).
  const big = p("sparse4t.qcow2");
  quiet("qemu-img", ["create", "-q", "-f", "qcow2", big, "4T"]);
  const writes = [];
  for (let i = 0; i < 3000; i++) writes.push("-c", `write -P ${(i % 250) + 1} ${i * 2 * 512 * 1024 * 1024 + (i % 7) * 65536} 64k`);
  quiet("qemu-io", ["-f", "qcow2", ...writes, big]);
  row("check, 4 TiB sparse, 3000 clusters", { rounds, env: withoutCa, rss: true, qemu: ["qemu-img", ["check", big]], ours: [bin("qimg"), ["check", big]] });
  row("map --output=json, 4 TiB sparse", { rounds, env: withoutCa, rss: true, qemu: ["qemu-img", ["map", "--output=json", big]], ours: [bin("qimg"), ["map", "--output=json", big]] });
  row("convert -O qcow2, 4 TiB sparse", {
    rounds,
    env: withoutCa,
    rss: true,
    prepare: rm("bq.qcow2", "bo.qcow2"),
    qemu: ["qemu-img", ["convert", "-O", "qcow2", big, p("bq.qcow2")]],
    ours: [bin("qimg"), ["convert", "-O", "qcow2", big, p("bo.qcow2")]],
  });
  rm("sparse4t.qcow2", "bq.qcow2", "bo.qcow2")();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const opt = (name, fallback) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : fallback);
  const dir = mkdtempSync("/dev/shm/qcowkit-bench-scale-");
  try {
    console.log(`issue 17 rows on tmpfs (${dir}); ${Math.max(opt("--rounds", 7), 7)} paired rounds, medians\n`);
    const only = argv.includes("--only") ? argv[argv.indexOf("--only") + 1].split(",") : undefined;
    benchScaleStartup({ dir, rounds: opt("--rounds", 7), sizeMiB: opt("--size-mib", 256), ...(only ? { parts: only } : {}) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
