/** ReceiveBuffers: a buffer lent out is not read into again until every view of it is given back. */
import * as net from "node:net";
import { describe, expect, it } from "vitest";
import { ReceiveBuffers } from "../../src/receive-buffers";
import { readingInto } from "../../src/socket-reader";

describe("ReceiveBuffers", () => {
  it("keeps reading into the same buffer while nothing is lent", () => {
    const r = new ReceiveBuffers(1024);
    const first = r.buffer;
    r.rotate();
    expect(r.buffer).toBe(first);
    expect(r.owns(first.subarray(10, 20))).toBe(true);
    expect(r.owns(new Uint8Array(8))).toBe(false);
  });

  it("moves to another buffer while views are lent, and reuses the lent one once all are back", () => {
    const r = new ReceiveBuffers(1024);
    const first = r.buffer;
    const a = first.subarray(0, 100);
    const b = first.subarray(100, 200);
    r.lend(a);
    r.lend(b);
    r.rotate();
    const second = r.buffer;
    expect(second.buffer).not.toBe(first.buffer);
    expect(r.giveBack(a)).toBe(true);
    r.lend(second.subarray(0, 5));
    r.rotate();
    // `first` still has a view out: a third buffer.
    expect(r.buffer.buffer).not.toBe(first.buffer);
    expect(r.buffer.buffer).not.toBe(second.buffer);
    expect(r.giveBack(b)).toBe(true);
    expect(r.lentCount).toBe(1);
    r.lend(r.buffer.subarray(0, 1));
    r.rotate();
    expect(r.buffer.buffer).toBe(first.buffer);
  });

  it("never reads again into a buffer whose view a failed call may still use", () => {
    const r = new ReceiveBuffers(1024);
    const first = r.buffer;
    const a = first.subarray(0, 10);
    r.lend(a);
    r.rotate();
    expect(r.giveBack(a, false)).toBe(true);
    expect(r.owns(a)).toBe(false);
    expect(r.lentCount).toBe(0);
    for (let i = 0; i < 4; i++) {
      r.lend(r.buffer.subarray(0, 1));
      r.rotate();
      expect(r.buffer.buffer).not.toBe(first.buffer);
    }
  });

  it("lets at most maxLent buffers out at once, any number of views of each", () => {
    const r = new ReceiveBuffers(1024, 8, 2);
    const views: Uint8Array[] = [];
    for (let i = 0; i < 2; i++) {
      const v = r.buffer.subarray(0, 1);
      expect(r.canLend(v)).toBe(true);
      r.lend(v);
      views.push(v);
      expect(r.canLend(r.buffer.subarray(5, 6))).toBe(true); // the same buffer again
      r.rotate();
    }
    expect(r.canLend(r.buffer.subarray(0, 1))).toBe(false);
    r.giveBack(views[0]!);
    expect(r.canLend(r.buffer.subarray(0, 1))).toBe(true);
  });

  it("does not take back views of other memory", () => {
    const r = new ReceiveBuffers(1024);
    expect(r.giveBack(new Uint8Array(16))).toBe(false);
  });
});

describe("readingInto", () => {
  it("moves an accepted, paused socket to reads into the given buffers; the accepted object is done", async () => {
    const small = Buffer.alloc(4);
    const got: string[] = [];
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
    const adopted = new Promise<{ socket: net.Socket | undefined; accepted: net.Socket }>((resolve) =>
      server.once("connection", (accepted) => {
        const socket = readingInto(accepted, {
          nextBuffer: () => small,
          onRead: (n, buffer) => {
            expect(buffer).toBe(small);
            got.push(buffer.subarray(0, n).toString());
          },
        });
        resolve({ socket, accepted });
      }),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const { socket, accepted } = await adopted;
    try {
      expect(socket).toBeDefined();
      expect(accepted.destroyed).toBe(true);
      const ended = new Promise((r) => socket!.once("end", r));
      client.end("hello, reused memory");
      await ended;
      expect(got.join("")).toBe("hello, reused memory");
      // Reads into the 4-byte buffer come in at most 4 bytes.
      expect(got.every((s) => s.length <= 4)).toBe(true);
      // The server no longer counts the accepted object: close() finishes with the adopted socket still open.
      await new Promise<void>((r) => server.close(() => r()));
    } finally {
      socket?.destroy();
      client.destroy();
    }
  });

  it("leaves sockets it cannot move alone: no handle, or already reading", async () => {
    const target = { nextBuffer: () => Buffer.alloc(16), onRead: () => undefined };
    expect(readingInto(new net.Socket(), target)).toBeUndefined();
    const server = net.createServer({ allowHalfOpen: true });
    const accepted = new Promise<net.Socket>((resolve) => server.once("connection", resolve));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const client = net.connect((server.address() as net.AddressInfo).port, "127.0.0.1");
    const socket = await accepted;
    try {
      // Not paused (no pauseOnConnect): it reads with 'data' events already.
      expect(readingInto(socket, target)).toBeUndefined();
      expect(socket.destroyed).toBe(false);
    } finally {
      socket.destroy();
      client.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
