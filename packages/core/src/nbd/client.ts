/**
 * An NBD client connection in the transmission phase (NBD spec "Transmission"): READ with structured replies
 * (data, hole and error chunks), WRITE, FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), BLOCK_STATUS and DISC.
 * Requests are pipelined, each with its own cookie; replies are matched by cookie in whatever order the
 * server sends them. Every reply is checked against the request it answers before its payload is read: a
 * server that breaks the protocol fails the connection (every request gets EIO) and is never trusted with
 * memory beyond what the request asked for; a silent server is given up on after the idle timeout.
 */
import * as W from "@qcowkit/nbd-protocol";
import {
  checkChunkLength,
  codeOfErrno,
  decodeBlockStatusChunk,
  decodeChunkHeader,
  decodeErrorChunk,
  decodeOffsetHole,
  decodeSimpleReply,
  encodeOption,
  errnoOfNbdError,
  nbdError,
  readU64,
  writeRequestHeader,
  type NbdError,
} from "@qcowkit/nbd-protocol";
import { Qcow2Error, errnoText, isQcow2Error } from "@qcowkit/spec";
import { negotiate, type NbdExportInfo, type NbdHandshakeOptions } from "./handshake";
import type { NbdTransport } from "./transport";
import { NbdWire } from "./wire";

export interface NbdClientOptions extends NbdHandshakeOptions {
  /** Milliseconds a server may stay silent while the client waits for it (default 60 000; 0: forever). */
  timeoutMs?: number;
  /** Most requests in flight at once (default 16). */
  maxInFlight?: number;
}

/** One block status descriptor: `length` bytes with the context's `flags`. */
export interface NbdStatusRun {
  length: number;
  flags: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_MAX_IN_FLIGHT = 16;
const MAX_U32 = 0xffffffff;
/** How this client's protocol errors begin. */
const PROTOCOL_ERROR = "NBD protocol error: ";

interface Pending {
  cookie: number;
  type: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  into?: Uint8Array;
  /** READ: [start, end) ranges filled so far, relative to `offset`, kept sorted. */
  covered?: [number, number][];
  /** BLOCK_STATUS: the descriptors received per context id. */
  status?: Map<number, NbdStatusRun[]>;
  reqOne?: boolean;
  /** The first error chunk's errno and message. */
  error?: { errno: number; message: string };
  resolve: () => void;
  reject: (error: Error) => void;
}

export class NbdClient {
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  private inFlight = 0;
  private readonly slotWaiters: (() => void)[] = [];
  /** Waiting for the last request in flight to finish (close). */
  private readonly idleWaiters: (() => void)[] = [];
  private readonly maxInFlight: number;
  private readonly contextNames = new Map<number, string>();

  private constructor(
    private readonly wire: NbdWire,
    readonly info: NbdExportInfo,
    opts: NbdClientOptions,
  ) {
    this.maxInFlight = Math.max(1, opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT);
    for (const [name, id] of info.contexts) this.contextNames.set(id, name);
    void this.receiveLoop();
  }

