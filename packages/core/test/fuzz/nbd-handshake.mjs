#!/usr/bin/env node
/**
 * NBD handshake fuzzing (`pnpm fuzz --nbd-handshake [--cases N] [--seed S]`): the built qnbd serves a small qcow2
 * image on a Unix socket (`-t -e 0`, plus a TLS-only server for every fourth case); each case is a seeded,
 * well-formed client stream (flags, then options: STRUCTURED_REPLY, LIST, INFO/GO with info requests,
 * LIST/SET_META_CONTEXT, STARTTLS, EXPORT_NAME, ABORT, unknown ones, then a few requests) that is mutated (bit
 * flips, interesting 32-bit values over lengths and types, truncation, duplicated and inserted runs, junk) and
 * sent in random pieces; the client reads whatever comes back until the server closes or goes quiet.
 *
 * After every batch of cases a healthy client must complete a handshake and a 4 KiB read within 2 s (a
 * hang otherwise), the servers must still be running (a crash otherwise), and their RSS is sampled
 * (/proc/PID/status). Prints the figures; exits 1 on any crash or hang, or when a server grows past 300 MB.
 * Cases run 16 at a time; `--show SEED` prints one case's bytes.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { memoryMb, nbdConnect, nbdOption, nbdRequest, startQnbd, str, u16, u32 } from "../../../../scripts/attack/nbd-client.mjs";
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? Number(args[i + 1]) : fallback;
};
const cases = option("cases", 10000);
const firstSeed = option("seed", 1);
const parallel = 16;
const RSS_LIMIT_MB = 300;

/** mulberry32: a small seeded generator. */
function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n) => Math.floor(next() * n), pick: (list) => list[Math.floor(next() * list.length)] };
}

const option_ = nbdOption;
const request = nbdRequest;

/** A well-formed client stream for case `seed`, before mutation. */
function clientStream(r) {
  const parts = [u32(r.pick([1, 3, 3, 3, 2, 0]))];
  const exportName = r.pick(["", "", "disk", "x".repeat(r.int(300))]);
  const queries = () => {
    const q = r.pick([[], ["base:allocation"], ["qemu:"], ["qemu:allocation-depth", "base:"], ["qemu:dirty-bitmap:"]]);
    return Buffer.concat([str(exportName), u32(q.length), ...q.map(str)]);
  };
  const info = () => {
    const n = r.int(4);
    return Buffer.concat([str(exportName), u16(n), ...Array.from({ length: n }, () => u16(r.int(5)))]);
  };
  const count = 1 + r.int(8);
  let entered = false;
  for (let i = 0; i < count && !entered; i++) {
    switch (r.int(10)) {
      case 0: parts.push(option_(8)); break;
      case 1: parts.push(option_(3)); break;
      case 2: parts.push(option_(6, info())); break;
      case 3: parts.push(option_(9, queries())); break;
      case 4: parts.push(option_(10, queries())); break;
      case 5: parts.push(option_(5)); break;
      case 6: parts.push(option_(r.int(64) + 12, Buffer.alloc(r.int(40), r.int(256)))); break;
      case 7: parts.push(option_(2)); break;
      case 8: parts.push(option_(1, Buffer.from(exportName))); entered = true; break;
      default: parts.push(option_(7, info())); entered = true; break;
    }
  }
  if (entered) {
    for (let i = r.int(4); i > 0; i--) {
      const type = r.pick([0, 0, 1, 3, 4, 6, 7, 2]);
      const length = r.pick([512, 4096, 0, 65536]);
      parts.push(request(type, r.int(16) * 4096, length, r.pick([0, 0, 1, 2, 4, 8]), type === 1 ? Buffer.alloc(length, 0x5a) : undefined));
    }
  }
  return Buffer.concat(parts);
}

const interesting = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff, 0x2000000, 0x2000001, 4096];

function mutate(r, bytes) {
  let b = Buffer.from(bytes);
  const steps = 1 + r.int(4);
  for (let s = 0; s < steps; s++) {
    if (b.length === 0) break;
    const at = r.int(b.length);
    switch (r.int(7)) {
      case 0: b[at] ^= 1 << r.int(8); break;
      case 1: b[at] = r.int(256); break;
      case 2: if (at + 4 <= b.length) b.writeUInt32BE(r.pick(interesting) >>> 0, at); break;
      case 3: b = b.subarray(0, at); break;
      case 4: { const n = Math.min(b.length - at, 1 + r.int(64)); b = Buffer.concat([b.subarray(0, at + n), b.subarray(at, at + n), b.subarray(at + n)]); break; }
      case 5: b = Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + r.int(32) }, () => r.int(256))), b.subarray(at)]); break;
      default: { const n = 1 + r.int(8); b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + n))]); break; }
    }
  }
  return b;
}

function caseBytes(seed) {
  const r = rng(seed);
  const clean = clientStream(r);
  return { bytes: r.int(10) === 0 ? clean : mutate(r, clean), r };
}

