/**
 * qio and qimg on NBD exports (qemu-nbd serving a qcow2 image on a Unix socket): the same commands give the
 * same output as qemu-io / qemu-img, writes land in the image.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { filterTimings, normalizeQemu, ok, qemuImg, qemuIo, qimg, qio, tempDir } from "./helpers";

const dir = tempDir("qimg-nbd-");
let server: ChildProcess | undefined;

async function serve(image: string, ...extra: string[]): Promise<string> {
  const socket = path.join(dir, `nbd-${Date.now()}.sock`);
  server = spawn("qemu-nbd", ["-f", "qcow2", "-t", "-k", socket, ...extra, image], { stdio: "ignore" });
  for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
  return `nbd+unix:///?socket=${socket}`;
}

afterEach(async () => {
  if (!server) return;
  const s = server;
  server = undefined;
  await new Promise<void>((resolve) => {
    s.once("exit", () => resolve());
    s.kill("SIGTERM");
  });
});

describe("NBD exports", () => {
  it("qio reads and writes an export as qemu-io does", async () => {
    const img = path.join(dir, "t.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", img, "4M"]));
    await ok(qemuIo(["-c", "write -P 0x11 0 1M", img]));
    const url = await serve(img);
    const reads = ["-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0 1M 1M", "-c", "read 4M 512", "-c", "read -v 0 16", url];
    const q = await qemuIo(reads);
    const o = await qio(reads);
    expect(`${o.code}\n${filterTimings(o.stdout)}${o.stderr}`).toBe(`${q.code}\n${filterTimings(q.stdout)}${normalizeQemu(q.stderr)}`);
    const writes = ["-f", "raw", "-c", "write -P 0x22 2M 64k", "-c", "write -z 1M 64k", "-c", "flush", url];
    const w = await qio(writes);
    expect(w.code).toBe(0);
    const info = await qimg(["info", "-f", "raw", url]);
    expect(info.stdout).toContain("virtual size: 4 MiB (4194304 bytes)");
  });

  it("a read-only export refuses a read-write open", async () => {
    const img = path.join(dir, "ro.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", img, "1M"]));
    const url = await serve(img, "-r");
    const args = ["-f", "raw", "-c", "write 0 4k", url];
    const q = await qemuIo(args);
    const o = await qio(args);
    expect(`${o.code} ${o.stderr}`).toBe(`${q.code} ${normalizeQemu(q.stderr)}`);
    const r = await qio(["-f", "raw", "-r", "-c", "read -P 0 0 4k", url]);
    expect(r.code).toBe(0);
  });
});