  /** Negotiate on a connected transport. Fails with QEMU's messages; the transport is closed on failure. */
  static async connect(transport: NbdTransport, opts: NbdClientOptions): Promise<NbdClient> {
    const wire = new NbdWire(transport, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    let info: NbdExportInfo;
    try {
      info = await negotiate(wire, opts);
    } catch (e) {
      if (!wire.closed && (e as NbdError).optionRefused) {
        // A soft disconnect: the server refused an option and is still talking to us.
        wire.send(encodeOption(W.NBD_OPT_ABORT));
      }
      await wire.end();
      throw e;
    }
    return new NbdClient(wire, info, opts);
  }

  get size(): number {
    return this.info.size;
  }
  get readOnly(): boolean {
    return (this.info.transmissionFlags & W.NBD_FLAG_READ_ONLY) !== 0;
  }
  private has(flag: number): boolean {
    return (this.info.transmissionFlags & flag) !== 0;
  }
  get canFlush(): boolean {
    return this.has(W.NBD_FLAG_SEND_FLUSH);
  }
  get canFua(): boolean {
    return this.has(W.NBD_FLAG_SEND_FUA);
  }
  get canTrim(): boolean {
    return this.has(W.NBD_FLAG_SEND_TRIM);
  }
  get canWriteZeroes(): boolean {
    return this.has(W.NBD_FLAG_SEND_WRITE_ZEROES);
  }
  get canFastZero(): boolean {
    return this.has(W.NBD_FLAG_SEND_FAST_ZERO) && this.canWriteZeroes;
  }
  get canDf(): boolean {
    return this.has(W.NBD_FLAG_SEND_DF) && this.info.structuredReplies;
  }
  /** True when the metadata context was selected during the handshake. */
  hasContext(name: string): boolean {
    return this.info.contexts.has(name);
  }
  /** True once the connection failed or was closed. */
  get closed(): boolean {
    return this.failure !== undefined || this.closing !== undefined;
  }

  /** Fill `into` with the export's bytes at `offset` (one request: at most the maximum payload). */
  async read(offset: number, into: Uint8Array, opts: { df?: boolean } = {}): Promise<void> {
    this.checkRange(offset, into.byteLength, true);
    const flags = opts.df && this.canDf ? W.NBD_CMD_FLAG_DF : 0;
    await this.request(W.NBD_CMD_READ, flags, offset, into.byteLength, { into });
  }

  /** Write `data` at `offset` (one request: at most the maximum payload). */
  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, data.byteLength, true);
    await this.request(W.NBD_CMD_WRITE, this.fuaFlag(opts.fua), offset, data.byteLength, { payload: data });
  }

  /** NBD_CMD_FLUSH; nothing to do when the server does not take flushes. */
  async flush(): Promise<void> {
    if (!this.canFlush) return;
    await this.request(W.NBD_CMD_FLUSH, 0, 0, 0);
  }