/** Sends one case; resolves when the server closes, goes quiet for 300 ms, or after 3 s. */
function runCase(socketPath, seed) {
  const { bytes, r } = caseBytes(seed);
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    let quiet;
    const finish = () => {
      clearTimeout(quiet);
      clearTimeout(cap);
      s.destroy();
      resolve();
    };
    const cap = setTimeout(finish, 3000);
    const idle = () => {
      clearTimeout(quiet);
      quiet = setTimeout(finish, 300);
    };
    s.on("error", finish);
    s.on("close", finish);
    s.on("data", idle);
    s.on("connect", async () => {
      let at = 0;
      while (at < bytes.length && !s.destroyed) {
        const n = 1 + r.int(Math.max(1, Math.min(bytes.length - at, 512)));
        s.write(bytes.subarray(at, at + n));
        at += n;
        if (r.int(4) === 0) await new Promise((w) => setImmediate(w));
      }
      idle();
    });
  });
}

/** A healthy client: handshake with GO, then a 4 KiB read; true when done within 2 s. */
async function healthy(socketPath) {
  const deadline = new Promise((resolve) => setTimeout(() => resolve(false), 2000));
  const attempt = nbdConnect(socketPath, 2000).then(
    async (c) => {
      try {
        return (await c.read(0, 4096)).length === 4096;
      } finally {
        c.close();
      }
    },
    () => false,
  );
  return Promise.race([attempt, deadline]);
}

const rssMb = (pid) => memoryMb(pid).rss;

async function startServer(dir, name, extra) {
  const socketPath = join(dir, `${name}.sock`);
  const server = await startQnbd(["-t", "-e", "0", "-f", "qcow2", "-k", socketPath, ...extra, join(dir, `${name}.qcow2`)], socketPath);
  const pid = server.child.pid;
  return { child: server.child, socketPath, name, stderr: server.stderr, peak: rssMb(pid), start: rssMb(pid) };
}

if (args[0] === "--show") {
  for (const seed of args.slice(1).map(Number)) console.log(`seed ${seed}: ${caseBytes(seed).bytes.toString("hex")}`);
  process.exit(0);
}

const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : "/tmp", "qcowkit-fuzz-nbd-"));
let exitCode = 0;
try {
  for (const name of ["plain", "tls"]) {
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, `${name}.qcow2`), "64M"]);
    execFileSync("qemu-io", ["-c", "write -P 0x11 0 1M", join(dir, `${name}.qcow2`)], { stdio: "ignore" });
  }
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=localhost"], { stdio: "ignore" });
  const plain = await startServer(dir, "plain", []);
  // A TLS-only server: options before STARTTLS get TLS_REQD.
  const tls = await startServer(dir, "tls", ["-r", "--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem")]);
  const servers = [plain, tls];
  let crashes = 0;
  let hangs = 0;
  const started = Date.now();
  for (let base = 0; base < cases && crashes === 0; base += parallel) {
    const batch = [];
    for (let i = base; i < Math.min(cases, base + parallel); i++) {
      const seed = firstSeed + i;
      batch.push(runCase(seed % 4 === 3 ? tls.socketPath : plain.socketPath, seed));
    }
    await Promise.all(batch);
    for (const s of servers) {
      s.peak = Math.max(s.peak, rssMb(s.child.pid));
      if (s.child.exitCode !== null || s.child.signalCode !== null) {
        crashes++;
        console.log(`CRASH: qnbd (${s.name}) exited (${s.child.exitCode ?? s.child.signalCode}) in cases ${firstSeed + base}..${firstSeed + base + parallel - 1}: ${s.stderr().slice(-500)}`);
      }
    }
    if (crashes === 0 && !(await healthy(plain.socketPath))) {
      hangs++;
      console.log(`HANG: a healthy client was not served within 2 s after cases ${firstSeed + base}..${firstSeed + base + parallel - 1}`);
    }
    if ((base / parallel) % 100 === 0) {
      console.log(`nbd-handshake fuzz: ${Math.min(cases, base + parallel)}/${cases} cases, RSS plain ${plain.peak.toFixed(0)} MB, tls ${tls.peak.toFixed(0)} MB`);
    }
  }
  const seconds = (Date.now() - started) / 1000;
  for (const s of servers) s.child.kill("SIGTERM");
  const over = servers.filter((s) => s.peak > RSS_LIMIT_MB);
  console.log(
    `nbd-handshake fuzz: ${cases} cases from seed ${firstSeed} in ${seconds.toFixed(0)} s: ${crashes} crashes, ${hangs} hangs; ` +
      `peak RSS ${servers.map((s) => `${s.name} ${s.peak.toFixed(0)} MB (start ${s.start.toFixed(0)} MB)`).join(", ")}`,
  );
  if (crashes > 0 || hangs > 0 || over.length > 0) exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
