#!/usr/bin/env node
// Benchmark: qimg convert against qemu-img convert on a 1 GiB image in /dev/shm (raw -> qcow2 and qcow2 -> raw).
// Runs alternate between the two tools; prints the median and best wall time of each and the speed ratio, and
// qimg's peak RSS. Usage: node apps/cli/bench/convert.mjs [runs=5] [size_MiB=1024]
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const runs = Number(process.argv[2] ?? 5);
const sizeMiB = Number(process.argv[3] ?? 1024);
const qimg = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "bin", "qimg.js");
const dir = fs.mkdtempSync("/dev/shm/qimg-bench-");
const src = path.join(dir, "src.raw");
const srcQcow2 = path.join(dir, "src.qcow2");
try {
  // Random data (incompressible, no zero runs) made quickly: a random 1 MiB block with a counter per block.
  const block = new Uint8Array(1 << 20);
  crypto.getRandomValues(block.subarray(0, 65536));
  for (let i = 65536; i < block.length; i += 65536) block.set(block.subarray(0, 65536), i);
  const fd = fs.openSync(src, "w");
  for (let i = 0; i < sizeMiB; i++) {
    new DataView(block.buffer).setUint32(0, i + 1);
    for (let j = 4096; j < block.length; j += 4096) new DataView(block.buffer).setUint32(j, (i << 8) | (j >> 12) | 1);
    fs.writeSync(fd, block, 0, block.length, i * block.length);
  }
  fs.closeSync(fd);
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", src, srcQcow2]);

  const time = (cmd, args) => {
    const start = process.hrtime.bigint();
    const r = spawnSync("/usr/bin/time", ["-f", "%M", cmd, ...args], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")}: ${r.stderr}`);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const rssKiB = Number(r.stderr.trim().split("\n").pop());
    return { seconds, rssKiB };
  };
  const cases = [
    ["raw -> qcow2", ["-f", "raw", "-O", "qcow2", src], "out.qcow2"],
    ["qcow2 -> raw", ["-f", "qcow2", "-O", "raw", srcQcow2], "out.raw"],
  ];
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const [name, args, out] of cases) {
    const q = [];
    const o = [];
    let rss = 0;
    for (let i = 0; i < runs; i++) {
      for (const who of ["qemu", "qimg"]) {
        const target = path.join(dir, out);
        fs.rmSync(target, { force: true });
        const r = who === "qemu" ? time("qemu-img", ["convert", ...args, target]) : time(process.execPath, [qimg, "convert", ...args, target]);
        (who === "qemu" ? q : o).push(r.seconds);
        if (who === "qimg") rss = Math.max(rss, r.rssKiB);
      }
    }
    const mq = median(q);
    const mo = median(o);
    console.log(
      `${name}: qemu-img median ${mq.toFixed(3)} s (best ${Math.min(...q).toFixed(3)}), qimg median ${mo.toFixed(3)} s ` +
        `(best ${Math.min(...o).toFixed(3)}); qimg speed ${(mq / mo).toFixed(2)}x qemu-img; qimg peak RSS ${(rss / 1024).toFixed(0)} MiB`,
    );
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
