/**
 * Misbehaving clients on raw sockets, pipelining, backpressure and shutdown. Each misbehaviour must cost
 * only that connection: a second, healthy connection keeps working throughout.
 */
import { afterEach, describe, expect, it } from "vitest";
import { MemoryDevice } from "../../src/memory-device";
import type { ExportSettings, NbdServerOptions } from "../../src/server";
import { patternBytes, startServer, waitFor, type RunningServer } from "../helpers";
import { RawClient, u16, u32 } from "../raw-client";

const MiB = 1024 * 1024;
const READ = 0, WRITE = 1, DISC = 2, FLUSH = 3, TRIM = 4, WRITE_ZEROES = 6, BLOCK_STATUS = 7;
const EPERM = 1, EINVAL = 22, ENOSPC = 28, ENOTSUP = 95;

let servers: RunningServer[] = [];
let clients: RawClient[] = [];
afterEach(async () => {
  for (const c of clients) c.destroy();
  await Promise.all(servers.map((s) => s.close()));
  servers = [];
  clients = [];
});

async function serve(settings: Partial<ExportSettings> = {}, extra: Omit<NbdServerOptions, "export"> = {}) {
  const dev = (settings.device as MemoryDevice | undefined) ?? new MemoryDevice({ size: 4 * MiB });
  const s = await startServer({ ...settings, device: dev }, extra);
  servers.push(s);
  return { s, dev };
}

async function connect(port: number): Promise<RawClient> {
  const c = await RawClient.connect(port);
  clients.push(c);
  return c;
}

/** A healthy client: handshake, write a pattern, read it back. */
async function healthy(port: number): Promise<void> {
  const c = await connect(port);
  await c.handshake();
  const data = patternBytes(4096, port);
  c.sendRequest(WRITE, 8192, 4096, { cookie: 7n, payload: data });
  expect((await c.readSimpleReply()).errno).toBe(0);
  c.sendRequest(READ, 8192, 4096, { cookie: 8n });
  const r = await c.readSimpleReply(4096);
  expect(r.errno).toBe(0);
  expect(r.data!.equals(data)).toBe(true);
  c.sendRequest(DISC, 0, 0);
  expect(await c.closesWithin(2000)).toBe(true);
}

describe("malformed handshakes", () => {
  it("a bad option magic closes only that connection", async () => {
    const { s } = await serve();
    const bad = await connect(s.port);
    await bad.greet();
    bad.write(Buffer.concat([Buffer.from("IHAVEOPX"), u32(7), u32(0)]));
    expect(await bad.closesWithin(2000)).toBe(true);
    await healthy(s.port);
  });

  it("unknown client flags close the connection", async () => {
    const { s } = await serve();
    const bad = await connect(s.port);
    await bad.greet(0x80);
    expect(await bad.closesWithin(2000)).toBe(true);
    await healthy(s.port);
  });

  it("an oversized option is refused without buffering it", async () => {
    const { s } = await serve();
    const bad = await connect(s.port);
    await bad.greet();
    bad.sendOption(7, Buffer.alloc(1000), 0x7fffffff);
    expect(await bad.closesWithin(2000)).toBe(true);
    expect(s.server.memoryInUse).toBe(0);
    await healthy(s.port);
  });

  it("unknown options get NBD_REP_ERR_UNSUP and the handshake continues", async () => {
    const { s } = await serve();
    const c = await connect(s.port);
    await c.greet();
    c.sendOption(0xabcd, Buffer.from("some data"));
    const [r] = await c.readOptionReplies();
    expect(r!.type).toBe(0x80000001);
    c.sendOption(7, Buffer.concat([u32(0), u16(0)]));
    const replies = await c.readOptionReplies();
    expect(replies.at(-1)!.type).toBe(1);
  });

  it("a client that never finishes the handshake is dropped after the time limit", async () => {
    const { s } = await serve({}, { limits: { handshakeTimeoutMs: 300 } });
    const idle = await connect(s.port);
    await idle.read(18);
    expect(await idle.closesWithin(3000)).toBe(true);
    await healthy(s.port);
  });

  it("NBD_OPT_EXPORT_NAME works, with the 124 zero bytes when NO_ZEROES is not negotiated", async () => {
    const { s } = await serve();
    const c = await connect(s.port);
    await c.greet(1);
    c.sendOption(1, Buffer.alloc(0));
    const reply = await c.read(134);
    expect(reply.readBigUInt64BE(0)).toBe(4n * BigInt(MiB));
    expect(reply.subarray(10).every((x) => x === 0)).toBe(true);
    c.sendRequest(READ, 0, 512);
    expect((await c.readSimpleReply(512)).errno).toBe(0);
  });

  it("NBD_OPT_EXPORT_NAME for an unknown export closes the connection", async () => {
    const { s } = await serve({ name: "disk" });
    const c = await connect(s.port);
    await c.greet();
    c.sendOption(1, Buffer.from("nope"));
    expect(await c.closesWithin(2000)).toBe(true);
  });
});

