/**
 * The socket read into reused memory (socket-reader.ts, receive-buffers.ts) and the 'data' events it replaces:
 * pipelined writes of every size, cut into pieces that split headers and payloads across socket reads, land
 * whole and in order on the device, while the device holds payloads (slow writes) and when it fails them.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { NbdConnection } from "../../src/connection";
import { MemoryDevice } from "../../src/memory-device";
import { patternBytes, startServer, type RunningServer } from "../helpers";
import { RawClient } from "../raw-client";

const MiB = 1024 * 1024;
const READ = 0, WRITE = 1;

/** Undone after each test, last first (clients go before their servers). */
const undo: Array<() => unknown> = [];
afterEach(async () => {
  while (undo.length > 0) await undo.pop()!();
});

async function serveAndConnect(device: MemoryDevice, reuse: boolean): Promise<{ s: RunningServer; c: RawClient }> {
  const s = await startServer({ device }, { reuseReadMemory: reuse });
  undo.push(() => s.close());
  const c = await RawClient.connect(s.port);
  undo.push(() => c.destroy());
  await c.handshake();
  return { s, c };
}

function connections(s: RunningServer): NbdConnection[] {
  return [...(s.server as unknown as { active: Set<NbdConnection> }).active];
}

/** One WRITE request (header and payload) as a client sends it. */
function writeRequest(cookie: number, offset: number, payload: Uint8Array): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(0, 4);
  b.writeUInt16BE(WRITE, 6);
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(payload.byteLength, 24);
  return Buffer.concat([b, payload]);
}

// Sizes from one byte to more than one socket read, at offsets that do not overlap.
const SIZES = [1, 511, 4096, 4096, 12_288, 65_536, 100_000, MiB + 7, 28, 4096, 200_000, 3];

/** `pause`: milliseconds after each piece (so that each arrives as a read of its own), or 0 for every fifth. */
async function roundTrip(reuse: boolean, pieces: number[], device: MemoryDevice, pause = 0): Promise<void> {
  const { s, c } = await serveAndConnect(device, reuse);
  expect(connections(s).map((conn) => conn.readsIntoReusedMemory)).toEqual([reuse]);
  const payloads = SIZES.map((n, i) => patternBytes(n, 100 + i));
  const offsets = SIZES.map((_, i) => i * 2 * MiB);
  const stream = Buffer.concat(payloads.map((p, i) => writeRequest(i + 1, offsets[i]!, p)));
  // Sent in pieces of the given sizes, in turn, with a pause now and then so they arrive as separate reads.
  for (let at = 0, k = 0; at < stream.byteLength; k++) {
    const n = Math.min(pieces[k % pieces.length]!, stream.byteLength - at);
    c.write(stream.subarray(at, at + n));
    at += n;
    if (pause > 0) await new Promise((r) => setTimeout(r, pause));
    else if (k % 5 === 4) await new Promise((r) => setTimeout(r, 2));
  }
  const cookies: bigint[] = [];
  for (let i = 0; i < SIZES.length; i++) {
    const reply = await c.readSimpleReply(0, 10_000);
    expect(reply.errno).toBe(0);
    cookies.push(reply.cookie);
  }
  expect(cookies.sort((a, b) => Number(a - b))).toEqual(SIZES.map((_, i) => BigInt(i + 1)));
  for (let i = 0; i < SIZES.length; i++) {
    c.sendRequest(READ, offsets[i]!, SIZES[i]!, { cookie: BigInt(1000 + i) });
    const reply = await c.readSimpleReply(SIZES[i]!, 10_000);
    expect(reply.errno).toBe(0);
    expect(Buffer.compare(reply.data!, payloads[i]!)).toBe(0);
  }
}

describe.each([true, false])("socket reads (reused memory: %s)", (reuse) => {
  it("pipelined writes sent whole land on the device", async () => {
    await roundTrip(reuse, [8 * MiB], new MemoryDevice({ size: 32 * MiB }));
  });

  it("writes cut across reads (headers and payloads split) land on the device", async () => {
    await roundTrip(reuse, [7, 1000, 33, 70_000, 5, 4096, 131_072], new MemoryDevice({ size: 32 * MiB }));
  });

  it("each piece a read of its own: partial headers and payloads wait for the next read", async () => {
    await roundTrip(reuse, [7, 30, 1000, 21, 70_000, 5, 4096, 300_000], new MemoryDevice({ size: 32 * MiB }), 3);
  });

  it("slow device writes keep their payloads while later reads arrive", async () => {
    const device = new MemoryDevice({ size: 32 * MiB, delay: (op, offset) => (op === "write" ? 20 + ((offset / MiB) % 3) * 15 : 0) });
    await roundTrip(reuse, [3000, 65_536, 17], device);
  });

  it("small writes each in a read of their own, on a slow device: a bounded number of receive buffers held", async () => {
    const device = new MemoryDevice({ size: 32 * MiB, delay: (op) => (op === "write" ? 300 : 0) });
    const { s, c } = await serveAndConnect(device, reuse);
    const payloads = Array.from({ length: 20 }, (_, i) => patternBytes(512, 500 + i));
    for (let i = 0; i < payloads.length; i++) {
      c.write(writeRequest(i + 1, i * 4096, payloads[i]!));
      await new Promise((r) => setTimeout(r, 3));
    }
    // All 20 are in flight on the device now; a connection reading into reused memory holds at most 8 of its
    // buffers for them (the rest were copied).
    const held = (connections(s)[0] as unknown as { receive?: { lent: Map<unknown, number> } }).receive?.lent.size ?? 0;
    expect(held).toBeLessThanOrEqual(8);
    if (reuse) expect(held).toBeGreaterThan(0);
    for (let i = 0; i < payloads.length; i++) expect((await c.readSimpleReply(0, 10_000)).errno).toBe(0);
    for (let i = 0; i < payloads.length; i++) {
      c.sendRequest(READ, i * 4096, 512, { cookie: BigInt(100 + i) });
      expect(Buffer.compare((await c.readSimpleReply(512)).data!, payloads[i]!)).toBe(0);
    }
  });

  it("a failed write: its error reply, and the writes after it land", async () => {
    const device = new MemoryDevice({ size: 32 * MiB });
    const { c } = await serveAndConnect(device, reuse);
    device.failNext("write", Object.assign(new Error("injected"), { code: "EIO" }));
    const first = patternBytes(4096, 1);
    const second = patternBytes(4096, 2);
    c.write(Buffer.concat([writeRequest(1, 0, first), writeRequest(2, MiB, second)]));
    const replies = [await c.readSimpleReply(0), await c.readSimpleReply(0)].sort((a, b) => Number(a.cookie - b.cookie));
    expect(replies[0]!.errno).not.toBe(0);
    expect(replies[1]!.errno).toBe(0);
    c.sendRequest(READ, MiB, 4096, { cookie: 3n });
    expect(Buffer.compare((await c.readSimpleReply(4096)).data!, second)).toBe(0);
  });
});
