/**
 * A ByteStore on an NBD export, so qimg and qio open `nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST[:PORT]/EXPORT`
 * and the legacy `nbd:unix:PATH[:exportname=NAME]` / `nbd:HOST:PORT[:exportname=NAME]` names as QEMU does.
 * Fixed newstyle handshake with NBD_OPT_GO, simple replies, one request at a time (split at 32 MiB).
 */
import * as net from "node:net";
import { Qcow2Error, type ByteStore, type Errno } from "@qcowkit/spec";

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;
const TF_READ_ONLY = 2;
const TF_SEND_FLUSH = 4;
const TF_SEND_TRIM = 32;
const TF_SEND_WRITE_ZEROES = 64;
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;
const CMD_TRIM = 4;
const CMD_WRITE_ZEROES = 6;
const CMD_FLAG_NO_HOLE = 2;
const MAX_REQUEST_BYTES = 32 * 1024 * 1024;

/** NBD error numbers as errnos. */
const NBD_ERRNO: Record<number, Errno> = { 1: "EPERM", 5: "EIO", 22: "EINVAL", 28: "ENOSPC", 95: "ENOTSUP" };

export interface NbdAddress {
  path?: string;
  host?: string;
  port?: number;
  exportName: string;
}

/** The NBD address of an image name, or undefined for a plain file name. */
export function parseNbdName(name: string): NbdAddress | undefined {
  const uri = /^nbd(\+unix|\+tcp)?:\/\/([^/?]*)\/?([^?]*)(?:\?(.*))?$/.exec(name);
  if (uri) {
    const params = new URLSearchParams(uri[4] ?? "");
    const exportName = decodeURIComponent(uri[3] ?? "");
    if (uri[1] === "+unix") {
      const socket = params.get("socket");
      if (!socket) throw new Qcow2Error("INVALID_ARGUMENT", "NBD URI with unix transport needs a socket parameter");
      return { path: socket, exportName };
    }
    const hostPort = /^(\[[^\]]+\]|[^:]*)(?::(\d+))?$/.exec(uri[2] ?? "");
    const host = (hostPort?.[1] ?? "").replace(/^\[|\]$/g, "") || "localhost";
    return { host, port: Number(hostPort?.[2] ?? 10809), exportName };
  }
  const legacy = /^nbd:(unix:([^:]+)|([^:]+):(\d+))(?::exportname=(.*))?$/.exec(name);
  if (legacy) {
    const exportName = legacy[5] ?? "";
    return legacy[2] !== undefined ? { path: legacy[2], exportName } : { host: legacy[3]!, port: Number(legacy[4]), exportName };
  }
  return undefined;
}

/** Bytes from a socket, taken in exact amounts. */
class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(socket: net.Socket) {
    socket.on("data", (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.pump();
    });
    const fail = (e: Error) => {
      this.failure ??= e;
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = undefined;
        w.reject(this.failure);
      }
    };
    socket.on("error", fail);
    socket.on("close", () => fail(new Error("Connection closed")));
  }

  private pump(): void {
    const w = this.waiting;
    if (!w || this.buffered < w.n) return;
    this.waiting = undefined;
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
    this.buffered = all.length - w.n;
    w.resolve(all.subarray(0, w.n));
  }

  read(n: number): Promise<Buffer> {
    if (this.buffered >= n || this.failure === undefined) {
      return new Promise((resolve, reject) => {
        this.waiting = { n, resolve, reject };
        this.pump();
      });
    }
    return Promise.reject(this.failure);
  }
}

export class NbdStore implements ByteStore {
  readonly readOnly: boolean;
  private queue: Promise<unknown> = Promise.resolve();
  private cookie = 0n;
  private closed = false;

  private constructor(
    readonly name: string,
    private readonly socket: net.Socket,
    private readonly reader: SocketReader,
    private readonly exportSize: number,
    private readonly flags: number,
    readOnly: boolean,
  ) {
    this.readOnly = readOnly;
  }