describe("malformed requests", () => {
  it("a write beyond the end gets ENOSPC, its payload is skipped and the connection goes on", async () => {
    const { s, dev } = await serve();
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(WRITE, 4 * MiB - 512, 1024, { cookie: 1n, payload: Buffer.alloc(1024, 0x77) });
    c.sendRequest(READ, 4 * MiB - 512, 512, { cookie: 2n });
    const r1 = await c.readSimpleReply();
    expect(r1).toMatchObject({ errno: ENOSPC, cookie: 1n });
    const r2 = await c.readSimpleReply(512);
    expect(r2).toMatchObject({ errno: 0, cookie: 2n });
    expect(r2.data!.every((x) => x === 0)).toBe(true);
    expect(dev.allocatedClusters).toBe(0);
  });

  it("huge lengths are refused without allocating, and READs stay usable", async () => {
    const { s } = await serve();
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(READ, 0, 64 * MiB, { cookie: 1n });
    expect(await c.readSimpleReply()).toMatchObject({ errno: EINVAL, cookie: 1n });
    c.sendRequest(READ, 0, 512, { cookie: 2n });
    expect(await c.readSimpleReply(512)).toMatchObject({ errno: 0, cookie: 2n });
    const w = await connect(s.port);
    await w.handshake();
    w.sendRequest(WRITE, 0, 0xffffffff, { cookie: 3n });
    expect(await w.readSimpleReply()).toMatchObject({ errno: EINVAL, cookie: 3n });
    expect(s.server.memoryInUse).toBe(0);
    await healthy(s.port);
  });

  it("unknown commands and flags get EINVAL and the connection goes on", async () => {
    const { s } = await serve();
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(99, 0, 0, { cookie: 1n });
    c.sendRequest(READ, 0, 512, { cookie: 2n, flags: 0x40 });
    c.sendRequest(BLOCK_STATUS, 0, 512, { cookie: 3n }); // no context negotiated
    c.sendRequest(FLUSH, 0, 0, { cookie: 4n });
    const replies = [await c.readSimpleReply(), await c.readSimpleReply(), await c.readSimpleReply(), await c.readSimpleReply()];
    expect(replies.map((r) => [r.cookie, r.errno])).toEqual([[1n, EINVAL], [2n, EINVAL], [3n, EINVAL], [4n, 0]]);
  });

  it("a bad request magic closes the connection", async () => {
    const { s } = await serve();
    const c = await connect(s.port);
    await c.handshake();
    c.write(Buffer.alloc(28, 0x41));
    expect(await c.closesWithin(2000)).toBe(true);
    await healthy(s.port);
  });

  it("a truncated request or a drop mid-payload frees everything", async () => {
    const { s } = await serve();
    const t = await connect(s.port);
    await t.handshake();
    t.write(Buffer.alloc(10, 0x25));
    t.destroy();
    const d = await connect(s.port);
    await d.handshake();
    d.sendRequest(WRITE, 0, MiB, { cookie: 1n, payload: Buffer.alloc(100 * 1024) });
    await waitFor(() => s.server.memoryInUse > 0, 2000, "the write to be accepted");
    d.destroy();
    await waitFor(() => s.server.connectionCount === 0, 2000, "connections to close");
    expect(s.server.memoryInUse).toBe(0);
    await healthy(s.port);
  });

  it("writes to a read-only export get EPERM; FAST_ZERO that cannot be fast gets ENOTSUP", async () => {
    const ro = await serve({ readOnly: true });
    const c = await connect(ro.s.port);
    await c.handshake();
    c.sendRequest(WRITE, 0, 512, { cookie: 1n, payload: Buffer.alloc(512) });
    c.sendRequest(TRIM, 0, 512, { cookie: 2n });
    expect((await c.readSimpleReply()).errno).toBe(EPERM);
    expect((await c.readSimpleReply()).errno).toBe(EPERM);
    const dev = new MemoryDevice({ size: MiB });
    const { Qcow2Error } = await import("@qcowkit/spec");
    dev.failNext("writeZeroes", new Qcow2Error("NOT_SUPPORTED", "cannot zero fast"));
    const rw = await serve({ device: dev });
    const z = await connect(rw.s.port);
    await z.handshake();
    z.sendRequest(WRITE_ZEROES, 0, 65536, { cookie: 3n, flags: 1 << 4 });
    expect((await z.readSimpleReply()).errno).toBe(ENOTSUP);
  });
});

