#!/usr/bin/env node
/**
 * Hostile images for the attack measurement (issue 13): decompression bombs planted in qcow2 images made by
 * qemu-img, read by qio and converted by qimg, side by side with qemu-io and qemu-img. For each run it prints
 * the exit code, the first line of stderr, the wall time and the peak RSS (from /usr/bin/time), and it fails
 * when a qcowkit process goes above the RSS limit (300 MB) or past its time limit.
 *
 *   node scripts/attack/images.mjs [--limit-mb 300]     (after npm run setup; no network; about a minute)
 *
 * The builders are exported for the tests and for scripts/attack/run.mjs:
 *   zstdRleFrame, deflateZeros, plantCompressed, buildBombImages, runImageAttacks.
 * Timings are wall-clock figures on a shared machine: read them as orders of magnitude.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * A zstd frame of RLE blocks (128 KiB each) that decodes to `total` bytes of `byte`, about 4 bytes per block:
 * 1 GiB fits in 32 KiB. `declared`: the content size written in the header (a number, or undefined for none).
 */
export function zstdRleFrame(total, { declared = total, byte = 0 } = {}) {
  const block = 128 * 1024;
  const blocks = Math.max(1, Math.ceil(total / block));
  const head = declared === undefined ? 6 : 14;
  const out = new Uint8Array(head + blocks * 4);
  const view = new DataView(out.buffer);
  view.setUint32(0, 0xfd2fb528, true);
  // Frame header descriptor: 8-byte content size (flag 3) or none (flag 0); a window descriptor (2^17).
  out[4] = declared === undefined ? 0x00 : 0xc0;
  out[5] = 7 << 3;
  if (declared !== undefined) view.setBigUint64(6, BigInt(declared), true);
  let at = head;
  for (let i = 0, left = total; i < blocks; i++) {
    const size = Math.min(block, left);
    left -= size;
    const header = (size << 3) | (1 << 1) | (i === blocks - 1 ? 1 : 0);
    out[at] = header & 0xff;
    out[at + 1] = (header >>> 8) & 0xff;
    out[at + 2] = (header >>> 16) & 0xff;
    out[at + 3] = byte;
    at += 4;
  }
  return out;
}

/**
 * A raw deflate stream of `total` zero bytes at deflate's highest ratio (about 1:1030): one dynamic block whose
 * codes give the 258-byte length and distance 1 one bit each, so every match costs 2 bits.
 */
export function deflateZeros(total) {
  const matches = Math.max(0, Math.floor((total - 1) / 258));
  const literals = total - matches * 258;
  const bytes = new Uint8Array(Math.ceil((200 + matches * 2 + literals * 2) / 8) + 1);
  let bit = 0;
  const put = (value, n) => {
    for (let i = 0; i < n; i++, bit++) if ((value >>> i) & 1) bytes[bit >>> 3] |= 1 << (bit & 7);
  };
  // Huffman codes go out most significant bit first.
  const code = (value, n) => {
    for (let i = n - 1; i >= 0; i--) put((value >>> i) & 1, 1);
  };
  put(1, 1); // final block
  put(2, 2); // dynamic codes
  put(286 - 257, 5); // literal/length codes 0..285
  put(0, 5); // one distance code
  put(18 - 4, 4); // 18 code length code lengths, in their stored order:
  for (const sym of [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1]) put([0, 1, 2, 18].includes(sym) ? 2 : 0, 3);
  // Code length codes (all 2 bits): 0 -> 00, 1 -> 01, 2 -> 10, 18 -> 11 (+7 bits: a run of 11..138 zeros).
  const zeros = (n) => {
    for (; n > 0; ) {
      const run = Math.min(138, n);
      code(3, 2);
      put(run - 11, 7);
      n -= run;
    }
  };
  code(2, 2); // literal 0: 2 bits
  zeros(255); // literals 1..255: none
  code(2, 2); // end of block: 2 bits
  zeros(28); // lengths 257..284: none
  code(1, 2); // length 285 (258 bytes): 1 bit
  code(1, 2); // distance 0 (distance 1): 1 bit
  // Literal/length codes: 285 -> 0, 0 -> 10, 256 -> 11; distance code: 0 -> 0.
  for (let i = 0; i < literals; i++) {
    code(2, 2);
    if (i === 0) bit += matches * 2; // each match is the bits 0 0, already zero in the buffer
  }
  code(3, 2); // end of block
  return bytes.subarray(0, Math.ceil(bit / 8));
}

/** The largest `deflateZeros` total whose stream fits in `bytes`. */
export function deflateZerosFitting(bytes) {
  return Math.floor((bytes * 8 - 220) / 2) * 258 + 1;
}

