/** A deliberately low-level NBD client for tests: sends arbitrary bytes and parses what comes back. */
import * as net from "node:net";

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_MAGIC = 0x67446698;
export const STRUCTURED_MAGIC = 0x668e33ef;
const IHAVEOPT = Buffer.from("IHAVEOPT");

export interface SimpleReply {
  kind: "simple";
  errno: number;
  cookie: bigint;
  data?: Buffer;
}

export interface Chunk {
  kind: "chunk";
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export class RawClient {
  private buffered = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  closed = false;
  readonly whenClosed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on("data", (d: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, d]);
      this.waiter?.();
    });
    this.whenClosed = new Promise((resolve) =>
      socket.on("close", () => {
        this.closed = true;
        this.waiter?.();
        resolve();
      }),
    );
    socket.on("error", () => {});
  }

  static connect(target: number | string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = typeof target === "number" ? net.connect(target, "127.0.0.1") : net.connect(target);
      socket.once("connect", () => resolve(new RawClient(socket)));
      socket.once("error", reject);
    });
  }

  write(data: Uint8Array): void {
    this.socket.write(data);
  }

  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  get bufferedLength(): number {
    return this.buffered.length;
  }

  /** Reads exactly n bytes; rejects if the connection closes first or after `timeoutMs`. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buffered.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out reading ${n} bytes (have ${this.buffered.length})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return Buffer.from(out);
  }

  /** Resolves true if the server closes the connection within `timeoutMs`. */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    const timeout = new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs));
    return Promise.race([this.whenClosed.then(() => true), timeout]);
  }

  /** Reads the greeting and sends client flags (fixed newstyle + no zeroes by default). */
  async greet(clientFlags = 3): Promise<Buffer> {
    const greeting = await this.read(18);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return greeting;
  }

  sendOption(option: number, data: Uint8Array = Buffer.alloc(0), declaredLength = data.byteLength): void {
    const h = Buffer.alloc(16);
    IHAVEOPT.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength, 12);
    this.write(Buffer.concat([h, data]));
  }

  /** Reads one option reply. */
  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readUInt32BE(0) !== 0x0003e889 || h.readUInt32BE(4) !== 0x045565a9) throw new Error("bad option reply magic");
    const length = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(length) };
  }

  /** Reads option replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<{ option: number; type: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === 1 || r.type >= 0x80000000) return out;
    }
  }

  /** Full handshake: optional structured replies and meta contexts, then GO. Returns size, flags, context ids. */
  async handshake(
    opts: { structured?: boolean; contexts?: string[]; exportName?: string } = {},
  ): Promise<{ size: bigint; flags: number; contextIds: Map<string, number> }> {
    await this.greet();
    const contextIds = new Map<string, number>();
    if (opts.structured) {
      this.sendOption(8);
      const [r] = await this.readOptionReplies();
      if (r!.type !== 1) throw new Error(`structured reply refused: ${r!.type}`);
    }
    const name = Buffer.from(opts.exportName ?? "");
    if (opts.contexts) {
      const parts = [u32(name.length), name, u32(opts.contexts.length)];
      for (const c of opts.contexts) parts.push(u32(Buffer.byteLength(c)), Buffer.from(c));
      this.sendOption(10, Buffer.concat(parts));
      for (const r of await this.readOptionReplies()) {
        if (r.type === 4) contextIds.set(r.data.subarray(4).toString(), r.data.readUInt32BE(0));
      }
    }
    this.sendOption(7, Buffer.concat([u32(name.length), name, u16(0)]));
    let size = -1n;
    let flags = 0;
    for (const r of await this.readOptionReplies()) {
      if (r.type >= 0x80000000) throw new Error(`GO failed: ${r.type.toString(16)} ${r.data.toString()}`);
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        size = r.data.readBigUInt64BE(2);
        flags = r.data.readUInt16BE(10);
      }
    }
    return { size, flags, contextIds };
  }

  sendRequest(type: number, offset: bigint | number, length: number, opts: { flags?: number; cookie?: bigint; payload?: Uint8Array } = {}): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(opts.cookie ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
  }

  /** Reads a simple reply, plus `dataLength` bytes when it reports success. */
  async readSimpleReply(dataLength = 0, timeoutMs = 5000): Promise<SimpleReply> {
    const h = await this.read(16, timeoutMs);
    if (h.readUInt32BE(0) !== SIMPLE_MAGIC) throw new Error(`expected a simple reply, magic 0x${h.readUInt32BE(0).toString(16)}`);
    const errno = h.readUInt32BE(4);
    const reply: SimpleReply = { kind: "simple", errno, cookie: h.readBigUInt64BE(8) };
    if (errno === 0 && dataLength > 0) reply.data = await this.read(dataLength, timeoutMs);
    return reply;
  }

  /** Reads one reply message: a simple reply (no data) or a structured chunk. */
  async readMessage(timeoutMs = 5000): Promise<SimpleReply | Chunk> {
    const magic = (await this.read(4, timeoutMs)).readUInt32BE(0);
    if (magic === SIMPLE_MAGIC) {
      const rest = await this.read(12, timeoutMs);
      return { kind: "simple", errno: rest.readUInt32BE(0), cookie: rest.readBigUInt64BE(4) };
    }
    if (magic !== STRUCTURED_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const rest = await this.read(16, timeoutMs);
    const length = rest.readUInt32BE(12);
    return {
      kind: "chunk",
      flags: rest.readUInt16BE(0),
      type: rest.readUInt16BE(2),
      cookie: rest.readBigUInt64BE(4),
      payload: await this.read(length, timeoutMs),
    };
  }

  /** Reads structured chunks of one reply until the DONE flag. */
  async readStructuredReply(timeoutMs = 5000): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (;;) {
      const m = await this.readMessage(timeoutMs);
      if (m.kind !== "chunk") throw new Error("expected a structured chunk");
      chunks.push(m);
      if (m.flags & 1) return chunks;
    }
  }
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
