#!/usr/bin/env node
/**
 * Hostile NBD clients against the built qnbd (loopback Unix sockets only, each case bounded in time, a fresh
 * server per case so that its peak RSS, VmHWM, is that case's):
 *
 *   flood       options sent in a loop for FLOOD_SECONDS without reading a reply (plain, and a TLS-only
 *               server before STARTTLS): RSS growth must stay under 100 MB;
 *   budget      -e 0, 40 connections each asking for one 32 MiB READ and not reading, then 40 each sending a
 *               32 MiB WRITE header with its payload trickling: peak RSS under 300 MB;
 *   bomb        a qcow2 image whose zstd-compressed cluster declares 1 GiB in a 32 KiB frame; one client reads
 *               it in a loop while another times 4 KiB reads elsewhere: peak RSS under 300 MB, the other
 *               client's slowest read under 0.5 s.
 *
 * Prints one line per figure with its bound and PASS/FAIL; exits 1 if any fails. Timing figures depend on the
 * machine's load. Usage: node scripts/attack/nbd.mjs [--only NAME]
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { memoryMb, nbdConnect, nbdOption, nbdRequest, startQnbd } from "./nbd-client.mjs";

const FLOOD_SECONDS = 5;
const MiB = 1024 * 1024;
const only = process.argv.includes("--only") ? process.argv[process.argv.indexOf("--only") + 1] : undefined;
const results = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function report(name, value, unit, bound, ok) {
  results.push(ok);
  console.log(`nbd ${name}: ${value}${unit} (bound ${bound}${unit}) ${ok ? "PASS" : "FAIL"}`);
}

/** Runs `fn(server)` on a fresh qnbd; resolves with { start, peak } RSS in MB and fn's result. */
async function withServer(dir, name, args, fn) {
  const socketPath = join(dir, `${name}.sock`);
  const server = await startQnbd(["-t", "-k", socketPath, ...args], socketPath);
  try {
    await sleep(200);
    const start = memoryMb(server.child.pid).rss;
    const result = await fn(socketPath, server);
    const { peak } = memoryMb(server.child.pid);
    if (server.child.exitCode !== null) throw new Error(`qnbd exited during ${name}: ${server.stderr()}`);
    return { start, peak, result };
  } finally {
    server.stop();
  }
}

/** Resolves on "drain" or "close", or after 100 ms, leaving no listener behind. */
function writable(s) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      s.off("drain", done);
      s.off("close", done);
      resolve();
    };
    const timer = setTimeout(done, 100);
    s.once("drain", done);
    s.once("close", done);
  });
}

/**
 * Clients sending options as fast as the socket takes them, never reading a reply; a client the server drops
 * (the option cap) connects again at once.
 */
async function flood(socketPath, clients = 4) {
  const end = Date.now() + FLOOD_SECONDS * 1000;
  const burst = Buffer.concat(Array.from({ length: 64 }, (_, i) => nbdOption(i % 2 ? 3 : 6, i % 2 ? undefined : Buffer.from([0, 0, 0, 0, 0, 0]))));
  let connections = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (Date.now() < end) {
        const s = net.connect(socketPath);
        connections++;
        s.on("error", () => {});
        s.pause();
        const connected = await Promise.race([new Promise((r) => s.once("connect", () => r(true))), sleep(1000).then(() => false)]);
        if (connected) {
          s.write(Buffer.from([0, 0, 0, 3]));
          while (Date.now() < end && !s.destroyed && !s.writableEnded) {
            if (!s.write(burst)) await writable(s);
          }
        }
        s.destroy();
      }
    }),
  );
  return connections;
}

async function floodCase(dir, image) {
  const plain = await withServer(dir, "flood", ["-e", "0", "-r", "-f", "qcow2", image], (p) => flood(p));
  console.log(`nbd flood: ${plain.result} connections in ${FLOOD_SECONDS} s`);
  report("handshake flood RSS growth", (plain.peak - plain.start).toFixed(0), " MB", 100, plain.peak - plain.start < 100);
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=localhost"], { stdio: "ignore" });
  const tls = await withServer(dir, "flood-tls", ["-e", "0", "-r", "-f", "qcow2", "--tls-cert", join(dir, "cert.pem"), "--tls-key", join(dir, "key.pem"), image], (p) => flood(p));
  report("handshake flood before STARTTLS RSS growth", (tls.peak - tls.start).toFixed(0), " MB", 100, tls.peak - tls.start < 100);
}