/**
 * Point guest clusters of the qcow2 image at `path` at compressed payloads appended to the file. Each guest
 * cluster must already have an L2 table (write it first, e.g. with qemu-io). `payloads`: [guestOffset, bytes].
 * Refcounts are not updated: QEMU and qcowkit read such clusters all the same (check reports leaks).
 */
export function plantCompressed(path, payloads) {
  let file = new Uint8Array(readFileSync(path));
  const view = () => new DataView(file.buffer, file.byteOffset, file.byteLength);
  const clusterBits = view().getUint32(20);
  const clusterSize = 2 ** clusterBits;
  const l1Offset = Number(view().getBigUint64(40));
  const extendedL2 = view().getUint32(4) >= 3 && (view().getBigUint64(72) & 16n) !== 0n;
  const entryBytes = extendedL2 ? 16 : 8;
  const perL2 = clusterSize / entryBytes;
  const offsetBits = 62 - (clusterBits - 8);
  const appended = [];
  let end = Math.ceil(file.byteLength / 512) * 512;
  const entries = [];
  for (const [guestOffset, payload] of payloads) {
    const guestCluster = Math.floor(guestOffset / clusterSize);
    const l2Offset = Number(view().getBigUint64(l1Offset + Math.floor(guestCluster / perL2) * 8) & 0x00fffffffffffe00n);
    if (l2Offset === 0) throw new Error(`plantCompressed: guest offset ${guestOffset} has no L2 table`);
    const sectors = Math.ceil(payload.byteLength / 512);
    if (sectors > 2 ** (clusterBits - 8)) throw new Error(`plantCompressed: payload of ${payload.byteLength} bytes is too large for the cluster size`);
    entries.push([l2Offset + (guestCluster % perL2) * entryBytes, (1n << 62n) | (BigInt(sectors - 1) << BigInt(offsetBits)) | BigInt(end)]);
    appended.push([end, payload]);
    end += sectors * 512;
  }
  const grown = new Uint8Array(end);
  grown.set(file);
  file = grown;
  for (const [at, payload] of appended) file.set(payload, at);
  for (const [at, entry] of entries) {
    view().setBigUint64(at, entry);
    if (extendedL2) view().setBigUint64(at + 8, 0n);
  }
  writeFileSync(path, file);
}

function sh(tool, args) {
  const r = spawnSync(tool, args, { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${tool} ${args.join(" ")}: ${r.stderr.trim()}`);
}

/**
 * Build the bomb images in `dir`: each is a qcow2 image of `clusters` compressed clusters (64 KiB, or 2 MiB
 * for the "-2M" ones), every one a bomb of its kind. Returns [{ name, path, size, expect }], `expect` being
 * QEMU's verdict on reading it ("error" or "ok").
 */
export function buildBombImages(dir, { clusters = 16 } = {}) {
  const kinds = [
    // zstd: a 32 KiB frame that declares and holds 1 GiB; one that holds 1 GiB without declaring it; one that
    // declares 2^32 + 64 KiB (whose low 32 bits are the cluster size) and holds a cluster.
    { name: "zstd-declared-1G", type: "zstd", cs: 65536, payload: () => zstdRleFrame(2 ** 30), expect: "error" },
    { name: "zstd-undeclared-1G", type: "zstd", cs: 65536, payload: () => zstdRleFrame(2 ** 30, { declared: undefined }), expect: "error" },
    { name: "zstd-wrapped-size", type: "zstd", cs: 65536, payload: () => zstdRleFrame(65536, { declared: 2 ** 32 + 65536 }), expect: "error" },
    { name: "zstd-declared-1G-2M", type: "zstd", cs: 2 ** 21, payload: () => zstdRleFrame(2 ** 30), expect: "error" },
    // zlib: as much zero output as the descriptor can hold (128 KiB of stream for 64 KiB clusters: ~135 MB
    // of output; 4 MiB for 2 MiB clusters: ~4.3 GB). QEMU reads the first cluster's worth: zeros.
    { name: "zlib-bomb", type: "zlib", cs: 65536, payload: () => deflateZeros(deflateZerosFitting(2 * 65536)), expect: "ok" },
    { name: "zlib-bomb-2M", type: "zlib", cs: 2 ** 21, payload: () => deflateZeros(deflateZerosFitting(2 * 2 ** 21)), expect: "ok" },
  ];
  const images = [];
  for (const k of kinds) {
    const path = join(dir, `${k.name}.qcow2`);
    const size = clusters * k.cs;
    sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${k.cs},compression_type=${k.type}`, path, String(size)]);
    // One plain write makes the L2 table; the clusters are then pointed at the bombs.
    sh("qemu-io", ["-c", `write -P 1 0 ${k.cs}`, path]);
    const payload = k.payload();
    plantCompressed(path, Array.from({ length: clusters }, (_, i) => [i * k.cs, payload]));
    images.push({ name: k.name, path, size, expect: k.expect });
  }
  return images;
}

