/**
 * SIGKILL of a writing qio: qio runs a long script of writes and flushes on a file image and is killed at a
 * random point. Afterwards the image opens (a dirty lazy-refcount image is repaired by a read-write open, as
 * QEMU does), `qimg check` and `qemu-img check` find no corruption (leaks allowed), and every write that
 * completed before the last completed flush reads back.
 *
 * QCOWKIT_CRASH_LONG=1 runs more kills.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openImage } from "@qcowkit/core/node";
import { QIO, ok, qemuImg, qimg, qio, subDir, tempDir } from "./helpers";

const dir = tempDir("qimg-sigkill-");
const long = process.env.QCOWKIT_CRASH_LONG === "1";

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Op = { kind: "write"; offset: number; length: number; pattern: number } | { kind: "flush" };

function script(seed: number, size: number, count: number): Op[] {
  const r = rng(seed);
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const length = 512 * (1 + Math.floor(r() * 128));
    const offset = 512 * Math.floor(r() * ((size - length) / 512));
    ops.push({ kind: "write", offset, length, pattern: 1 + (i % 254) });
    if (i % 4 === 3) ops.push({ kind: "flush" });
  }
  return ops;
}

/** Run qio on `file` with the script; kill it with SIGKILL after `killAfter` acknowledged writes. */
async function runAndKill(file: string, ops: Op[], killAfter: number): Promise<number> {
  const args = ops.flatMap((op) => ["-c", op.kind === "flush" ? "flush" : `write -P ${op.pattern} ${op.offset} ${op.length}`]);
  const child = spawn(process.execPath, [QIO, "-f", "qcow2", ...args, file], { stdio: ["ignore", "pipe", "pipe"] });
  // Each completed write prints "wrote N/N bytes at offset X" (flushes print nothing).
  let acknowledged = 0;
  let pending = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => {
    pending += chunk;
    const lines = pending.split("\n");
    pending = lines.pop()!;
    for (const line of lines) {
      if (!line.startsWith("wrote ")) continue;
      if (++acknowledged === killAfter) child.kill("SIGKILL");
    }
  });
  await new Promise((resolve) => child.once("exit", resolve));
  return acknowledged;
}

describe("SIGKILL of a writing qio", () => {
  const variants: Array<[string, string[]]> = [
    ["64 KiB clusters", []],
    ["lazy refcounts", ["-o", "lazy_refcounts=on"]],
    ["4 KiB clusters", ["-o", "cluster_size=4096"]],
    ["external data file", ["-o", "data_file=DATA,cluster_size=8192"]],
  ];
  const kills = long ? 12 : 2;
  for (const [name, opts] of variants) {
    it(name, { timeout: 600_000 }, async () => {
      for (let k = 0; k < kills; k++) {
        const seed = 17 + k * 31 + name.length;
        const sub = subDir(dir, `${name.replace(/\W/g, "")}-${k}`);
        const file = path.join(sub, "t.qcow2");
        const size = 16 * 1024 * 1024;
        await ok(qemuImg(["create", "-q", "-f", "qcow2", ...opts.map((o) => o.replace("DATA", path.join(sub, "t.raw"))), file, String(size)]));
        const ops = script(seed, size, 400);
        const killAfter = 5 + Math.floor(rng(seed)() * 300);
        const acknowledged = await runAndKill(file, ops, killAfter);
        // Lines already on their way count too: the kill lands a little after the killAfter-th write.
        expect(acknowledged, "qio was killed while it was writing").toBeGreaterThanOrEqual(killAfter);
        expect(acknowledged).toBeLessThan(400);
        // A flush completed when the write after it was acknowledged: the writes before the last such flush
        // are durable; later ones may or may not have reached the disk.
        let lastFlush = -1;
        let writes = 0;
        for (const [i, op] of ops.entries()) {
          if (op.kind === "write" && ++writes > acknowledged) break;
          if (op.kind === "flush" && writes < acknowledged) lastFlush = i;
        }
        const durable = ops.filter((op, i) => op.kind === "write" && i < lastFlush);
        const maybe = ops.filter((op, i) => op.kind === "write" && i > lastFlush);
        // A dirty image is repaired by a read-write open (as QEMU does); then both checks must be clean.
        const opened = await qio(["-f", "qcow2", "-c", "read 0 512", file]);
        expect(opened.code, opened.stderr).toBe(0);
        const ours = await qimg(["check", file]);
        expect([0, 3], `${name} kill ${k}: ${ours.stdout}${ours.stderr}`).toContain(ours.code);
        const theirs = await qemuImg(["check", file]);
        expect([0, 3], `${name} kill ${k}: ${theirs.stdout}${theirs.stderr}`).toContain(theirs.code);
        // Every byte written before the last completed flush reads back (or was overwritten by a later write).
        const image = await openImage(file, { readOnly: true, format: "qcow2" });
        try {
          const model = new Uint8Array(size);
          const touched = new Uint8Array(size);
          for (const op of durable) if (op.kind === "write") model.fill(op.pattern, op.offset, op.offset + op.length);
          for (const op of maybe) if (op.kind === "write") touched.fill(1, op.offset, op.offset + op.length);
          const got = new Uint8Array(size);
          await image.read(0, got);
          let bad = -1;
          for (let i = 0; i < size; i++) {
            if (touched[i]) continue;
            if (got[i] !== model[i]) {
              bad = i;
              break;
            }
          }
          expect(bad, `${name} kill ${k}: byte ${bad} reads ${got[bad]}, flushed ${model[bad]}`).toBe(-1);
        } finally {
          await image.close();
        }
        fs.rmSync(sub, { recursive: true, force: true });
      }
    });
  }
});
