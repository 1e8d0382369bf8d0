/**
 * The server against real NBD clients: libnbd's nbdinfo and nbdcopy, QEMU's qemu-img and qemu-io, and fio's
 * nbd engine. These tools are required (the tests fail when they are missing).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MemoryDevice } from "../../src/memory-device";
import { openImage } from "@qcowkit/core/node";
import type { BlockImage } from "../../src/device";
import type { ExportSettings, NbdServerOptions } from "../../src/server";
import { makeTempDir, patternBytes, run, runOk, startServer, startUnixServer, type RunningServer } from "../helpers";

const tmp = makeTempDir();
afterAll(tmp.cleanup);

const MiB = 1024 * 1024;
let servers: { close: () => Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
});

async function serve(settings: ExportSettings, extra: Omit<NbdServerOptions, "export"> = {}): Promise<RunningServer> {
  const s = await startServer(settings, extra);
  servers.push(s);
  return s;
}

/** A 16 MiB memory disk with 64 KiB clusters: data at [0,1M), a zero cluster at 1M, the rest unallocated. */
async function sparseDisk(): Promise<MemoryDevice> {
  const dev = new MemoryDevice({ size: 16 * MiB, clusterSize: 65536, bitmaps: ["b0"] });
  await dev.write(0, patternBytes(MiB, 1));
  await dev.writeZeroes(MiB, 65536);
  return dev;
}