/** Run a command under /usr/bin/time: exit code, first stderr line (else stdout's), peak RSS (MB), wall time (s). */
function measured(cmd, args, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const child = spawn("/usr/bin/time", ["-f", "RSS_KB %M", cmd, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    let stdout = "";
    child.stdout.on("data", (d) => {
      if (stdout.length < 65536) stdout += d;
    });
    child.stderr.on("data", (d) => {
      if (stderr.length < 65536) stderr += d;
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const rss = /RSS_KB (\d+)/.exec(stderr);
      const lines = stderr.split("\n").filter((l) => l && !l.startsWith("RSS_KB") && !l.startsWith("Command exited"));
      resolve({
        code: timedOut ? "timeout" : code,
        message: lines[0] ?? stdout.split("\n")[0] ?? "",
        rssMB: rss ? Number(rss[1]) / 1024 : NaN,
        seconds,
      });
    });
  });
}

/**
 * Read every bomb image with qio (read of the whole image) and qimg convert (to raw), and the same with
 * qemu-io and qemu-img; returns one row per run. `log` receives the table lines as they come.
 */
export async function runImageAttacks({ limitMB = 300, timeoutMs = 60_000, log = console.log, dir } = {}) {
  if (!existsSync("/usr/bin/time")) throw new Error("attack: /usr/bin/time is needed (apt-get install time)");
  const bin = (name) => join(root, "apps", "cli", "bin", `${name}.js`);
  for (const b of ["qimg", "qio"]) if (!existsSync(bin(b))) throw new Error(`attack: ${b} not built; run npm run setup first`);
  const work = dir ?? mkdtempSync(join(existsSync("/dev/shm") ? "/dev/shm" : tmpdir(), "qcowkit-attack-"));
  const rows = [];
  const differ = [];
  try {
    const images = buildBombImages(work);
    log(`image attacks (limit ${limitMB} MB RSS per qcowkit process; wall times on a shared machine are rough)`);
    log(["image", "tool", "exit", "peak RSS MB", "seconds", "message"].join("\t"));
    for (const img of images) {
      const out = join(work, "out.raw");
      const runs = [
        ["qio", process.execPath, [bin("qio"), "-r", "-f", "qcow2", "-c", `read 0 ${img.size}`, img.path]],
        ["qemu-io", "qemu-io", ["-r", "-f", "qcow2", "-c", `read 0 ${img.size}`, img.path]],
        ["qimg convert", process.execPath, [bin("qimg"), "convert", "-f", "qcow2", "-O", "raw", img.path, out]],
        ["qemu-img convert", "qemu-img", ["convert", "-f", "qcow2", "-O", "raw", img.path, out]],
      ];
      for (const [tool, cmd, args] of runs) {
        rmSync(out, { force: true });
        const r = await measured(cmd, args, timeoutMs);
        // qemu-io reports a failed read on stdout (and exits 1): the message column shows that line.
        const row = { image: img.name, tool, ours: !tool.startsWith("qemu"), ...r };
        rows.push(row);
        log([img.name, tool, String(r.code), r.rssMB.toFixed(1), r.seconds.toFixed(2), r.message.slice(0, 80)].join("\t"));
      }
      // Our exit codes against QEMU's on the same image (qio vs qemu-io, qimg convert vs qemu-img convert).
      const [qio, qemuIo, convert, qemuConvert] = rows.slice(-4);
      if (qio.code !== qemuIo.code || convert.code !== qemuConvert.code) differ.push(img.name);
    }
  } finally {
    if (!dir) rmSync(work, { recursive: true, force: true });
  }
  const over = rows.filter((r) => r.ours && (r.code === "timeout" || !(r.rssMB < limitMB)));
  return { rows, over, differ, maxOursMB: Math.max(...rows.filter((r) => r.ours).map((r) => r.rssMB)) };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const argv = process.argv.slice(2);
  const limitMB = argv.includes("--limit-mb") ? Number(argv[argv.indexOf("--limit-mb") + 1]) : 300;
  const { over, differ, maxOursMB } = await runImageAttacks({ limitMB });
  console.log(`image attacks: highest qcowkit peak RSS ${maxOursMB.toFixed(1)} MB (limit ${limitMB} MB)`);
  console.log(differ.length ? `exit codes differ from QEMU's on: ${differ.join(", ")}` : "exit codes: as QEMU's on every image");
  if (over.length) {
    for (const r of over) console.log(`OVER LIMIT: ${r.tool} on ${r.image}: ${r.code === "timeout" ? "timed out" : `${r.rssMB.toFixed(1)} MB`}`);
    process.exit(1);
  }
}