/** `count` connections, each with one 32 MiB request in flight that it never completes reading. */
async function budgetCase(dir, image) {
  const big = 32 * MiB;
  const reads = await withServer(dir, "budget-read", ["-e", "0", "-r", "-f", "qcow2", image], async (socketPath) => {
    const clients = await Promise.all(Array.from({ length: 40 }, () => nbdConnect(socketPath)));
    for (const [i, c] of clients.entries()) {
      c.socket.pause();
      c.socket.write(nbdRequest(0, (i % 2) * big, big));
    }
    await sleep(3000);
    for (const c of clients) c.close();
  });
  report("40 x 32 MiB READ (-e 0) peak RSS", reads.peak.toFixed(0), " MB", 300, reads.peak < 300);
  const writes = await withServer(dir, "budget-write", ["-e", "0", "-f", "qcow2", join(dir, "scratch.qcow2")], async (socketPath) => {
    const clients = await Promise.all(Array.from({ length: 40 }, () => nbdConnect(socketPath)));
    const piece = Buffer.alloc(MiB, 0x5a);
    for (const [i, c] of clients.entries()) c.socket.write(nbdRequest(1, (i % 2) * big, big));
    // Payloads trickle in: 1 MiB per connection every 100 ms for 3 s.
    for (let t = 0; t < 30; t++) {
      for (const c of clients) c.socket.write(piece);
      await sleep(100);
    }
    for (const c of clients) c.close();
  });
  report("40 x 32 MiB WRITE (-e 0) peak RSS", writes.peak.toFixed(0), " MB", 300, writes.peak < 300);
}

/**
 * A qcow2 image (64 KiB clusters, zstd) whose first cluster is compressed, then repointed to a zstd frame that
 * declares 1 GiB of content and holds it as 8192 RLE blocks of 128 KiB (32 KiB in all). The rest of the image
 * (from 1 MiB) is plain data for the other client.
 */
function zstdBombImage(path) {
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd,cluster_size=65536", path, "64M"]);
  execFileSync("qemu-io", ["-c", "write -c -P 0x41 0 64k", "-c", "write -P 0x42 1M 1M", path], { stdio: "ignore" });
  const bytes = readFileSync(path);
  const l1 = Number(bytes.readBigUInt64BE(40));
  const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  const entry = bytes.readBigUInt64BE(l2);
  if ((entry & (1n << 62n)) === 0n) throw new Error("the first cluster is not compressed");
  const frame = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), Buffer.from([0xa0]), Buffer.alloc(4)];
  // Frame header descriptor 0xa0: 4-byte content size, single segment (no window descriptor).
  frame[2].writeUInt32LE(2 ** 30);
  const block = (last) => {
    const header = (128 * 1024) << 3 | (1 << 1) | (last ? 1 : 0); // RLE block of 128 KiB
    return Buffer.from([header & 0xff, (header >> 8) & 0xff, (header >> 16) & 0xff, 0x41]);
  };
  for (let i = 0; i < 8192; i++) frame.push(block(i === 8191));
  const data = Buffer.concat(frame);
  const at = Math.ceil(bytes.length / 512) * 512;
  const sectors = Math.ceil(data.length / 512);
  // cluster_bits 16: the sector count (minus one) sits in bits 54..61, the offset below.
  const descriptor = (1n << 62n) | (BigInt(sectors - 1) << 54n) | BigInt(at);
  const out = Buffer.concat([bytes, Buffer.alloc(at - bytes.length), data, Buffer.alloc(sectors * 512 - data.length)]);
  out.writeBigUInt64BE(descriptor, l2);
  writeFileSync(path, out);
}

async function bombCase(dir) {
  const image = join(dir, "bomb.qcow2");
  zstdBombImage(image);
  const run = await withServer(dir, "bomb", ["-e", "0", "-r", "-f", "qcow2", image], async (socketPath) => {
    const attacker = await nbdConnect(socketPath);
    const victim = await nbdConnect(socketPath);
    let stop = false;
    let bombReads = 0;
    let bombErrors = 0;
    const attack = (async () => {
      while (!stop) {
        try {
          await attacker.read(0, 64 * 1024);
        } catch {
          bombErrors++;
        }
        bombReads++;
      }
    })();
    let slowest = 0;
    const end = Date.now() + 4000;
    while (Date.now() < end) {
      const t = process.hrtime.bigint();
      await victim.read(MiB + Math.floor(Math.random() * 256) * 4096, 4096);
      slowest = Math.max(slowest, Number(process.hrtime.bigint() - t) / 1e9);
      await sleep(20);
    }
    stop = true;
    await Promise.race([attack, sleep(5000)]);
    attacker.close();
    victim.close();
    return { slowest, bombReads, bombErrors };
  });
  console.log(`nbd bomb: ${run.result.bombReads} reads of the bomb cluster (${run.result.bombErrors} answered with an error)`);
  report("zstd bomb read peak RSS", run.peak.toFixed(0), " MB", 300, run.peak < 300);
  report("other client's slowest 4 KiB read during bomb reads", run.result.slowest.toFixed(3), " s", 0.5, run.result.slowest < 0.5);
}

const dir = mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : "/tmp", "qcowkit-attack-nbd-"));
try {
  const image = join(dir, "disk.qcow2");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", image, "128M"]);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "scratch.qcow2"), "128M"]);
  execFileSync("qemu-io", ["-c", "write -P 0x11 0 64M", image], { stdio: "ignore" });
  if (!only || only === "flood") await floodCase(dir, image);
  if (!only || only === "budget") await budgetCase(dir, image);
  if (!only || only === "bomb") await bombCase(dir);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(results.every(Boolean) ? 0 : 1);
