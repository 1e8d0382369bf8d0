/**
 * Hostile clients (issue 13): a handshake flood that never reads its replies, many connections each asking
 * for a large request at once, a burst of Unix-socket connects. Each must leave the server bounded.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { MemoryDevice } from "../../src/memory-device";
import type { ExportSettings, NbdServerOptions } from "../../src/server";
import { QNBD_BIN, makeTempDir, run, runOk, startServer, startUnixServer, waitFor } from "../helpers";
import { RawClient } from "../raw-client";

const MiB = 1024 * 1024;
const READ = 0, WRITE = 1;
const NBD_OPT_LIST = 3, NBD_OPT_STRUCTURED_REPLY = 8;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function unixServer(settings: Partial<ExportSettings>, extra: Omit<NbdServerOptions, "export"> = {}) {
  const tmp = makeTempDir("qnbd-hostile-");
  const socketPath = path.join(tmp.dir, "s.sock");
  const s = await startUnixServer({ device: new MemoryDevice({ size: 4 * MiB }), ...settings }, socketPath, extra);
  cleanups.push(tmp.cleanup, () => s.close());
  return { ...s, socketPath };
}

async function connect(target: number | string): Promise<RawClient> {
  const c = await RawClient.connect(target);
  cleanups.push(() => c.destroy());
  return c;
}

describe("handshake flood", () => {
  it("stops reading options while their replies are unsent, and charges them to the budget", async () => {
    let handled = 0;
    const log = (m: string) => {
      if (m.includes("option LIST")) handled++;
    };
    // Large LIST replies (a 4000-byte name and description) on a Unix socket, whose kernel buffers are small.
    const s = await unixServer(
      { name: "n".repeat(4000), description: "d".repeat(4000) },
      { log, limits: { maxOptions: 100_000 } },
    );
    const c = await connect(s.socketPath);
    await c.greet();
    c.socket.pause();
    const count = 3000;
    for (let i = 0; i < count; i++) c.sendOption(NBD_OPT_LIST);
    await new Promise((r) => setTimeout(r, 500));
    // Without backpressure all 3000 are answered at once (24 MB queued in the server).
    expect(handled).toBeLessThan(count / 4);
    expect(s.server.memoryInUse).toBeGreaterThan(0);
    expect(s.server.memoryInUse).toBeLessThanOrEqual(64 * 1024 + 8200);
    c.socket.resume();
    for (let i = 0; i < count; i++) {
      const replies = await c.readOptionReplies();
      expect(replies.at(-1)!.type).toBe(1);
    }
    expect(handled).toBe(count);
    await waitFor(() => s.server.memoryInUse === 0, 2000, "the handshake replies to be released");
  });

  it("applies before STARTTLS on a TLS-only server too", async () => {
    let handled = 0;
    const log = (m: string) => {
      if (m.includes("option LIST")) handled++;
    };
    // No certificate is needed: nothing gets past STARTTLS here; every option is answered TLS_REQD (~60 bytes).
    const s = await unixServer({}, { log, tls: {}, limits: { maxOptions: 1_000_000 } });
    const c = await connect(s.socketPath);
    await c.greet();
    c.socket.pause();
    const count = 40_000;
    for (let i = 0; i < count; i += 1000) {
      c.write(Buffer.concat(Array.from({ length: 1000 }, () => Buffer.from([0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, NBD_OPT_LIST, 0, 0, 0, 0]))));
    }
    await new Promise((r) => setTimeout(r, 1000));
    // Without backpressure all 40000 are answered (2.4 MB queued); the kernel's socket buffers hold far fewer.
    expect(handled).toBeLessThan(count / 2);
    expect(s.server.memoryInUse).toBeGreaterThan(0);
    expect(s.server.memoryInUse).toBeLessThanOrEqual(64 * 1024 + 200);
  });

  it("closes a handshake that sends more options than the limit", async () => {
    const s = await startServer({ device: new MemoryDevice({ size: MiB }) });
    cleanups.push(() => s.close());
    const c = await connect(s.port);
    await c.greet();
    for (let i = 0; i < 257; i++) c.sendOption(NBD_OPT_STRUCTURED_REPLY);
    for (let i = 0; i < 256; i++) expect((await c.readOptionReplies()).length).toBeGreaterThan(0);
    expect(await c.closesWithin(2000)).toBe(true);
    // 256 options are fine: a fresh client completes its handshake after that many.
    const ok = await connect(s.port);
    await ok.greet();
    for (let i = 0; i < 255; i++) ok.sendOption(NBD_OPT_STRUCTURED_REPLY);
    for (let i = 0; i < 255; i++) await ok.readOptionReplies();
    expect(ok.closed).toBe(false);
  });
});

describe("memory budget", () => {
  it("is a hard ceiling across connections, each holding one large request", async () => {
    const budget = 8 * MiB;
    const s = await startServer({ device: new MemoryDevice({ size: 64 * MiB }) }, { memoryBudget: budget });
    cleanups.push(() => s.close());
    const clients: RawClient[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await connect(s.port);
      await c.handshake();
      c.socket.pause();
      clients.push(c);
    }
    // Each client asks for 4 MiB and reads nothing: before the fix every connection holding nothing took one.
    clients.forEach((c, i) => c.sendRequest(READ, i * 4 * MiB, 4 * MiB, { cookie: BigInt(i) }));
    await waitFor(() => s.server.memoryInUse > 0, 2000, "a read to be taken");
    await new Promise((r) => setTimeout(r, 300));
    expect(s.server.memoryInUse).toBeLessThanOrEqual(budget);
    for (const c of clients) c.socket.resume();
    for (const [i, c] of clients.entries()) {
      const r = await c.readSimpleReply(4 * MiB, 10_000);
      expect(r.errno).toBe(0);
      expect(r.cookie).toBe(BigInt(i));
    }
    await waitFor(() => s.server.memoryInUse === 0, 2000, "budget release");
  });

  it("holds a write's header without its payload until the payload fits", async () => {
    const budget = 4 * MiB;
    const s = await startServer({ device: new MemoryDevice({ size: 64 * MiB }) }, { memoryBudget: budget });
    cleanups.push(() => s.close());
    const a = await connect(s.port);
    const b = await connect(s.port);
    await a.handshake();
    await b.handshake();
    // a's write header is taken and charged, its payload still on the way.
    const first = Buffer.alloc(3 * MiB, 0xa5);
    a.sendRequest(WRITE, 0, 3 * MiB, { cookie: 1n, payload: first.subarray(0, MiB) });
    await waitFor(() => s.server.memoryInUse > 0, 2000, "the first write to be taken");
    const payload = Buffer.alloc(2 * MiB, 0x5a);
    b.sendRequest(WRITE, 8 * MiB, 2 * MiB, { cookie: 2n, payload: payload.subarray(0, 4096) });
    await new Promise((r) => setTimeout(r, 300));
    // Without the ceiling b's write is charged too (5 MiB held) as soon as its header arrives.
    expect(s.server.memoryInUse).toBeLessThanOrEqual(budget);
    b.write(payload.subarray(4096));
    a.write(first.subarray(MiB));
    expect((await a.readSimpleReply(0, 10_000)).errno).toBe(0);
    expect((await b.readSimpleReply(0, 10_000)).errno).toBe(0);
    b.sendRequest(READ, 8 * MiB, 2 * MiB, { cookie: 3n });
    expect((await b.readSimpleReply(2 * MiB)).data!.equals(payload)).toBe(true);
  });
});

describe("memory budget pinned by a hostile client", () => {
  it("large writes whose payload never comes do not stall another client's small reads", async () => {
    const budget = 4 * MiB;
    const s = await startServer({ device: new MemoryDevice({ size: 64 * MiB }) }, { memoryBudget: budget });
    cleanups.push(() => s.close());
    const pin = await connect(s.port);
    await pin.handshake();
    pin.sendRequest(WRITE, 0, 4 * MiB, { cookie: 1n, payload: Buffer.alloc(4096) });
    await waitFor(() => s.server.memoryInUse >= 4 * MiB, 2000, "the budget to be pinned");
    const other = await connect(s.port);
    await other.handshake();
    other.sendRequest(READ, 8 * MiB, 4096, { cookie: 2n });
    expect((await other.readSimpleReply(4096, 2000)).errno).toBe(0);
    // A large request still waits for room.
    other.sendRequest(READ, 8 * MiB, MiB, { cookie: 3n });
    await new Promise((r) => setTimeout(r, 300));
    expect(s.server.memoryInUse).toBeLessThanOrEqual(budget + 64 * 1024 + 64);
    pin.destroy();
    expect((await other.readSimpleReply(MiB, 5000)).cookie).toBe(3n);
  });
});

describe("Unix socket accept", () => {
  it("accepts 1000 simultaneous connects (the listen backlog covers them)", async () => {
    const s = await unixServer({});
    const count = 1000;
    const sockets: net.Socket[] = [];
    cleanups.push(() => sockets.forEach((x) => x.destroy()));
    // All connects are issued before the server's accept callbacks can run.
    const results = await Promise.all(
      Array.from({ length: count }, () =>
        new Promise<string>((resolve) => {
          const x = net.connect(s.socketPath);
          sockets.push(x);
          x.once("data", () => resolve("greeted"));
          x.once("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
          setTimeout(() => resolve("timeout"), 15_000).unref();
        }),
      ),
    );
    const failed = results.filter((r) => r !== "greeted");
    expect(failed.length, `first failures: ${failed.slice(0, 3).join(", ")}`).toBe(0);
  }, 30_000);
});

describe("qnbd: references stored in the image", () => {
  /** Serves `args` with qnbd on a fresh Unix socket, reads the first 4 KiB with qemu-io; qnbd exits after it. */
  async function serveAndRead(args: string[], socketPath: string, pattern: number, env?: NodeJS.ProcessEnv): Promise<string> {
    const child = spawn(process.execPath, [QNBD_BIN, "-k", socketPath, ...args], { stdio: "ignore", env: env ?? process.env });
    cleanups.push(() => void child.kill("SIGKILL"));
    await waitFor(() => existsSync(socketPath), 10_000, "qnbd to listen");
    return runOk("qemu-io", ["-r", "-f", "raw", "-c", `read -P ${pattern} 0 4k`, `nbd+unix:///?socket=${socketPath}`]);
  }

  it("refuses a data file outside the image's folder by default; --trust-references follows it", async () => {
    const tmp = makeTempDir("qnbd-refs-");
    cleanups.push(tmp.cleanup);
    const imageDir = path.join(tmp.dir, "images");
    mkdirSync(imageDir);
    const secret = path.join(tmp.dir, "secret.raw");
    writeFileSync(secret, Buffer.alloc(MiB, 0x5e));
    const img = path.join(imageDir, "d.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${path.join(imageDir, "d.raw")},data_file_raw=on`, img, "1M"]);
    await runOk("qemu-img", ["amend", "-f", "qcow2", "-o", `data_file=${secret}`, img]);
    const refused = await run(process.execPath, [QNBD_BIN, "-f", "qcow2", "-r", "-k", path.join(tmp.dir, "a.sock"), img]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      `qnbd: Failed to blk_new_open '${img}': Refusing data file '${secret}' in confined mode: the file opened lies outside the image's folder\n`,
    );
    expect(await serveAndRead(["-f", "qcow2", "-r", "--trust-references", img], path.join(tmp.dir, "b.sock"), 0x5e)).toMatch(/read 4096\/4096/);
  });

  it("without the native addon a writable export is refused; --locking=off serves it", async () => {
    const tmp = makeTempDir("qnbd-lock-");
    cleanups.push(tmp.cleanup);
    const img = path.join(tmp.dir, "l.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    const env = { ...process.env, QCOWKIT_NATIVE: "0" };
    const refused = await run(process.execPath, [QNBD_BIN, "-f", "qcow2", "-k", path.join(tmp.dir, "a.sock"), img], { env });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^qnbd: Failed to blk_new_open '.*': Cannot lock '.*l\.qcow2' for writing \(the native addon is not loaded: disabled by QCOWKIT_NATIVE=0\); to open it without a lock, turn locking off/);
    expect(await serveAndRead(["-f", "qcow2", "--locking=off", img], path.join(tmp.dir, "b.sock"), 0, env)).toMatch(/read 4096\/4096/);
  });
});