describe("nbdinfo", () => {
  it("--json reports size, flags, block sizes, description and contexts", async () => {
    const s = await serve({ device: await sparseDisk(), name: "disk", description: "test disk", allocationDepth: true, bitmaps: ["b0"] });
    const info = JSON.parse(await runOk("nbdinfo", ["--json", s.uri]));
    expect(info.protocol).toBe("newstyle-fixed");
    expect(info.structured).toBe(true);
    const e = info.exports[0];
    expect(e).toMatchObject({
      "export-name": "disk",
      description: "test disk",
      "export-size": 16 * MiB,
      is_read_only: false,
      can_cache: true,
      can_df: true,
      can_fast_zero: true,
      can_flush: true,
      can_fua: true,
      can_multi_conn: true,
      can_trim: true,
      can_zero: true,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    expect(e.contexts).toEqual(["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0"]);
  });

  it("--list lists the export", async () => {
    const s = await serve({ device: new MemoryDevice({ size: MiB }), name: "only", description: "the one" });
    const out = await runOk("nbdinfo", ["--list", `nbd://127.0.0.1:${s.port}/`]);
    expect(out).toContain('export="only"');
    expect(out).toContain("description: the one");
  });

  it("--can answers for every feature, writable and read-only", async () => {
    const rw = await serve({ device: new MemoryDevice({ size: MiB }) });
    for (const feature of ["flush", "trim", "zero", "fast-zero", "cache", "multi-conn", "df", "fua"]) {
      const r = await run("nbdinfo", ["--can", feature, rw.uri]);
      expect({ feature, code: r.code }).toEqual({ feature, code: 0 });
    }
    const ro = await serve({ device: new MemoryDevice({ size: MiB }), readOnly: true, multiConn: false });
    const expected: Record<string, number> = { flush: 0, trim: 2, zero: 2, "fast-zero": 2, cache: 0, "multi-conn": 2, df: 0 };
    for (const [feature, code] of Object.entries(expected)) {
      const r = await run("nbdinfo", ["--can", feature, ro.uri]);
      expect({ feature, code: r.code }).toEqual({ feature, code });
    }
    expect((await run("nbdinfo", ["--is", "read-only", ro.uri])).code).toBe(0);
  });

  it("--map shows base:allocation, allocation depth and a dirty bitmap", async () => {
    const dev = await sparseDisk();
    const s = await serve({ device: dev, allocationDepth: true, bitmaps: ["b0"] });
    const lines = (out: string) => out.trim().split("\n").map((l) => l.trim().split(/\s+/).join(" "));
    expect(lines(await runOk("nbdinfo", ["--map", s.uri]))).toEqual([
      "0 1048576 0 data",
      "1048576 15728640 3 hole,zero",
    ]);
    expect(lines(await runOk("nbdinfo", ["--map=qemu:allocation-depth", s.uri]))).toEqual([
      "0 1114112 1 local",
      "1114112 15663104 0 absent",
    ]);
    expect(lines(await runOk("nbdinfo", ["--map=qemu:dirty-bitmap:b0", s.uri]))).toEqual([
      "0 1114112 1 dirty",
      "1114112 15663104 0 clean",
    ]);
  });
});

describe("qemu-io and qemu-img", () => {
  it("read, write, write -z, discard and map through nbd://", async () => {
    const dev = new MemoryDevice({ size: 8 * MiB, clusterSize: 65536 });
    const s = await serve({ device: dev, discard: "unmap" });
    const out = await runOk("qemu-io", [
      "-f", "raw",
      "-c", "write -P 0xab 0 1M",
      "-c", "read -P 0xab 0 1M",
      "-c", "write -z 256k 128k",
      "-c", "read -P 0 256k 128k",
      "-c", "read -P 0xab 384k 640k",
      "-c", "write -P 0xcd 4M 64k",
      "-c", "discard 4M 64k",
      "-c", "flush",
      "-c", "map",
      s.uri,
    ]);
    // Over NBD the raw layer on top counts everything as allocated (qemu-nbd answers the same).
    expect(out).toContain("8 MiB (0x800000) bytes     allocated at offset 0 bytes (0x0)");
    expect(out).not.toMatch(/Pattern verification failed|error/i);
    expect(out).toContain("read 131072/131072 bytes at offset 262144");
    // The discard deallocated the cluster; the write -z (no NO_HOLE from qemu) unmapped its two clusters.
    expect(dev.allocatedClusters).toBe(16 - 2);
    const map = JSON.parse(await runOk("qemu-img", ["map", "--output=json", "-f", "raw", s.uri]));
    expect(map.map((e: { start: number; length: number; data: boolean; zero: boolean }) => [e.start, e.length, e.data, e.zero])).toEqual([
      [0, 262144, true, false],
      [262144, 131072, false, true],
      [393216, 655360, true, false],
      [1048576, 7340032, false, true],
    ]);
  });

  it("verifies patterns through nbd+unix:// and reports errors from the device", async () => {
    const dev = new MemoryDevice({ size: 4 * MiB });
    const socket = path.join(tmp.dir, "qio.sock");
    const s = await startUnixServer({ device: dev }, socket);
    servers.push(s);
    await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x11 1M 512k", s.uri]);
    const ok = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x11 1M 512k", s.uri]);
    expect(ok.stdout).not.toContain("Pattern verification failed");
    const bad = await run("qemu-io", ["-f", "raw", "-c", "read -P 0x22 1M 512k", s.uri]);
    expect(bad.stdout + bad.stderr).toContain("Pattern verification failed");
    dev.failNext("read", Object.assign(new Error("disk on fire"), { code: "EIO" }));
    const failed = await run("qemu-io", ["-f", "raw", "-c", "read 0 4k", s.uri]);
    expect(failed.stdout + failed.stderr).toContain("Input/output error");
  });

  it("qemu-img convert and compare against a local file", async () => {
    const local = path.join(tmp.dir, "src.raw");
    fs.writeFileSync(local, patternBytes(4 * MiB, 9));
    const target = path.join(tmp.dir, "dst.raw");
    fs.writeFileSync(target, Buffer.alloc(4 * MiB));
    const dev = await openImage(target, { format: "raw" });
    const s = await serve({ device: dev });
    await runOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", local, s.uri]);
    const cmp = await run("qemu-img", ["compare", "-f", "raw", "-F", "raw", local, s.uri]);
    expect(cmp.stdout).toContain("Images are identical.");
    await dev.flush();
    expect(fs.readFileSync(target).equals(fs.readFileSync(local))).toBe(true);
  });
});

describe("nbdcopy", () => {
  it("writes an image over 4 connections and reads it back", async () => {
    const size = 32 * MiB;
    const source = path.join(tmp.dir, "copy-src.raw");
    const data = patternBytes(size, 42);
    data.fill(0, 8 * MiB, 12 * MiB); // a zero run, which nbdcopy zeroes rather than writes
    fs.writeFileSync(source, data);
    const diskFile = path.join(tmp.dir, "copy-disk.raw");
    fs.writeFileSync(diskFile, Buffer.alloc(size, 0xee));
    const dev = await openImage(diskFile, { format: "raw" });
    const s = await serve({ device: dev }, { shared: 0 });
    let peak = 0;
    s.server.on("connect", () => (peak = Math.max(peak, s.server.connectionCount)));
    await runOk("nbdcopy", ["--connections=4", "--threads=4", "--flush", source, s.uri], { timeoutMs: 60_000 });
    expect(peak).toBe(4);
    const back = path.join(tmp.dir, "copy-back.raw");
    await runOk("nbdcopy", ["--connections=4", "--threads=4", s.uri, back], { timeoutMs: 60_000 });
    expect(fs.readFileSync(back).equals(data)).toBe(true);
    expect(fs.readFileSync(diskFile).equals(data)).toBe(true);
  });
});

describe("fio nbd engine", () => {
  let s: RunningServer;
  let dev: BlockImage;
  beforeAll(async () => {
    const file = path.join(tmp.dir, "fio.raw");
    fs.writeFileSync(file, Buffer.alloc(32 * MiB));
    dev = await openImage(file, { format: "raw" });
  });
  afterAll(() => dev.close());

  it("random writes at iodepth 32 verify", async () => {
    s = await serve({ device: dev });
    const r = await run(
      "fio",
      [
        "--name=verify", "--ioengine=nbd", `--uri=${s.uri}`, "--rw=randwrite", "--bs=4k", "--size=16M",
        "--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=1",
        "--output-format=json",
      ],
      { timeoutMs: 60_000 },
    );
    expect(r.code).toBe(0);
    const job = JSON.parse(r.stdout.slice(r.stdout.indexOf("{"))).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(16 * MiB);
    expect(job.read.io_bytes).toBe(16 * MiB); // the verify pass read everything back
  });
});