describe("structured replies", () => {
  it("sparse reads use hole chunks; DF gets one data chunk; errors carry a message", async () => {
    const dev = new MemoryDevice({ size: 4 * MiB, clusterSize: 65536 });
    const data = patternBytes(65536, 3);
    await dev.write(65536, data);
    const { s } = await serve({ device: dev });
    const c = await connect(s.port);
    const { flags } = await c.handshake({ structured: true });
    expect(flags & (1 << 7)).toBeTruthy(); // SEND_DF
    c.sendRequest(READ, 0, 196608, { cookie: 1n });
    const chunks = await c.readStructuredReply();
    expect(chunks.map((k) => [k.type, Number(k.payload.readBigUInt64BE(0))])).toEqual([[2, 0], [1, 65536], [2, 131072]]);
    expect(chunks[0]!.payload.readUInt32BE(8)).toBe(65536);
    expect(chunks[1]!.payload.subarray(8).equals(data)).toBe(true);
    c.sendRequest(READ, 0, 196608, { cookie: 2n, flags: 1 << 2 });
    const df = await c.readStructuredReply();
    expect(df).toHaveLength(1);
    expect(df[0]!.type).toBe(1);
    expect(df[0]!.payload.subarray(8 + 65536, 8 + 131072).equals(data)).toBe(true);
    dev.failNext("read", Object.assign(new Error("media error"), { code: "EIO" }));
    c.sendRequest(READ, 0, 4096, { cookie: 3n });
    const [err] = await c.readStructuredReply();
    expect(err!.type).toBe(0x8001);
    expect(err!.payload.readUInt32BE(0)).toBe(5);
    expect(err!.payload.subarray(6).toString()).toBe("media error");
  });

  it("block status answers one chunk per selected context", async () => {
    const dev = new MemoryDevice({ size: MiB, clusterSize: 65536, bitmaps: ["b"] });
    await dev.write(0, Buffer.alloc(65536, 1));
    const { s } = await serve({ device: dev, allocationDepth: true, bitmaps: ["b"] });
    const c = await connect(s.port);
    const { contextIds } = await c.handshake({ structured: true, contexts: ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b"] });
    expect(contextIds.size).toBe(3);
    c.sendRequest(BLOCK_STATUS, 0, MiB, { cookie: 5n });
    const chunks = await c.readStructuredReply();
    const byId = new Map(chunks.map((k) => [k.payload.readUInt32BE(0), k.payload]));
    const descs = (p: Buffer) => Array.from({ length: (p.length - 4) / 8 }, (_, i) => [p.readUInt32BE(4 + 8 * i), p.readUInt32BE(8 + 8 * i)]);
    expect(descs(byId.get(contextIds.get("base:allocation")!)!)).toEqual([[65536, 0], [MiB - 65536, 3]]);
    expect(descs(byId.get(contextIds.get("qemu:allocation-depth")!)!)).toEqual([[65536, 1], [MiB - 65536, 0]]);
    expect(descs(byId.get(contextIds.get("qemu:dirty-bitmap:b")!)!)).toEqual([[65536, 1], [MiB - 65536, 0]]);
    c.sendRequest(BLOCK_STATUS, 0, MiB, { cookie: 6n, flags: 1 << 3 });
    for (const k of await c.readStructuredReply()) expect(k.payload.length).toBe(12);
  });
});

describe("pipelining, backpressure and sharing", () => {
  it("replies overtake slower requests", async () => {
    const dev = new MemoryDevice({ size: MiB, delay: (op, offset) => (op === "read" && offset === 0 ? 300 : 0) });
    const { s } = await serve({ device: dev });
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(READ, 0, 512, { cookie: 1n });
    c.sendRequest(READ, 4096, 512, { cookie: 2n });
    expect((await c.readSimpleReply(512)).cookie).toBe(2n);
    expect((await c.readSimpleReply(512)).cookie).toBe(1n);
  });

  it("stops reading while replies pile up unread, then delivers all of them", async () => {
    const dev = new MemoryDevice({ size: 64 * MiB });
    const { s } = await serve({ device: dev }, { limits: { maxConnectionBytes: 8 * MiB } });
    const c = await connect(s.port);
    await c.handshake();
    c.socket.pause();
    const count = 200;
    for (let i = 0; i < count; i++) c.sendRequest(READ, (i % 64) * MiB, MiB, { cookie: BigInt(i) });
    await new Promise((r) => setTimeout(r, 500));
    // At most the budget plus one request is held, not 200 MiB of replies.
    expect(s.server.memoryInUse).toBeLessThanOrEqual(9 * MiB + 64 * 200);
    expect(s.server.memoryInUse).toBeGreaterThan(0);
    c.socket.resume();
    const seen = new Set<bigint>();
    for (let i = 0; i < count; i++) {
      const r = await c.readSimpleReply(MiB, 10_000);
      expect(r.errno).toBe(0);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(count);
    await waitFor(() => s.server.memoryInUse === 0, 2000, "budget release");
  });

  it("all connections share the device: a flush on one covers writes from another", async () => {
    const dev = new MemoryDevice({ size: MiB });
    const { s } = await serve({ device: dev });
    const a = await connect(s.port);
    const b = await connect(s.port);
    await a.handshake();
    const { flags } = await b.handshake();
    expect(flags & (1 << 8)).toBeTruthy(); // CAN_MULTI_CONN
    a.sendRequest(WRITE, 0, 512, { payload: Buffer.alloc(512, 0x42) });
    expect((await a.readSimpleReply()).errno).toBe(0);
    b.sendRequest(FLUSH, 0, 0);
    expect((await b.readSimpleReply()).errno).toBe(0);
    expect(dev.flushCount).toBe(1);
    b.sendRequest(READ, 0, 512);
    expect((await b.readSimpleReply(512)).data!.every((x) => x === 0x42)).toBe(true);
  });

  it("with shared=1 a second client waits for the first to leave", async () => {
    const { s } = await serve({}, { shared: 1 });
    const first = await connect(s.port);
    await first.read(18);
    const second = await connect(s.port);
    await waitFor(() => s.server.waitingCount === 1, 2000, "the second client to wait");
    await expect(second.read(18, 300)).rejects.toThrow(/timed out/);
    first.destroy();
    expect((await second.read(18, 3000)).toString("latin1", 0, 8)).toBe("NBDMAGIC");
  });

  it("discard=ignore keeps data on TRIM; cache=unsafe skips flushes", async () => {
    const dev = new MemoryDevice({ size: MiB });
    await dev.write(0, Buffer.alloc(65536, 1));
    const { s } = await serve({ device: dev, discard: "ignore", cache: "unsafe" });
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(TRIM, 0, 65536);
    c.sendRequest(FLUSH, 0, 0);
    expect((await c.readSimpleReply()).errno).toBe(0);
    expect((await c.readSimpleReply()).errno).toBe(0);
    expect(dev.allocatedClusters).toBe(1);
    expect(dev.flushCount).toBe(0);
  });

  it("close() lets requests in flight finish before closing", async () => {
    const dev = new MemoryDevice({ size: MiB, delay: (op) => (op === "write" ? 300 : 0) });
    const { s } = await serve({ device: dev });
    const c = await connect(s.port);
    await c.handshake();
    c.sendRequest(WRITE, 0, 512, { cookie: 9n, payload: Buffer.alloc(512, 0x99) });
    await waitFor(() => s.server.memoryInUse > 0, 2000, "the write to start");
    const closing = s.server.close(5000);
    expect(await c.readSimpleReply(0, 3000)).toMatchObject({ errno: 0, cookie: 9n });
    expect(await c.closesWithin(3000)).toBe(true);
    await closing;
    const back = new Uint8Array(512);
    await dev.read(0, back);
    expect(back.every((x) => x === 0x99)).toBe(true);
  });
});
