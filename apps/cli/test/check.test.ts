/**
 * qimg check against qemu-img check 7.2: the same stdout (human and JSON), stderr and exit code on clean and
 * damaged images, with and without -r leaks|all, on copies of one image (the repaired files must then be the
 * same too); option errors, raw images (63), lock conflicts (with QEMU's hint line), and --safe.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { normalizeQemu, ok, qemuImg, qemuIo, qimg, qio, subDir, tempDir, type Run } from "./helpers";

const dir = tempDir("qimg-check-");

function peek(file: string, offset: number, width = 8): bigint {
  const b = fs.readFileSync(file);
  let v = 0n;
  for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(b[offset + i] ?? 0);
  return v;
}

function poke(file: string, offset: number, width: number, value: bigint | number): void {
  const bytes = new Uint8Array(width);
  let v = BigInt(value);
  for (let i = width - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  const fd = fs.openSync(file, "r+");
  fs.writeSync(fd, bytes, 0, width, offset);
  fs.closeSync(fd);
}

/** Set the 16-bit refcount of host cluster `cluster` (64 KiB clusters, first refcount block). */
function setRefcount(file: string, cluster: number, value: number): void {
  const block = Number(peek(file, Number(peek(file, 48))));
  poke(file, block + cluster * 2, 2, value);
}

function setL2Entry(file: string, index: number, value: bigint): void {
  const l2 = Number(peek(file, Number(peek(file, 40))) & 0x00fffffffffffe00n);
  poke(file, l2 + index * 8, 8, value);
}

let n = 0;
async function image(opts: string, size: string, cmds: string[], damage?: (file: string) => void): Promise<string> {
  const file = path.join(dir, `src${++n}.qcow2`);
  await ok(qemuImg(["create", "-q", "-f", "qcow2", ...(opts ? ["-o", opts] : []), file, size]));
  if (cmds.length) await ok(qemuIo([...cmds.flatMap((c) => ["-c", c]), file]));
  damage?.(file);
  return file;
}

function same(ours: Run, qemu: Run, oursName: string, qemuName: string): void {
  const q = (t: string) => normalizeQemu(t.split(qemuName).join(oursName));
  expect({ code: ours.code, stdout: ours.stdout, stderr: ours.stderr }).toEqual({
    code: qemu.code,
    stdout: q(qemu.stdout),
    stderr: q(qemu.stderr),
  });
}

/** Run both tools on two copies of `src` with the same arguments (the file name last). */
async function compare(src: string, args: string[]): Promise<void> {
  const sub = subDir(dir, `c${++n}`);
  fs.copyFileSync(src, path.join(sub, "q.qcow2"));
  fs.copyFileSync(src, path.join(sub, "o.qcow2"));
  const qemu = await qemuImg(["check", ...args, "q.qcow2"], sub);
  const ours = await qimg(["check", ...args, "o.qcow2"], sub);
  same(ours, qemu, "o.qcow2", "q.qcow2");
  expect(Buffer.compare(fs.readFileSync(path.join(sub, "o.qcow2")), fs.readFileSync(path.join(sub, "q.qcow2")))).toBe(0);
}

const DAMAGES: Array<[string, () => Promise<string>]> = [
  ["clean, written", () => image("", "8M", ["write -P 1 0 1M", "write -c -P 2 2M 64k", "write -z 4M 64k"])],
  ["clean, empty", () => image("", "8M", [])],
  ["leaks", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => setL2Entry(f, 1, 0n))],
  ["refcount 2 on a cluster referenced once", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => setRefcount(f, 5, 2))],
  ["refcount 0 on a used cluster", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => setRefcount(f, 5, 0))],
  ["COPIED flags", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => setL2Entry(f, 1, 0x60000n))],
  ["refcount block outside the image", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => poke(f, 0x10000, 8, 0x1000000))],
  ["unaligned refcount block", () => image("", "1M", ["write -P 0x11 0 128k"], (f) => poke(f, 0x10000, 8, 0x20200))],
  ["corrupt bit", () => image("", "1M", ["write -P 0x11 0 64k"], (f) => poke(f, 72, 8, 2))],
  ["a third of clusters compressed (percentages)", () => image("cluster_size=4096", "3M", ["write -P 1 0 8k", "write -c -P 2 64k 4k"])],
];

