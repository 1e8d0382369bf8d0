/**
 * The qnbd command (bin/qnbd.js, built by the global setup): option errors, startup failures, --fork,
 * --pid-file, signals, the exit after the last client, and TLS (X.509, client certificates, PSK).
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { QNBD_BIN, makeTempDir, patternBytes, run, runOk, waitFor } from "../helpers";
import { RawClient } from "../raw-client";

const tmp = makeTempDir();
const image = path.join(tmp.dir, "disk.raw");
const MiB = 1024 * 1024;
let started: ChildProcess[] = [];
let pidFiles: string[] = [];

beforeAll(() => fs.writeFileSync(image, Buffer.alloc(4 * MiB)));
afterEach(() => {
  for (const c of started) if (c.exitCode === null) c.kill("SIGKILL");
  for (const f of pidFiles) {
    try {
      process.kill(Number(fs.readFileSync(f, "utf8")), "SIGKILL");
    } catch {
      // not running
    }
  }
  started = [];
  pidFiles = [];
});
afterAll(tmp.cleanup);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

const qnbd = (args: string[], timeoutMs = 10_000) => run(process.execPath, [QNBD_BIN, ...args], { timeoutMs });

/** Starts qnbd in the foreground; resolves once it listens (it writes its pid file after listening). */
async function startQnbd(args: string[]): Promise<{ child: ChildProcess; stderr: () => string; exited: Promise<number | null> }> {
  const pidFile = path.join(tmp.dir, `fg-${Date.now()}-${Math.random()}.pid`);
  const child = spawn(process.execPath, [QNBD_BIN, "--pid-file", pidFile, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  started.push(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const deadline = Date.now() + 10_000;
  while (!fs.existsSync(pidFile)) {
    if (child.exitCode !== null) throw new Error(`qnbd exited early: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`qnbd did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { child, stderr: () => stderr, exited };
}

async function waitExit(exited: Promise<number | null>, ms = 10_000): Promise<number | null> {
  return Promise.race([exited, new Promise<number | null>((_, reject) => setTimeout(() => reject(new Error("no exit")), ms))]);
}

describe("option and startup errors", () => {
  it("prints help and version", async () => {
    const help = await qnbd(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: qnbd \[OPTIONS\] FILE/);
    const version = await qnbd(["-V"]);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^qnbd \d+\.\d+\.\d+/);
  });

  it.each([
    [[], "qnbd: Invalid number of arguments"],
    [["--bogus", "x"], "qnbd: unrecognized option '--bogus'"],
    [["-z", "x"], "qnbd: invalid option -- 'z'"],
    [["x", "-x"], "qnbd: option requires an argument -- 'x'"],
    [["-e", "abc", "x"], "qnbd: Invalid shared device number 'abc'"],
    [["--cache=foo", "x"], "qnbd: Invalid cache mode `foo'"],
    [["--discard=foo", "x"], "qnbd: Invalid discard mode `foo'"],
    [["-p", "abc", "x"], "qnbd: address resolution failed for 0.0.0.0:abc: Servname not supported for ai_socktype"],
    [["-f", "vmdk", "IMAGE"], "qnbd: Failed to blk_new_open 'IMAGE': Unknown driver 'vmdk'"],
    [["-f", "raw", "MISSING"], "qnbd: Failed to blk_new_open 'MISSING': Could not open 'MISSING': No such file or directory"],
    [["-f", "raw", "-B", "bm", "IMAGE"], "qnbd: Bitmap 'bm' is not found"],
    [["--tls-creds", "t0", "-f", "raw", "IMAGE"], "qnbd: Failed to get TLS creds: No TLS credentials with id 't0'"],
    [["--tls-psk", "MISSING", "-f", "raw", "IMAGE"], "qnbd: Unable to read PSK file 'MISSING': No such file or directory"],
    [["-f", "raw", "-k", "/nonexistent-dir/s", "IMAGE"], "qnbd: Failed to bind socket to /nonexistent-dir/s: No such file or directory"],
  ])("%j fails with one line and exit status 1", async (args, message) => {
    const fix = (s: string) => s.replaceAll("IMAGE", image).replaceAll("MISSING", path.join(tmp.dir, "missing"));
    const r = await qnbd(args.map(fix));
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`${fix(message)}\n`);
  });

  it.each(["0", "1025", "4.5", "lots"])("QCOWKIT_NBD_CONNECTION_MIB=%s fails with one line, before the image is opened", async (value) => {
    const missing = path.join(tmp.dir, "missing");
    const r = await run(process.execPath, [QNBD_BIN, "-f", "raw", missing], { env: { ...process.env, QCOWKIT_NBD_CONNECTION_MIB: value } });
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`qnbd: QCOWKIT_NBD_CONNECTION_MIB must be a whole number of MiB from 1 to 1024, not '${value}'\n`);
  });

  it("reports a port in use and a pid file it cannot create", async () => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await new Promise((r) => blocker.once("listening", r));
    const port = (blocker.address() as net.AddressInfo).port;
    const busy = await qnbd(["-f", "raw", "-b", "127.0.0.1", "-p", String(port), image]);
    blocker.close();
    expect(busy.code).toBe(1);
    expect(busy.stderr).toBe("qnbd: Failed to find an available port: Address already in use\n");
    const pid = await qnbd(["-f", "raw", "-b", "127.0.0.1", "-p", String(await freePort()), "--pid-file", "/nonexistent-dir/p", image]);
    expect(pid.code).toBe(1);
    expect(pid.stderr).toBe("qnbd: Could not create '/nonexistent-dir/p': No such file or directory\n");
  });
});

describe("running", () => {
  it("warns when the format is probed, and exits after the last client disconnects", async () => {
    const port = await freePort();
    const q = await startQnbd(["-b", "127.0.0.1", "-p", String(port), image]);
    const out = await runOk("nbdinfo", ["--json", `nbd://127.0.0.1:${port}/`]);
    expect(JSON.parse(out).exports[0]["export-size"]).toBe(4 * MiB);
    expect(await waitExit(q.exited)).toBe(0);
    expect((await run("nbdinfo", [`nbd://127.0.0.1:${port}/`])).code).not.toBe(0);
    expect(q.stderr()).toMatch(/^WARNING: Image format was not specified for '.*' and probing guessed raw\./);
  });

  it("on SIGTERM flushes, closes, removes its Unix socket and exits 0", async () => {
    const socket = path.join(tmp.dir, "sig.sock");
    const q = await startQnbd(["-f", "raw", "-t", "-e", "0", "-k", socket, image]);
    expect(q.stderr()).toBe("");
    const data = patternBytes(MiB, 5);
    const src = path.join(tmp.dir, "pattern.raw");
    fs.writeFileSync(src, data);
    await runOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, `nbd+unix:///?socket=${socket}`]);
    // A client still connected at SIGTERM is closed cleanly.
    const c = await RawClient.connect(socket);
    await c.handshake();
    q.child.kill("SIGTERM");
    expect(await waitExit(q.exited)).toBe(0);
    expect(await c.closesWithin(2000)).toBe(true);
    c.destroy();
    expect(fs.existsSync(socket)).toBe(false);
    expect(fs.readFileSync(image).subarray(0, MiB).equals(data)).toBe(true);
  });

  it("--fork returns once the server listens; --pid-file names the server", async () => {
    const port = await freePort();
    const pidFile = path.join(tmp.dir, "qnbd.pid");
    pidFiles.push(pidFile);
    const r = await qnbd(["-f", "raw", "-t", "-v", "--fork", "--pid-file", pidFile, "-b", "127.0.0.1", "-p", String(port), "-x", "forked", image]);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    const pid = Number(fs.readFileSync(pidFile, "utf8"));
    expect(() => process.kill(pid, 0)).not.toThrow();
    const list = await runOk("nbdinfo", ["--list", `nbd://127.0.0.1:${port}/`]);
    expect(list).toContain('export="forked"');
    // -v logging after the parent has gone must not hurt the server.
    expect(await runOk("nbdinfo", ["--list", `nbd://127.0.0.1:${port}/`])).toContain('export="forked"');
    expect(() => process.kill(pid, 0)).not.toThrow();
    process.kill(pid, "SIGTERM");
    await waitFor(() => !fs.existsSync(pidFile), 5000, "the pid file to be removed");
    await waitFor(() => { try { process.kill(pid, 0); return false; } catch { return true; } }, 5000, "the server to exit");
  });

  it("--fork passes startup errors to the parent", async () => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await new Promise((r) => blocker.once("listening", r));
    const port = (blocker.address() as net.AddressInfo).port;
    const r = await qnbd(["-f", "raw", "--fork", "-b", "127.0.0.1", "-p", String(port), image]);
    blocker.close();
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("qnbd: Failed to find an available port: Address already in use\n");
  });
});

