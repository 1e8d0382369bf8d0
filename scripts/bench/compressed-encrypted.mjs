// Benchmark rows for compressed and encrypted images, run by scripts/bench.mjs (its `run`, `ours` and
// median helpers are passed in):
//   - qimg convert -c vs qemu-img convert -c, zlib and zstd, on compressible (text-like) and incompressible
//     (random) data: time and output size;
//   - qio vs qemu-io writes on a LUKS image (aes-xts-plain64, QEMU's default), 4 MiB requests, and the
//     unlock alone (a 512-byte read).
// Each row: one uncounted warm-up per tool, then `rounds` paired rounds (the order alternates), each round
// timing QEMU twice and qcowkit once. Reported: medians, qcowkit's min-max, the ratio (QEMU time / qcowkit
// time: >= 1 means qcowkit is at least as fast) and the noise band, the min-max of QEMU's two runs' ratio in
// the same rounds (a ratio inside it cannot be told from QEMU against itself).
import { spawnSync } from "node:child_process";
import { copyFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { join } from "node:path";
import { pairedRounds } from "./paired.mjs";

/** Text-like data: words from a seeded vocabulary of 400 (zlib takes it to about a third). */
function textData(byteLength, seed) {
  let a = seed >>> 0;
  const r = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const words = Array.from({ length: 400 }, () =>
    Array.from({ length: 2 + Math.floor(r() * 9) }, () => String.fromCharCode(97 + Math.floor(r() * 26))).join(""),
  );
  const out = Buffer.alloc(byteLength);
  let at = 0;
  while (at < byteLength) at += out.write(`${words[Math.floor(r() * words.length)]}${r() < 0.1 ? ".\n" : " "}`, at);
  return out;
}

export async function benchCompressedEncrypted({ dir, rounds, run, ours, median, mib = 128 }) {
  const p = (n) => join(dir, n);
  const bytes = mib * 1024 * 1024;
  const mibs = (ms) => `${(bytes / 1048576 / (ms / 1000)).toFixed(0)} MiB/s`;
  const rows = [];

  /** Paired, alternating rounds; `prepare` runs before every run. */
  async function paired(title, prepare, qemuCmd, oursCmd, sizes) {
    const t = await pairedRounds({ rounds, run, median, prepare, qemuCmd, oursCmd });
    const { o, qemuMs: qm, oursMs: om } = t;
    const noise = t.noise;
    const size = sizes ? sizes() : undefined;
    const sizeText = size ? `   size qemu ${(size.qemu / 1048576).toFixed(1)} MiB, qcowkit ${(size.ours / 1048576).toFixed(1)} MiB (${((size.ours / size.qemu) * 100).toFixed(1)} %)` : "";
    console.log(
      `${title.padEnd(40)} qemu ${mibs(qm).padStart(10)}   qcowkit ${mibs(om).padStart(10)} ` +
        `(${mibs(Math.max(...o))}-${mibs(Math.min(...o))})   ratio ${(qm / om).toFixed(2)}x   ` +
        `noise ${Math.min(...noise).toFixed(2)}-${Math.max(...noise).toFixed(2)}x${sizeText}`,
    );
    rows.push({ title, qemuMs: qm, oursMs: om, ratio: qm / om, noise: [Math.min(...noise), Math.max(...noise)], size });
  }

  const text = p("text.raw");
  writeFileSync(text, textData(bytes, 1));
  const random = p("random.raw");
  const buf = Buffer.alloc(bytes);
  randomFillSync(buf);
  writeFileSync(random, buf);
  const rm = (...names) => () => names.forEach((n) => rmSync(p(n), { force: true }));

  for (const type of ["zlib", "zstd"]) {
    for (const [label, src] of [["text", text], ["random", random]]) {
      const args = (out) => ["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", `compression_type=${type}`, src, out];
      await paired(
        `convert -c ${type}, ${label} (${mib} MiB)`,
        rm("cq.qcow2", "co.qcow2"),
        ["qemu-img", args(p("cq.qcow2"))],
        ours("qimg", args(p("co.qcow2"))),
        () => {
          // The last runs' outputs: make both again (the last run of a round may have been either tool's).
          rm("cq.qcow2", "co.qcow2")();
          return { qemu: statSizeOf(["qemu-img", args(p("cq.qcow2"))], p("cq.qcow2")), ours: statSizeOf(ours("qimg", args(p("co.qcow2"))), p("co.qcow2")) };
        },
      );
    }
  }
  rm("text.raw", "random.raw", "cq.qcow2", "co.qcow2")();

  // LUKS: one image made by qemu-img, copied afresh before every run; the same writes for both tools.
  const secret = ["--object", "secret,id=sec0,data=bench-secret"];
  const luks = p("luks.qcow2");
  spawnQuiet("qemu-img", ["create", "-q", "-f", "qcow2", ...secret, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100", luks, `${mib}M`]);
  const writes = [];
  for (let off = 0; off < bytes; off += 4 * 1024 * 1024) writes.push("-c", `write -P 0x5a ${off} 4M`);
  const luksArgs = (img) => [...secret, "--image-opts", ...writes, `driver=qcow2,file.filename=${img},encrypt.key-secret=sec0`];
  await paired(
    `qio writes on LUKS aes-xts (${mib} MiB, 4M)`,
    () => {
      copyFileSync(luks, p("lq.qcow2"));
      copyFileSync(luks, p("lo.qcow2"));
    },
    ["qemu-io", luksArgs(p("lq.qcow2"))],
    ours("qio", luksArgs(p("lo.qcow2"))),
  );
  // The unlock alone (one 512-byte read, read-only): PBKDF2 over the key slot's iterations (QEMU sized them to
  // take iter-time=100 ms with its own PBKDF2), the key splitter, the master key's digest. Part of every row
  // above; shown so that the write row's ratio can be read as unlock plus writes.
  const unlockArgs = (img) => [...secret, "--image-opts", "-r", "-c", "read 0 512", `driver=qcow2,file.filename=${img},encrypt.key-secret=sec0`];
  const u = await pairedRounds({ rounds, run, median, prepare: () => undefined, qemuCmd: ["qemu-io", unlockArgs(luks)], oursCmd: ours("qio", unlockArgs(luks)) });
  console.log(
    `${"qio open of that LUKS image (unlock)".padEnd(40)} qemu ${`${u.qemuMs.toFixed(0)} ms`.padStart(10)}   qcowkit ${`${u.oursMs.toFixed(0)} ms`.padStart(10)} ` +
      `(${Math.min(...u.o).toFixed(0)}-${Math.max(...u.o).toFixed(0)} ms)   ratio ${(u.qemuMs / u.oursMs).toFixed(2)}x   ` +
      `noise ${Math.min(...u.noise).toFixed(2)}-${Math.max(...u.noise).toFixed(2)}x`,
  );
  rows.push({ title: "qio open of that LUKS image (unlock)", qemuMs: u.qemuMs, oursMs: u.oursMs, ratio: u.qemuMs / u.oursMs, noise: [Math.min(...u.noise), Math.max(...u.noise)] });
  rm("luks.qcow2", "lq.qcow2", "lo.qcow2")();
  return rows;

  function statSizeOf(cmd, out) {
    spawnQuiet(cmd[0], cmd[1]);
    return statSync(out).size;
  }
}

function spawnQuiet(cmd, args) {
  // qemu-img gives up timing PBKDF2 for a LUKS header when its CPU clock did not move (busy machine): again.
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync(cmd, args, { encoding: "utf8" });
    if (r.status === 0) return;
    if (attempt >= 5 || !r.stderr.includes("Unable to get accurate CPU usage")) {
      throw new Error(`${cmd} ${args.slice(0, 6).join(" ")}… exited ${r.status}: ${r.stderr}`);
    }
  }
}