describe("qimg check equals qemu-img check", () => {
  for (const [name, make] of DAMAGES) {
    it(name, async () => {
      const src = await make();
      for (const args of [[], ["--output=json"], ["-r", "leaks"], ["-r", "all"], ["-r", "all", "--output=json"], ["-q"]]) {
        await compare(src, args);
      }
    });
  }

  it("a dirty lazy-refcount image: check reports, -r all repairs", async () => {
    const file = await image("lazy_refcounts=on", "1M", []);
    await qemuIo(["-c", "write -P 0x5a 0 512", "-c", "sigraise 9", file]);
    await compare(file, []);
    await compare(file, ["-r", "all"]);
  });
});

describe("qimg check: options, formats, locks", () => {
  it("option errors and open failures as qemu-img", async () => {
    const src = await image("", "1M", []);
    const raw = path.join(dir, "r.raw");
    await ok(qemuImg(["create", "-q", "-f", "raw", raw, "1M"]));
    for (const args of [
      ["-r", "foo", src],
      [],
      ["-T", "bogus", src],
      ["--output=xml", src],
      ["-U", "-r", "all", src],
      [raw],
      ["-f", "raw", raw],
      [path.join(dir, "nonexistent.qcow2")],
      [src, src],
      ["-U", src],
      ["-f", "qcow2", raw],
    ]) {
      const qemu = await qemuImg(["check", ...args]);
      const ours = await qimg(["check", ...args]);
      same(ours, qemu, "", "\u0000");
    }
  });

  it("an image in use by a writer: QEMU's lock message and hint; -U reads anyway", async () => {
    const src = await image("", "1M", ["write -P 1 0 64k"]);
    const holder = spawn("qemu-io", [src], { stdio: ["pipe", "ignore", "ignore"] });
    try {
      // Wait until qemu-io holds the image (a busy machine can take seconds to start it).
      let held = false;
      for (let i = 0; i < 1200 && !held; i++) {
        held = (await qemuIo(["-r", "-c", "read 0 512", src])).code !== 0;
        if (!held) await new Promise((r) => setTimeout(r, 25));
      }
      expect(held, "qemu-io never took the image's lock").toBe(true);
      for (const args of [[src], ["-r", "all", src], ["-U", src]]) {
        same(await qimg(["check", ...args]), await qemuImg(["check", ...args]), "", "\u0000");
      }
      const refused = await qimg(["check", src]);
      expect(refused.stderr).toBe(`qimg: Could not open '${src}': Failed to get shared "write" lock\nIs another process using the image [${src}]?\n`);
    } finally {
      // The holder may have ended already (its exit event then never comes again).
      const exited = holder.exitCode !== null || holder.signalCode !== null ? Promise.resolve() : new Promise((r) => holder.once("exit", r));
      holder.stdin.end("quit\n");
      await exited;
    }
  });

  it("--safe refuses a stored absolute data file name (qimg and qio), before or after the command name", async () => {
    const sub = subDir(dir, "safe");
    const secret = path.join(sub, "secret.raw");
    await ok(qemuImg(["create", "-q", "-f", "raw", secret, "1M"]));
    const file = path.join(sub, "untrusted.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", `data_file=${secret}`, file, "1M"]));
    expect((await qimg(["check", file])).code).toBe(0);
    const message = `Could not open '${file}': Refusing data file '${secret}' in safe mode: absolute names are not allowed`;
    for (const args of [["--safe", "check", "-f", "qcow2", file], ["check", "--safe", "-f", "qcow2", file]]) {
      const r = await qimg(args);
      expect([r.code, r.stderr]).toEqual([1, `qimg: ${message}\n`]);
    }
    const probe = await qimg(["--safe", "check", file]);
    expect(probe.stderr).toBe(`qimg: Could not open '${file}': Refusing to probe the image format in safe mode; give the format\n`);
    const io = await qio(["--safe", "-f", "qcow2", "-c", "read 0 512", file]);
    expect(io.code).toBe(1);
    expect(io.stderr).toContain("Refusing data file");
  });
});