  /** Connect and negotiate. A read-write open of a read-only export fails as QEMU's does. */
  static async connect(name: string, address: NbdAddress, opts: { readOnly: boolean }): Promise<NbdStore> {
    const socket = address.path !== undefined ? net.connect({ path: address.path }) : net.connect({ host: address.host!, port: address.port! });
    const reader = new SocketReader(socket);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("error", reject);
      });
      const hello = await reader.read(18);
      if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
        throw new Qcow2Error("IO_ERROR", "The server is not a newstyle NBD server");
      }
      const serverFlags = hello.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new Qcow2Error("NOT_SUPPORTED", "The server does not speak fixed newstyle NBD");
      const clientFlags = Buffer.alloc(4);
      clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
      socket.write(clientFlags);
      const exportName = Buffer.from(address.exportName, "utf8");
      const opt = Buffer.alloc(16 + 4 + exportName.length + 2);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(OPT_GO, 8);
      opt.writeUInt32BE(4 + exportName.length + 2, 12);
      opt.writeUInt32BE(exportName.length, 16);
      exportName.copy(opt, 20);
      opt.writeUInt16BE(0, 20 + exportName.length);
      socket.write(opt);
      let size: number | undefined;
      let flags = 0;
      for (;;) {
        const head = await reader.read(20);
        if (head.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Qcow2Error("IO_ERROR", "Bad option reply from the NBD server");
        const type = head.readUInt32BE(12);
        const data = await reader.read(head.readUInt32BE(16));
        if (type & 0x80000000) {
          const message = data.length > 0 ? data.toString("utf8") : `option error ${type & 0x7fffffff}`;
          throw new Qcow2Error("IO_ERROR", `Requested export not available: ${message}`);
        }
        if (type === REP_INFO && data.length >= 12 && data.readUInt16BE(0) === INFO_EXPORT) {
          size = Number(data.readBigUInt64BE(2));
          flags = data.readUInt16BE(10);
        }
        if (type === REP_ACK) break;
      }
      if (size === undefined) throw new Qcow2Error("IO_ERROR", "The NBD server did not send the export size");
      const exportReadOnly = (flags & TF_READ_ONLY) !== 0;
      if (exportReadOnly && !opts.readOnly) {
        throw new Qcow2Error("IO_ERROR", "Could not open image: Permission denied", { errno: "EACCES" });
      }
      return new NbdStore(name, socket, reader, size, flags, opts.readOnly || exportReadOnly);
    } catch (e) {
      socket.destroy();
      if (e instanceof Qcow2Error) throw e;
      const code = (e as { code?: string }).code;
      const text = code === "ENOENT" ? "No such file or directory" : code === "ECONNREFUSED" ? "Connection refused" : (e as Error).message;
      throw new Qcow2Error("IO_ERROR", `Failed to connect to '${address.path ?? `${address.host}:${address.port}`}': ${text}`);
    }
  }

  /** One request and its simple reply (requests are serialised). */
  private request(type: number, offset: number, length: number, opts: { data?: Uint8Array; flags?: number } = {}): Promise<Buffer | undefined> {
    const run = async () => {
      if (this.closed) throw new Qcow2Error("IO_ERROR", "NBD connection closed", { errno: "EIO" });
      const head = Buffer.alloc(28);
      head.writeUInt32BE(REQUEST_MAGIC, 0);
      head.writeUInt16BE(opts.flags ?? 0, 4);
      head.writeUInt16BE(type, 6);
      const cookie = ++this.cookie;
      head.writeBigUInt64BE(cookie, 8);
      head.writeBigUInt64BE(BigInt(offset), 16);
      head.writeUInt32BE(length, 24);
      this.socket.write(head);
      if (opts.data) this.socket.write(opts.data);
      const reply = await this.reader.read(16);
      if (reply.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC || reply.readBigUInt64BE(8) !== cookie) {
        throw new Qcow2Error("IO_ERROR", "Bad reply from the NBD server", { errno: "EIO" });
      }
      const error = reply.readUInt32BE(4);
      if (error !== 0) {
        const errno = NBD_ERRNO[error] ?? "EIO";
        throw new Qcow2Error(errno === "ENOTSUP" ? "NOT_SUPPORTED" : "IO_ERROR", `NBD server error ${error}`, { errno });
      }
      return type === CMD_READ ? await this.reader.read(length) : undefined;
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  private checkRange(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.exportSize) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EIO" });
    }
  }

  private assertWritable(): void {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    // Past the end of the export reads zeros (the ByteStore contract).
    const inside = Math.max(0, Math.min(into.byteLength, this.exportSize - offset));
    for (let done = 0; done < inside; done += MAX_REQUEST_BYTES) {
      const n = Math.min(MAX_REQUEST_BYTES, inside - done);
      const data = await this.request(CMD_READ, offset + done, n);
      into.set(data!, done);
    }
    if (inside < into.byteLength) into.fill(0, inside);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertWritable();
    this.checkRange(offset, data.byteLength);
    for (let done = 0; done < data.byteLength; done += MAX_REQUEST_BYTES) {
      const n = Math.min(MAX_REQUEST_BYTES, data.byteLength - done);
      await this.request(CMD_WRITE, offset + done, n, { data: data.subarray(done, done + n) });
    }
  }

  async flush(): Promise<void> {
    if (!this.readOnly && this.flags & TF_SEND_FLUSH) await this.request(CMD_FLUSH, 0, 0);
  }

  async size(): Promise<number> {
    return this.exportSize;
  }

  async resize(size: number): Promise<void> {
    if (size === this.exportSize) return;
    throw new Qcow2Error("NOT_SUPPORTED", "Cannot resize an NBD export", { errno: "ENOTSUP" });
  }

  async discard(offset: number, length: number): Promise<void> {
    this.assertWritable();
    this.checkRange(offset, length);
    if (!(this.flags & TF_SEND_TRIM)) return;
    for (let done = 0; done < length; done += MAX_REQUEST_BYTES) {
      await this.request(CMD_TRIM, offset + done, Math.min(MAX_REQUEST_BYTES, length - done));
    }
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.assertWritable();
    this.checkRange(offset, length);
    for (let done = 0; done < length; done += MAX_REQUEST_BYTES) {
      const n = Math.min(MAX_REQUEST_BYTES, length - done);
      if (this.flags & TF_SEND_WRITE_ZEROES) {
        await this.request(CMD_WRITE_ZEROES, offset + done, n, { flags: unmap ? 0 : CMD_FLAG_NO_HOLE });
      } else {
        await this.request(CMD_WRITE, offset + done, n, { data: new Uint8Array(n) });
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // NBD_CMD_DISC has no reply: send it after the requests in flight, then hang up.
    await this.queue;
    this.closed = true;
    const head = Buffer.alloc(28);
    head.writeUInt32BE(REQUEST_MAGIC, 0);
    head.writeUInt16BE(CMD_DISC, 6);
    await new Promise<void>((resolve) => this.socket.end(head, () => resolve()));
    this.socket.destroy();
  }
}
