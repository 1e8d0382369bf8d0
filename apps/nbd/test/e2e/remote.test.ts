/**
 * qnbd on remote images, with real clients: a qcow2 image over HTTP (nginx) served read-only, a local overlay
 * on an S3 base (s3rver) served read-write, and an image whose data file is in S3. nbdcopy, qemu-io and fio
 * read and write through the exports; the results are checked against QEMU on the local files.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { startNginx, startS3rver } from "../../../../scripts/remote-servers.mjs";
import { QNBD_BIN, makeTempDir, run, runOk } from "../helpers";

// Many processes per test on a shared CPU.
vi.setConfig({ testTimeout: 180_000 });

const tmp = makeTempDir("qnbd-remote-");
afterAll(tmp.cleanup);
const www = path.join(tmp.dir, "www");
let nginx: { url: string; stop(): Promise<void> };
let s3: { endpoint: string; env: Record<string, string>; stop(): Promise<void> };
const started: ChildProcess[] = [];

beforeAll(async () => {
  fs.mkdirSync(www);
  await runOk("qemu-img", ["create", "-q", "-f", "qcow2", path.join(www, "base.qcow2"), "8M"]);
  await runOk("qemu-io", ["-c", "write -P 0x41 0 1M", "-c", "write -P 0x42 3M 512k", "-c", "write -z 6M 1M", path.join(www, "base.qcow2")]);
  await runOk("qemu-img", ["convert", "-O", "raw", path.join(www, "base.qcow2"), path.join(tmp.dir, "base.raw")]);
  nginx = await startNginx(www);
  fs.mkdirSync(path.join(tmp.dir, "s3"));
  s3 = await startS3rver(path.join(tmp.dir, "s3"), ["b"]);
}, 60_000);

afterEach(async () => {
  for (const child of started.splice(0)) {
    if (child.exitCode !== null) continue;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  }
});

afterAll(async () => {
  await nginx?.stop();
  await s3?.stop();
});

/** qnbd on a Unix socket; resolves with the NBD URI once it listens. */
async function qnbd(args: string[]): Promise<string> {
  const socket = path.join(tmp.dir, `s-${Date.now()}-${started.length}.sock`);
  const pidFile = `${socket}.pid`;
  const child = spawn(process.execPath, [QNBD_BIN, "--pid-file", pidFile, "-t", "-k", socket, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, ...s3.env },
  });
  started.push(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(pidFile)) {
    if (child.exitCode !== null) throw new Error(`qnbd exited early: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`qnbd did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return `nbd+unix:///?socket=${socket}`;
}

const qimgBin = path.resolve(QNBD_BIN, "../../../cli/bin/qimg.js");
const qimgS3 = (args: string[]) => run(process.execPath, [qimgBin, ...args], { timeoutMs: 60_000, env: { ...process.env, ...s3.env } });

describe("qnbd on remote images", () => {
  it("serves a qcow2 image over HTTP read-only: nbdcopy and qemu-io read the right bytes", async () => {
    const uri = await qnbd(["-r", "-f", "qcow2", `${nginx.url}/base.qcow2`]);
    const out = path.join(tmp.dir, "copy.raw");
    await runOk("nbdcopy", [uri, out]);
    expect(fs.readFileSync(out).equals(fs.readFileSync(path.join(tmp.dir, "base.raw")))).toBe(true);
    const r = await runOk("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x41 0 1M", "-c", "read -P 0x42 3M 512k", "-c", "read -P 0 6M 1M", uri]);
    expect(r).not.toContain("Pattern verification failed");
    const w = await run("qemu-io", ["-f", "raw", "-c", "write 0 512", uri]);
    expect(w.code).not.toBe(0);
  });

  it("refuses a read-write export of a URL in one line", async () => {
    const r = await run(process.execPath, [QNBD_BIN, "-k", path.join(tmp.dir, "never.sock"), "-f", "qcow2", `${nginx.url}/base.qcow2`], { timeoutMs: 15_000 });
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toContain("a remote image is read-only; write to a local overlay instead");
  });

  it("serves a local overlay on an S3 base read-write: fio verifies its writes, reads fall through", async () => {
    const up = await qimgS3(["convert", "-O", "raw", path.join(www, "base.qcow2"), "s3://b/base.raw"]);
    expect(up.stderr).toBe("");
    const ov = path.join(tmp.dir, "ov.qcow2");
    const c = await qimgS3(["create", "-q", "-f", "qcow2", "-b", "s3://b/base.raw", "-F", "raw", ov]);
    expect(c.stderr).toBe("");
    // The backing file is an object, outside the overlay's folder: qnbd follows it only when told to.
    const refused = await qnbd(["-f", "qcow2", ov]).then(() => "served", (e: Error) => e.message);
    expect(refused).toContain("Refusing backing file 's3://b/base.raw' in confined mode");
    const uri = await qnbd(["--trust-references", "-f", "qcow2", ov]);
    const fio = await run(
      "fio",
      ["--name=v", "--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=4k", "--size=2M", "--offset=4M", "--verify=crc32c", "--do_verify=1", "--randseed=5"],
      { timeoutMs: 60_000 },
    );
    expect(fio.code).toBe(0);
    expect(fio.stdout + fio.stderr).not.toMatch(/verify: bad|crc32c: verify failed/);
    const r = await runOk("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x41 0 1M", "-c", "read -P 0x42 3M 512k", uri]);
    expect(r).not.toContain("Pattern verification failed");
  });

  it("serves an image whose data file is in S3", async () => {
    const m = path.join(tmp.dir, "m.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${path.join(tmp.dir, "m.data")},data_file_raw=on`, m, "4M"]);
    await runOk("qemu-io", ["-c", "write -P 0x5a 1M 1M", m]);
    const up = await qimgS3(["convert", "-f", "raw", "-O", "raw", path.join(tmp.dir, "m.data"), "s3://b/m.data"]);
    expect(up.stderr).toBe("");
    const am = await qimgS3(["amend", "-o", "data_file=s3://b/m.data", m]);
    expect(am.stderr).toBe("");
    // The stored data file name is an object, outside the image's folder: followed only when told to.
    const refused = await qnbd(["-r", "-f", "qcow2", m]).then(() => "served", (e: Error) => e.message);
    expect(refused).toContain("Refusing data file 's3://b/m.data' in confined mode");
    const uri = await qnbd(["--trust-references", "-r", "-f", "qcow2", m]);
    const r = await runOk("qemu-io", ["-r", "-f", "raw", "-c", "read -P 0x5a 1M 1M", "-c", "read -P 0 0 1M", uri]);
    expect(r).not.toContain("Pattern verification failed");
    const out = path.join(tmp.dir, "m.raw");
    await runOk("nbdcopy", [uri, out]);
    const expected = Buffer.alloc(4 << 20);
    expected.fill(0x5a, 1 << 20, 2 << 20);
    expect(fs.readFileSync(out).equals(expected)).toBe(true);
  });
});