describe("TLS", () => {
  const dir = path.join(tmp.dir, "pki");
  const caOnly = path.join(tmp.dir, "client-ca");
  const withClientCert = path.join(tmp.dir, "client-full");
  const openssl = (args: string[]) => runOk("openssl", args);

  beforeAll(async () => {
    fs.mkdirSync(dir);
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    await openssl(["req", "-x509", ...ec, "-keyout", `${dir}/ca-key.pem`, "-out", `${dir}/ca-cert.pem`, "-days", "2", "-subj", "/CN=qnbd test CA"]);
    const sign = async (name: string, cn: string, ext: string) => {
      fs.writeFileSync(`${dir}/${name}.cnf`, ext);
      await openssl(["req", ...ec, "-keyout", `${dir}/${name}-key.pem`, "-out", `${dir}/${name}.csr`, "-subj", `/CN=${cn}`]);
      await openssl([
        "x509", "-req", "-in", `${dir}/${name}.csr`, "-CA", `${dir}/ca-cert.pem`, "-CAkey", `${dir}/ca-key.pem`,
        "-CAcreateserial", "-out", `${dir}/${name}-cert.pem`, "-days", "2", "-extfile", `${dir}/${name}.cnf`,
      ]);
    };
    await sign("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    await sign("client", "client", "extendedKeyUsage=clientAuth\n");
    fs.mkdirSync(caOnly);
    fs.copyFileSync(`${dir}/ca-cert.pem`, `${caOnly}/ca-cert.pem`);
    fs.mkdirSync(withClientCert);
    for (const f of ["ca-cert.pem", "client-cert.pem", "client-key.pem"]) fs.copyFileSync(`${dir}/${f}`, `${withClientCert}/${f}`);
    fs.writeFileSync(`${dir}/keys.psk`, `alice:${patternBytes(32, 11).toString("hex")}\n`);
    fs.writeFileSync(`${dir}/wrong.psk`, `alice:${patternBytes(32, 12).toString("hex")}\n`);
  }, 60_000);

  async function tlsServer(args: string[]) {
    const port = await freePort();
    const q = await startQnbd(["-f", "raw", "-t", "-e", "0", "-b", "127.0.0.1", "-p", String(port), ...args, image]);
    return { port, q };
  }

  it("X.509: TLS clients get in, plain clients get NBD_REP_ERR_TLS_REQD", async () => {
    const { port } = await tlsServer(["--tls-cert", `${dir}/server-cert.pem`, "--tls-key", `${dir}/server-key.pem`]);
    const info = JSON.parse(await runOk("nbdinfo", ["--json", `nbds://127.0.0.1:${port}/?tls-certificates=${caOnly}`]));
    expect(info.TLS).toBe(true);
    expect(info.exports[0]["export-size"]).toBe(4 * MiB);
    const plain = await run("nbdinfo", [`nbd://127.0.0.1:${port}/`]);
    expect(plain.code).not.toBe(0);
    const c = await RawClient.connect(port);
    await c.greet();
    c.sendOption(7, Buffer.alloc(6));
    const [r] = await c.readOptionReplies();
    expect(r!.type).toBe(0x80000005);
    c.destroy();
    // QEMU's own TLS client, through the same server.
    const io = await runOk("qemu-io", [
      "--object", `tls-creds-x509,id=tls0,dir=${caOnly},endpoint=client`,
      "--image-opts", `driver=nbd,host=127.0.0.1,port=${port},tls-creds=tls0`,
      "-c", "write -P 0x3c 0 64k", "-c", "read -P 0x3c 0 64k",
    ]);
    expect(io).not.toContain("Pattern verification failed");
    expect(io).toContain("read 65536/65536 bytes at offset 0");
  });

  it("X.509 with --tls-ca requires a client certificate", async () => {
    const { port } = await tlsServer(["--tls-cert", `${dir}/server-cert.pem`, "--tls-key", `${dir}/server-key.pem`, "--tls-ca", `${dir}/ca-cert.pem`]);
    expect((await run("nbdinfo", [`nbds://127.0.0.1:${port}/?tls-certificates=${caOnly}`])).code).not.toBe(0);
    const ok = await runOk("nbdinfo", [`nbds://127.0.0.1:${port}/?tls-certificates=${withClientCert}`]);
    expect(ok).toContain("with TLS");
  });

  it("QEMU's --object tls-creds-x509 form works", async () => {
    const { port } = await tlsServer(["--object", `tls-creds-x509,id=tls0,dir=${dir},endpoint=server,verify-peer=off`, "--tls-creds", "tls0"]);
    expect(await runOk("nbdinfo", [`nbds://127.0.0.1:${port}/?tls-certificates=${caOnly}`])).toContain("with TLS");
  });

  it("PSK: the right key gets in, a wrong one does not", async () => {
    const { port } = await tlsServer(["--tls-psk", `${dir}/keys.psk`]);
    const ok = await runOk("nbdinfo", [`nbds://alice@127.0.0.1:${port}/?tls-psk-file=${dir}/keys.psk`]);
    expect(ok).toContain("with TLS");
    const bad = await run("nbdinfo", [`nbds://alice@127.0.0.1:${port}/?tls-psk-file=${dir}/wrong.psk`]);
    expect(bad.code).not.toBe(0);
  });
});