  /** NBD_CMD_TRIM (the server may ignore it); nothing to do when the server does not take trims. */
  async trim(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length, false);
    if (!this.canTrim || length === 0) return;
    await this.request(W.NBD_CMD_TRIM, this.fuaFlag(opts.fua), offset, length);
  }

  /**
   * NBD_CMD_WRITE_ZEROES. `noHole`: the range must stay allocated; `fastZero`: fail with ENOTSUP rather than
   * write zero bytes. Fails with ENOTSUP when the server has no WRITE_ZEROES (or no FAST_ZERO when asked).
   */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean; fastZero?: boolean; fua?: boolean } = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length, false);
    if (!this.canWriteZeroes || (opts.fastZero && !this.canFastZero)) {
      throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    }
    if (length === 0) return;
    const flags = this.fuaFlag(opts.fua) | (opts.noHole ? W.NBD_CMD_FLAG_NO_HOLE : 0) | (opts.fastZero ? W.NBD_CMD_FLAG_FAST_ZERO : 0);
    await this.request(W.NBD_CMD_WRITE_ZEROES, flags, offset, length);
  }

  /**
   * NBD_CMD_BLOCK_STATUS for every selected context: descriptors from `offset`, clipped to the request (the
   * server may describe less than asked; callers ask again from where it stopped).
   */
  async blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<Map<string, NbdStatusRun[]>> {
    if (this.info.contexts.size === 0) {
      throw new Qcow2Error("NOT_SUPPORTED", "The NBD server offers no block status", { errno: "ENOTSUP" });
    }
    this.checkRange(offset, length, false);
    if (length === 0) throw new Qcow2Error("INVALID_ARGUMENT", "Block status of an empty range", { errno: "EINVAL" });
    const status = new Map<number, NbdStatusRun[]>();
    await this.request(W.NBD_CMD_BLOCK_STATUS, opts.reqOne ? W.NBD_CMD_FLAG_REQ_ONE : 0, offset, length, { status, reqOne: opts.reqOne ?? false });
    const out = new Map<string, NbdStatusRun[]>();
    for (const [id, runs] of status) out.set(this.contextNames.get(id)!, runs);
    return out;
  }

  /** Wait for the requests in flight, send NBD_CMD_DISC and hang up (idempotent). */
  close(): Promise<void> {
    this.closing ??= this.disconnect();
    return this.closing;
  }

  private async disconnect(): Promise<void> {
    while (this.inFlight > 0 && this.failure === undefined) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    if (this.failure === undefined && !this.wire.closed) {
      this.wire.send(this.header(W.NBD_CMD_DISC, 0, 0, 0, 0));
    }
    this.failure ??= new Error("Connection closed");
    await this.wire.end();
  }

  private fuaFlag(fua: boolean | undefined): number {
    return fua && this.canFua ? W.NBD_CMD_FLAG_FUA : 0;
  }

  private checkOpen(): void {
    if (this.closing !== undefined) throw new Qcow2Error("IO_ERROR", "The NBD connection is closed", { errno: "EIO" });
    if (this.failure !== undefined) throw this.connectionError();
  }

  private checkWritable(): void {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "The NBD export is read-only", { errno: "EPERM" });
  }

  private checkRange(offset: number, length: number, payload: boolean): void {
    const { size, maximumPayload, minimumBlockSize } = this.info;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || length > size - offset) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
    if (length > MAX_U32 || (payload && length > maximumPayload)) {
      throw new Qcow2Error("INVALID_ARGUMENT", `NBD request of ${length} bytes is too long`, { errno: "EINVAL" });
    }
    if (this.info.blockSizeAdvertised && (offset % minimumBlockSize !== 0 || (length % minimumBlockSize !== 0 && offset + length !== size))) {
      throw new Qcow2Error("INVALID_ARGUMENT", `NBD request not aligned to the server's block size ${minimumBlockSize}`, { errno: "EINVAL" });
    }
  }

  private connectionError(): Qcow2Error {
    const reason = this.failure?.message ?? "Connection closed";
    return new Qcow2Error("IO_ERROR", `NBD server connection failed: ${reason}`, { errno: "EIO", cause: this.failure });
  }

  private header(type: number, flags: number, cookie: number, offset: number, length: number): Uint8Array {
    const b = new Uint8Array(W.REQUEST_HEADER_LENGTH);
    writeRequestHeader(b, 0, { flags, type, cookieHi: 0, cookieLo: cookie, offset, length });
    return b;
  }

  private allocateCookie(): number {
    for (;;) {
      const cookie = this.nextCookie;
      this.nextCookie = this.nextCookie === MAX_U32 ? 1 : this.nextCookie + 1;
      if (!this.pending.has(cookie)) return cookie;
    }
  }

  private async request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    extra: { into?: Uint8Array; payload?: Uint8Array; status?: Map<number, NbdStatusRun[]>; reqOne?: boolean } = {},
  ): Promise<void> {
    this.checkOpen();
    while (this.inFlight >= this.maxInFlight) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
      if (this.closed) {
        // Pass the freed slot on before giving up, so no other waiter is left behind.
        this.slotWaiters.shift()?.();
        this.checkOpen();
      }
    }
    this.inFlight++;
    try {
      const cookie = this.allocateCookie();
      const done = new Promise<void>((resolve, reject) => {
        const p: Pending = { cookie, type, offset, length, resolve, reject };
        if (extra.into) {
          p.into = extra.into;
          p.covered = [];
        }
        if (extra.status) {
          p.status = extra.status;
          p.reqOne = extra.reqOne ?? false;
        }
        this.pending.set(cookie, p);
      });
      this.wire.expect(1);
      this.wire.send(this.header(type, flags, cookie, offset, length));
      if (extra.payload && extra.payload.byteLength > 0) {
        this.wire.send(extra.payload);
        await this.wire.transport.drained?.();
      }
      try {
        await done;
      } finally {
        this.wire.expect(-1);
      }
    } finally {
      this.inFlight--;
      this.slotWaiters.shift()?.();
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Reads replies until the connection ends; any protocol violation fails the whole connection. */
  private async receiveLoop(): Promise<void> {
    const input = this.wire.input;
    try {
      for (;;) {
        await input.need(4);
        const magic = input.peekU32();
        if (magic === W.NBD_SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === W.NBD_STRUCTURED_REPLY_MAGIC && this.info.structuredReplies) await this.structuredChunk();
        else throw this.protocolError(`Unexpected reply magic 0x${magic.toString(16)}`);
      }
    } catch (e) {
      // A decoder's fault (a Qcow2Error of the protocol codec) reads as a protocol error of this connection.
      const error = isQcow2Error(e) && !e.message.startsWith(PROTOCOL_ERROR) ? this.protocolError(e.message) : e instanceof Error ? e : new Error(String(e));
      this.failure ??= error;
      this.wire.fail(error);
      if (this.pending.size > 0) {
        const failure = this.connectionError();
        for (const p of this.pending.values()) p.reject(failure);
        this.pending.clear();
      }
      for (const w of this.slotWaiters.splice(0)) w();
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private take(p: Pending): void {
    this.pending.delete(p.cookie);
  }

  private findPending(cookieHi: number, cookieLo: number): Pending {
    const p = cookieHi === 0 ? this.pending.get(cookieLo) : undefined;
    if (!p) throw this.protocolError(`Unexpected cookie 0x${cookieHi.toString(16)}${cookieLo.toString(16).padStart(8, "0")} in a reply`);
    return p;
  }

  private async simpleReply(): Promise<void> {
    const input = this.wire.input;
    await input.need(W.SIMPLE_REPLY_LENGTH);
    const { errno: error, cookieHi, cookieLo } = decodeSimpleReply(input.take(W.SIMPLE_REPLY_LENGTH));
    const p = this.findPending(cookieHi, cookieLo);
    if (p.type === W.NBD_CMD_READ && this.info.structuredReplies) {
      // That read fails with EINVAL (as in QEMU); the stream cannot be trusted after it.
      this.take(p);
      p.reject(new Qcow2Error("INVALID_ARGUMENT", "NBD protocol error: simple reply to a READ after structured replies were negotiated", { errno: "EINVAL" }));
      throw this.protocolError("Simple reply to a READ after structured replies were negotiated");
    }
    if (p.type === W.NBD_CMD_BLOCK_STATUS && error === 0) throw this.protocolError("Simple reply to BLOCK_STATUS without an error");
    if (error === 0 && p.type === W.NBD_CMD_READ && p.length > 0) {
      await input.need(p.length);
      input.copyTo(p.into!, 0, p.length);
    }
    this.take(p);
    if (error !== 0) p.reject(this.serverError(error, ""));
    else p.resolve();
  }

  private async structuredChunk(): Promise<void> {
    const input = this.wire.input;
    await input.need(W.STRUCTURED_HEADER_LENGTH);
    const h = decodeChunkHeader(input.take(W.STRUCTURED_HEADER_LENGTH));
    const { type, length, done } = h;
    const p = this.findPending(h.cookieHi, h.cookieLo);
    const name = `reply chunk type ${type}`;
    checkChunkLength(h);

    if (type === W.NBD_REPLY_TYPE_NONE) {
      // Nothing to read.
    } else if (type === W.NBD_REPLY_TYPE_OFFSET_DATA) {
      if (p.type !== W.NBD_CMD_READ) throw this.protocolError(`Unexpected ${name} for a request that is not a READ`);
      if (length - 8 > p.length) throw this.protocolError(`OFFSET_DATA chunk of ${length} bytes for a read of ${p.length}`);
      await input.need(length);
      const at = this.chunkOffset(p, readU64(input.take(8), 0), length - 8);
      input.copyTo(p.into!, at, length - 8);
    } else if (type === W.NBD_REPLY_TYPE_OFFSET_HOLE) {
      if (p.type !== W.NBD_CMD_READ) throw this.protocolError(`Unexpected ${name} for a request that is not a READ`);
      await input.need(length);
      const hole = decodeOffsetHole(input.take(length));
      const at = this.chunkOffset(p, hole.offset, hole.length);
      p.into!.fill(0, at, at + hole.length);
    } else if (type === W.NBD_REPLY_TYPE_BLOCK_STATUS) {
      if (p.type !== W.NBD_CMD_BLOCK_STATUS) throw this.protocolError(`Unexpected ${name} for a request that is not a BLOCK_STATUS`);
      await input.need(length);
      this.statusChunk(p, input.take(length));
    } else if ((type & W.NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
      await input.need(length);
      const chunk = decodeErrorChunk(type, input.take(length));
      if (chunk.offset !== undefined && (chunk.offset < p.offset || chunk.offset >= p.offset + Math.max(p.length, 1))) {
        throw this.protocolError("ERROR_OFFSET chunk outside the request");
      }
      p.error ??= { errno: chunk.errno, message: chunk.message };
    } else {
      throw this.protocolError(`Unexpected ${name}`);
    }

    if (!done) return;
    this.take(p);
    if (p.error) {
      p.reject(this.serverError(p.error.errno, p.error.message));
      return;
    }
    const incomplete = this.incompleteReply(p);
    if (incomplete !== undefined) p.reject(new Qcow2Error("IO_ERROR", incomplete, { errno: "EIO" }));
    else p.resolve();
  }

  /** Where a READ content chunk lands in the caller's buffer, after checking it lies in the request and overlaps nothing. */
  private chunkOffset(p: Pending, offset: number, length: number): number {
    const at = offset - p.offset;
    if (!Number.isSafeInteger(offset) || at < 0 || at + length > p.length) throw this.protocolError("Read chunk outside the request");
    const covered = p.covered!;
    // Sorted, non-overlapping ranges: find the insertion point by binary search.
    let lo = 0;
    let hi = covered.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (covered[mid]![0] < at) lo = mid + 1;
      else hi = mid;
    }
    const before = covered[lo - 1];
    const after = covered[lo];
    if ((before && before[1] > at) || (after && after[0] < at + length)) throw this.protocolError("Read chunks overlap");
    if (before && before[1] === at) {
      before[1] = at + length;
      if (after && after[0] === at + length) {
        before[1] = after[1];
        covered.splice(lo, 1);
      }
    } else if (after && after[0] === at + length) {
      after[0] = at;
    } else {
      covered.splice(lo, 0, [at, at + length]);
    }
    return at;
  }

  private statusChunk(p: Pending, payload: Uint8Array): void {
    const { contextId: id, runs } = decodeBlockStatusChunk(payload, p.length);
    if (!this.contextNames.has(id)) throw this.protocolError(`BLOCK_STATUS chunk for unknown context id ${id}`);
    if (p.status!.has(id)) throw this.protocolError(`Two BLOCK_STATUS chunks for context id ${id}`);
    const count = (payload.byteLength - 4) / 8;
    if (p.reqOne && count !== 1) throw this.protocolError(`BLOCK_STATUS chunk with ${count} descriptors for a REQ_ONE request`);
    p.status!.set(id, runs);
  }

  /** Why a successful-looking reply is not a complete answer, or undefined when it is. */
  private incompleteReply(p: Pending): string | undefined {
    if (p.type === W.NBD_CMD_READ && p.length > 0) {
      const c = p.covered!;
      if (c.length !== 1 || c[0]![0] !== 0 || c[0]![1] !== p.length) return "NBD server sent an incomplete read reply";
    }
    if (p.type === W.NBD_CMD_BLOCK_STATUS) {
      for (const [id, name] of this.contextNames) {
        if (!p.status!.has(id)) return `NBD server sent no block status for context '${name}'`;
      }
    }
    return undefined;
  }

  private serverError(value: number, message: string): Qcow2Error {
    const errno = errnoOfNbdError(value);
    return new Qcow2Error(codeOfErrno(errno), message !== "" ? message : errnoText[errno], { errno });
  }

  private protocolError(message: string): Error {
    return nbdError("IO_ERROR", `${PROTOCOL_ERROR}${message}`, { errno: "EIO" });
  }
}
