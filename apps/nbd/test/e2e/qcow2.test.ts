/**
 * qnbd serving qcow2 images through @qcowkit/core, to real clients: an external data file image written by
 * qemu-io, nbdcopy over several connections and fio; afterwards `qemu-img check` is clean, the image holds
 * exactly what the clients wrote, and with data_file_raw the data file equals the guest disk. A SIGKILL while
 * clients write leaves no corruption and keeps every flushed byte.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { makeTempDir, patternBytes, run, runOk } from "../helpers";

const QNBD_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "bin", "qnbd.js");
const tmp = makeTempDir("qnbd-qcow2-");
afterAll(tmp.cleanup);
const MiB = 1024 * 1024;
const started: ChildProcess[] = [];
afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null) c.kill("SIGKILL");
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Start qnbd and wait until it listens (pid file written). */
async function qnbd(args: string[]): Promise<{ child: ChildProcess; exited: Promise<number | null>; stderr: () => string }> {
  const pidFile = path.join(tmp.dir, `p-${Date.now()}-${Math.random()}.pid`);
  const child = spawn(process.execPath, [QNBD_BIN, "--pid-file", pidFile, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  started.push(child);
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(pidFile)) {
    if (child.exitCode !== null) throw new Error(`qnbd exited early: ${err}`);
    if (Date.now() > deadline) throw new Error(`qnbd did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { child, exited, stderr: () => err };
}

const p = (n: string) => path.join(tmp.dir, n);

describe("serving qcow2 images", () => {
  for (const transport of ["unix", "tcp"] as const) {
    it(`data-file image (data_file_raw) over ${transport}: qemu-io writes, nbdinfo maps, the data file stays raw`, async () => {
      const img = p(`df-${transport}.qcow2`);
      const data = p(`df-${transport}.raw`);
      await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${data},data_file_raw=on`, img, "16M"]);
      let uri: string;
      let args: string[];
      if (transport === "unix") {
        const sock = p(`s-${transport}.sock`);
        args = ["-k", sock];
        uri = `nbd+unix:///?socket=${sock}`;
      } else {
        const port = await freePort();
        args = ["-b", "127.0.0.1", "-p", String(port)];
        uri = `nbd://127.0.0.1:${port}/`;
      }
      const server = await qnbd([...args, "-f", "qcow2", "--discard=unmap", "-t", img]);
      await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x11 1M 4M", "-c", "write -z 2M 1M", "-c", "discard 4M 1M", "-c", "flush", uri]);
      const r = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x11 1M 1M", "-c", "read -P 0 2M 1M", "-c", "read -P 0x11 3M 1M", uri]);
      expect(r.stdout).not.toContain("Pattern verification failed");
      const info = JSON.parse(await runOk("nbdinfo", ["--json", uri]));
      expect(info.exports[0]["export-size"]).toBe(16 * MiB);
      const map = await runOk("nbdinfo", ["--map", uri]);
      expect(map).toMatch(/\d+\s+\d+\s+0\s+data/);
      server.child.kill("SIGTERM");
      expect(await server.exited).toBe(0);
      const check = await run("qemu-img", ["check", img]);
      expect(check.code, check.stdout + check.stderr).toBe(0);
      const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", data, img]);
      expect(cmp.stdout).toContain("Images are identical.");
      const info2 = JSON.parse(await runOk("qemu-img", ["info", "--output=json", img]));
      expect(info2["dirty-flag"]).toBe(false);
    });
  }

  it("data-file image: nbdcopy, fio and qemu-img read-write over TCP, then every client read-only over a Unix socket", async () => {
    const img = p("dfall.qcow2");
    const data = p("dfall.raw");
    const src = p("dfall-src.raw");
    fs.writeFileSync(src, Buffer.concat([patternBytes(6 * MiB, 7), Buffer.alloc(4 * MiB), patternBytes(6 * MiB, 9)]));
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${data},data_file_raw=on`, img, "32M"]);
    // Read-write over TCP: nbdcopy writes the first half, fio writes and verifies the second half.
    const port = await freePort();
    const rw = await qnbd(["-b", "127.0.0.1", "-p", String(port), "-f", "qcow2", "-e", "4", "-t", img]);
    const tcp = `nbd://127.0.0.1:${port}/`;
    await runOk("nbdcopy", ["--connections=4", "--flush", src, tcp]);
    const fio = await run("fio", [
      "--name=v", "--ioengine=nbd", `--uri=${tcp}`, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--offset=16M",
      "--size=16M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--output-format=json",
    ]);
    expect(fio.code, fio.stderr).toBe(0);
    expect(JSON.parse(fio.stdout.slice(fio.stdout.indexOf("{"))).jobs[0].error).toBe(0);
    const viaNbd = p("dfall-nbd.raw");
    await runOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", tcp, viaNbd]);
    rw.child.kill("SIGTERM");
    expect(await rw.exited).toBe(0);
    // The image holds exactly what the clients wrote, and its data file is that same disk, raw.
    expect((await run("qemu-img", ["check", img])).code).toBe(0);
    expect((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", viaNbd, img])).stdout).toContain("Images are identical.");
    expect((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", data, img])).stdout).toContain("Images are identical.");
    expect(Buffer.compare(fs.readFileSync(viaNbd).subarray(0, 16 * MiB), fs.readFileSync(src))).toBe(0);
    const before = fs.readFileSync(data);

    // Read-only over a Unix socket: every client reads, no write gets through.
    const sock = p("dfall.sock");
    const ro = await qnbd(["-k", sock, "-r", "-f", "qcow2", "-e", "4", "-t", img]);
    const unix = `nbd+unix:///?socket=${sock}`;
    expect((await run("nbdinfo", ["--can", "write", unix])).code).not.toBe(0);
    const back = p("dfall-back.raw");
    await runOk("nbdcopy", ["--connections=4", unix, back]);
    expect(Buffer.compare(fs.readFileSync(back), fs.readFileSync(viaNbd))).toBe(0);
    const reads = await run("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0 6M 4M", unix]);
    expect(reads.stdout).toContain("read 4194304/4194304 bytes at offset 6291456");
    expect(reads.stdout).not.toContain("Pattern verification failed");
    const write = await run("qemu-io", ["-f", "raw", "-c", "write -P 0x55 0 64k", unix]);
    expect(write.code).not.toBe(0);
    const fioRead = await run("fio", [
      "--name=r", "--ioengine=nbd", `--uri=${unix}`, "--rw=randread", "--bs=4k", "--iodepth=32", "--size=32M",
      "--readonly", "--output-format=json",
    ]);
    expect(fioRead.code, fioRead.stderr).toBe(0);
    expect(JSON.parse(fioRead.stdout.slice(fioRead.stdout.indexOf("{"))).jobs[0].error).toBe(0);
    expect((await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", viaNbd, unix])).stdout).toContain("Images are identical.");
    ro.child.kill("SIGTERM");
    expect(await ro.exited).toBe(0);
    expect(Buffer.compare(fs.readFileSync(data), before)).toBe(0);
    expect((await run("qemu-img", ["check", img])).code).toBe(0);
  });

  it("nbdcopy over 4 connections into a fresh qcow2 image, then back out; qemu-img compare agrees", async () => {
    const img = p("copy.qcow2");
    const src = p("copy-src.raw");
    fs.writeFileSync(src, Buffer.concat([patternBytes(8 * MiB, 3), Buffer.alloc(4 * MiB), patternBytes(4 * MiB, 5)]));
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "16M"]);
    const sock = p("copy.sock");
    const server = await qnbd(["-k", sock, "-f", "qcow2", "-e", "4", "-t", img]);
    const uri = `nbd+unix:///?socket=${sock}`;
    await runOk("nbdcopy", ["--connections=4", "--flush", src, uri]);
    const back = p("copy-back.raw");
    await runOk("nbdcopy", ["--connections=4", uri, back]);
    expect(Buffer.compare(fs.readFileSync(back), fs.readFileSync(src))).toBe(0);
    server.child.kill("SIGTERM");
    await server.exited;
    expect((await run("qemu-img", ["check", img])).code).toBe(0);
    expect((await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", src, img])).stdout).toContain("Images are identical.");
  });

  it("fio random writes with verify on a qcow2 image with a backing file", async () => {
    const base = p("fio-base.qcow2");
    const img = p("fio.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "64M"]);
    await runOk("qemu-io", ["-c", "write -P 0x77 0 64M", base]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img, "64M"]);
    const sock = p("fio.sock");
    const server = await qnbd(["-k", sock, "-f", "qcow2", "-t", img]);
    const out = await run("fio", [
      "--name=v", "--ioengine=nbd", `--uri=nbd+unix:///?socket=${sock}`, "--rw=randwrite", "--bs=4k", "--iodepth=32",
      "--size=32M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--output-format=json",
    ]);
    expect(out.code, out.stderr).toBe(0);
    const job = JSON.parse(out.stdout.slice(out.stdout.indexOf("{"))).jobs[0];
    expect(job.error).toBe(0);
    server.child.kill("SIGTERM");
    await server.exited;
    expect((await run("qemu-img", ["check", img])).code).toBe(0);
    // The untouched upper half still reads from the backing file.
    const r = await run("qemu-io", ["-r", "-c", "read -P 0x77 48M 16M", img]);
    expect(r.stdout).not.toContain("Pattern verification failed");
  });

  it("SIGKILL while a client writes: no corruption, every flushed byte intact", async () => {
    const img = p("kill.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
    const sock = p("kill.sock");
    const server = await qnbd(["-k", sock, "-f", "qcow2", "-t", img]);
    const uri = `nbd+unix:///?socket=${sock}`;
    // Flushed data first, then a writer that is still going when the server dies.
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x42 0 8M", "-c", "flush", uri]);
    const writer = spawn("fio", [
      "--name=w", "--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=64k", "--iodepth=16",
      "--offset=16M", "--size=48M", "--time_based", "--runtime=30",
    ], { stdio: "ignore" });
    started.push(writer);
    await new Promise((r) => setTimeout(r, 700));
    server.child.kill("SIGKILL");
    await server.exited;
    writer.kill("SIGKILL");
    const check = await run("qemu-img", ["check", "--output=json", img]);
    const report = JSON.parse(check.stdout);
    expect(report.corruptions ?? 0).toBe(0);
    expect(report["check-errors"]).toBe(0);
    const r = await run("qemu-io", ["-r", "-c", "read -P 0x42 0 8M", img]);
    expect(r.stdout).toContain("read 8388608/8388608 bytes");
    expect(r.stdout).not.toContain("Pattern verification failed");
  });
});
