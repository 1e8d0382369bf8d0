/**
 * One client connection: reads the handshake and then pipelined requests from the socket, runs them on the
 * shared device concurrently and writes each reply as soon as it is ready (replies may overtake each other).
 * Memory is bounded: option data is capped, and the connection stops reading requests while too many are
 * outstanding or too many payload/reply bytes are held (its own and the server-wide budget).
 */
import type { Socket } from "node:net";
import { isQcow2Error } from "@qcowkit/spec";
import * as tls from "node:tls";
import type { BlockImage, BlockStatusExtent } from "./device";
import type { MemoryBudget } from "./budget";
import { BufferPool } from "./buffer-pool";
import { ReceiveBuffers } from "./receive-buffers";
import { readingInto } from "./socket-reader";
import * as W from "@qcowkit/nbd-protocol";
import {
  ByteQueue,
  Negotiator,
  allocationDepthFlags,
  allocationFlags,
  checkRequest,
  commandNames,
  decodeClientFlags,
  decodeOptionHeader,
  decodeRequestHeader,
  dirtyFlags,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeGreeting,
  errorMessageOf,
  nbdErrnoOf,
  optionNames,
  statusRuns,
  writeChunkHeader,
  writeOffsetDataPrefix,
  writeOffsetHole,
  writeSimpleReply,
  type ExportDescriptor,
  type MetaContext,
  type NbdRequest,
  type StatusRun,
  type TransmissionLimits,
} from "@qcowkit/nbd-protocol";

export type CacheMode = "none" | "writeback" | "writethrough" | "directsync" | "unsafe";
export type DiscardMode = "ignore" | "unmap";

/** The export as served: device, what clients see, and how writes are treated. */
export interface ExportConfig {
  device: BlockImage;
  descriptor: ExportDescriptor;
  /** ignore: TRIM does nothing and WRITE_ZEROES never deallocates; unmap: both may deallocate. */
  discard: DiscardMode;
  /** writethrough/directsync: every write is durable before its reply; unsafe: flushes are skipped. */
  cache: CacheMode;
}

export interface ConnectionLimits {
  /** Longest option data accepted during the handshake (bytes); longer options close the connection. */
  maxOptionData: number;
  /** Requests accepted but not fully replied to, before reading pauses. */
  maxOutstanding: number;
  /** Bytes of payloads and replies held for this connection, before reading pauses. */
  maxConnectionBytes: number;
  /** Milliseconds from accept to the end of the handshake (0 = no limit). */
  handshakeTimeoutMs: number;
  /** Options accepted in one handshake; one more closes the connection. */
  maxOptions: number;
  /** Bytes of handshake replies not yet handed to the kernel, before reading options pauses. */
  maxHandshakeReplyBytes: number;
  /**
   * A connection holding nothing may take one request costing at most this much even when the server-wide
   * budget is spent, so that clients pinning the budget (large writes whose payload never comes) cannot stall
   * everyone else's small requests. The server's ceiling is therefore the budget plus this per connection.
   */
  idleRequestBytes: number;
  /** Reads at least this long are answered sparsely (hole chunks) when structured replies are on. */
  sparseReadMinimum: number;
}

export const defaultConnectionLimits: ConnectionLimits = {
  maxOptionData: 64 * 1024,
  maxOutstanding: 128,
  // 4 MiB: 16 of nbdcopy's 256 KiB requests per connection keep a Unix socket busy; 16 MiB made qnbd's peak
  // RSS under nbdcopy's 4 connections about 25 MiB higher for no measurable speed (docs/nbd-performance.md).
  maxConnectionBytes: 4 * 1024 * 1024,
  handshakeTimeoutMs: 10_000,
  maxOptions: 256,
  maxHandshakeReplyBytes: 64 * 1024,
  idleRequestBytes: 64 * 1024,
  sparseReadMinimum: 64 * 1024,
};

export interface ConnectionOptions {
  /** TLS socket options when TLS is required; undefined for NOTLS. */
  tls?: tls.TLSSocketOptions;
  budget: MemoryBudget;
  /** Where large payload buffers come from (shared by a server's connections). */
  pool?: BufferPool;
  limits?: Partial<ConnectionLimits>;
  log?: (message: string) => void;
  /**
   * Read the socket into reused memory (socket-reader.ts) instead of a new Buffer per read: an accepted,
   * paused socket that has read nothing, without TLS. Default true; where Node does not allow it the socket's
   * 'data' events are used.
   */
  reuseReadMemory?: boolean;
}

/** Fixed bytes charged per request besides its payload, so floods of tiny requests are bounded too. */
const REQUEST_OVERHEAD = 64;
/** Milliseconds to wait for a peer to close after our end() before destroying the socket. */
const CLOSE_GRACE_MS = 5_000;

type State =
  | "flags"
  | "option"
  | "optionData"
  | "upgrading"
  | "request"
  | "payload"
  | "drain"
  | "closing"
  | "closed";

export class NbdConnection {
  /** Resolves once the socket is closed and every charge released. */
  readonly closed: Promise<void>;
  /** True once the client reached the transmission phase. */
  inTransmission = false;

  private sock: Socket;
  private state: State = "flags";
  private readonly input = new ByteQueue();
  /** The memory socket reads go into, when the socket reads into reused memory (else undefined). */
  private readonly receive: ReceiveBuffers | undefined;
  /** A WRITE payload the socket reads straight into (its first `directFilled` bytes are in). */
  private direct: Uint8Array | undefined;
  private directFilled = 0;
  private readonly negotiator: Negotiator;
  private readonly limits: ConnectionLimits;
  private readonly exp: ExportConfig;
  private readonly budget: MemoryBudget;
  private readonly pool: BufferPool;
  private readonly log: (message: string) => void;
  private readonly tlsOptions: tls.TLSSocketOptions | undefined;
  private optionType = 0;
  private optionLength = 0;
  private pending: NbdRequest | undefined;
  /** A request header read but not yet accepted: its cost did not fit the budgets. */
  private held: NbdRequest | undefined;
  private options = 0;
  private drainLeft = 0;
  private outstanding = 0;
  private charged = 0;
  private throttled = false;
  private structured = false;
  private contexts: MetaContext[] = [];
  private requestLimits: TransmissionLimits | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;
  private resolveClosed!: () => void;

  constructor(socket: Socket, exp: ExportConfig, opts: ConnectionOptions) {
    this.sock = socket;
    this.exp = exp;
    this.budget = opts.budget;
    this.pool = opts.pool ?? new BufferPool();
    this.log = opts.log ?? (() => {});
    this.tlsOptions = opts.tls;
    this.limits = { ...defaultConnectionLimits, ...opts.limits };
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.negotiator = new Negotiator(exp.descriptor, { tlsRequired: opts.tls !== undefined });
    if (opts.tls === undefined && opts.reuseReadMemory !== false) {
      // Set first: the new socket asks for its first buffer as it is built.
      this.receive = new ReceiveBuffers();
      const adopted = readingInto(socket, { nextBuffer: this.nextBuffer, onRead: this.onRead });
      if (adopted) this.sock = socket = adopted;
      else this.receive = undefined;
    }
    if (typeof socket.setNoDelay === "function") socket.setNoDelay(true);
    this.attach(socket);
    if (this.limits.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => this.abort("handshake timed out"), this.limits.handshakeTimeoutMs);
      this.handshakeTimer.unref();
    }
    socket.write(encodeGreeting());
  }

  /** Stops reading, lets requests in flight finish and closes. Handshakes in progress are closed at once. */
  shutdown(): Promise<void> {
    if (this.state === "closed") return this.closed;
    if (!this.inTransmission) this.abort("server shutting down");
    else this.beginClosing();
    return this.closed;
  }

  /** Closes immediately, dropping anything in flight. */
  destroy(): void {
    this.sock.destroy();
  }

  /** Starts reading (the socket is handed over paused). */
  start(): void {
    this.sock.resume();
  }

  /** Whether the socket reads into reused memory (socket-reader.ts). */
  get readsIntoReusedMemory(): boolean {
    return this.receive !== undefined;
  }

  // ---- socket plumbing ------------------------------------------------------------------------------

  private readonly onData = (chunk: Buffer): void => {
    if (this.state === "closing" || this.state === "closed") return;
    this.input.push(chunk);
    this.pump();
  };

  /** The buffer the next socket read goes into: the rest of a WRITE payload being received, or a receive buffer. */
  private readonly nextBuffer = (): Uint8Array => {
    const direct = this.direct;
    if (direct) return direct.subarray(this.directFilled);
    return this.receive!.buffer;
  };

  /** Bytes read into reused memory: parsed now; what must wait for more bytes is moved out of the buffer. */
  private readonly onRead = (n: number, buffer: Uint8Array): void => {
    if (this.state === "closing" || this.state === "closed") return;
    const direct = this.direct;
    if (direct && buffer.buffer === direct.buffer) {
      this.directFilled += n;
      if (this.directFilled < direct.byteLength) return;
      this.direct = undefined;
      this.payloadReceived(direct);
    } else {
      this.input.push(buffer.subarray(0, n));
    }
    this.pump();
    this.keepLeftovers();
  };

  /**
   * After a read was parsed: the bytes left in the queue are copied out of the receive buffer, which the next
   * read reuses, except a WRITE payload's first part: its buffer is allocated now and the socket reads the rest
   * straight into it.
   */
  private keepLeftovers(): void {
    const receive = this.receive!;
    if (this.state === "payload" && this.pending && this.direct === undefined && this.input.length < this.pending.length) {
      const payload = this.allocate(this.pending.length);
      const have = this.input.length;
      this.input.copyTo(payload, 0, have);
      this.direct = payload;
      this.directFilled = have;
    } else if (this.input.length > 0) {
      const rest = this.input.drain();
      // A copy (a Buffer's slice() would be a view).
      for (const chunk of rest) this.input.push(receive.owns(chunk) ? new Uint8Array(chunk) : chunk);
    }
    receive.rotate();
  }

  /**
   * A WRITE payload being received will not be completed (the connection is closing). Its buffer is not
   * given back to the pool: the socket may still read into it (reading goes on until the peer closes).
   */
  private dropDirect(): void {
    this.direct = undefined;
  }

  private readonly onEnd = (): void => {
    // The client will send nothing more; finish what is in flight, then close our side.
    this.beginClosing();
  };

  private readonly onError = (error: Error): void => {
    this.log(`connection error: ${error.message}`);
    this.sock.destroy();
  };

  private readonly onClose = (): void => {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.closeTimer);
    this.budget.cancelWait(this.wake);
    this.budget.release(this.charged);
    this.charged = 0;
    this.outstanding = 0;
    this.input.drain();
    this.dropDirect();
    this.resolveClosed();
  };

  private attach(socket: Socket): void {
    socket.on("data", this.onData);
    socket.on("end", this.onEnd);
    socket.on("error", this.onError);
    socket.on("close", this.onClose);
  }

  private detach(socket: Socket): void {
    socket.off("data", this.onData);
    socket.off("end", this.onEnd);
    socket.off("error", this.onError);
    socket.off("close", this.onClose);
  }

  /** Hard disconnect (protocol violation, timeout). */
  private abort(reason: string): void {
    if (this.state === "closed") return;
    this.log(`closing connection: ${reason}`);
    this.state = "closing";
    this.sock.destroy();
  }

  /** Soft close: no more reading; end the socket once every reply has been written. */
  private beginClosing(): void {
    if (this.state === "closing" || this.state === "closed") return;
    this.state = "closing";
    this.input.drain();
    // A socket reading into reused memory stops reading altogether when paused, and would then never see the
    // peer close: it reads on, and onRead drops what comes.
    if (!this.receive) this.sock.pause();
    this.dropDirect();
    const half = this.pending;
    if (half) {
      // A write whose payload will never arrive: drop it.
      this.pending = undefined;
      this.settle(REQUEST_OVERHEAD + half.length);
    }
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.state !== "closing" || this.outstanding > 0 || this.closeTimer) return;
    this.sock.end();
    this.closeTimer = setTimeout(() => this.sock.destroy(), CLOSE_GRACE_MS);
    this.closeTimer.unref();
  }

  /**
   * Writes one message; `cost` (charged earlier) is released, and `written` called, once its last byte is
   * handed to the kernel (or the socket is gone).
   */
  private send(parts: readonly Uint8Array[], cost: number, written?: () => void): void {
    const s = this.sock;
    if (this.state === "closed" || s.destroyed || s.writableEnded) {
      written?.();
      this.settle(cost);
      return;
    }
    // Replies finished in the same event-loop turn leave in one writev: cork now, uncork after I/O callbacks.
    if (!this.corked) {
      this.corked = true;
      s.cork();
      setImmediate(this.uncork);
    }
    const last = parts.length - 1;
    for (let i = 0; i < last; i++) s.write(parts[i]!);
    s.write(parts[last]!, () => {
      written?.();
      this.settle(cost);
    });
  }

  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.sock.uncork();
  };

  /** A request's reply is out: release its charge and maybe resume reading. */
  private settle(cost: number): void {
    if (this.state === "closed") return;
    this.outstanding--;
    this.charged -= cost;
    this.budget.release(cost);
    if (this.state === "closing") this.maybeEnd();
    else if (this.throttled && !this.mustThrottle()) this.wake();
  }

  /** Whether reading must stay paused in the current state. */
  private mustThrottle(): boolean {
    if (this.state === "option") return this.handshakeBlocked();
    if (this.outstanding >= this.limits.maxOutstanding) return true;
    return this.held !== undefined && this.requestBlocked(this.held);
  }

  /** Unsent option replies pause the handshake: a client that never reads them cannot grow the server. */
  private handshakeBlocked(): boolean {
    return this.charged > 0 && (this.charged >= this.limits.maxHandshakeReplyBytes || this.budget.exhausted);
  }

  /**
   * Whether `req` must wait: its cost would take the connection past its own limit or the server past its
   * budget. The budget is a ceiling for everything but one small request per idle connection (see
   * `idleRequestBytes`); a request larger than the whole budget may go only while nothing else is held.
   */
  private requestBlocked(req: NbdRequest): boolean {
    const cost = this.costOf(req);
    if (this.charged === 0 && cost <= this.limits.idleRequestBytes) return false;
    if (this.charged > 0 && this.charged + cost > this.limits.maxConnectionBytes) return true;
    return !this.budget.fits(cost);
  }

  /** Bytes a request is charged from its header until its reply is out (a refused one holds no payload). */
  private costOf(req: NbdRequest): number {
    if (req.type === W.NBD_CMD_DISC) return 0;
    if (checkRequest(req, this.requestLimits!) !== null) return REQUEST_OVERHEAD;
    return REQUEST_OVERHEAD + (req.type === W.NBD_CMD_READ || req.type === W.NBD_CMD_WRITE ? req.length : 0);
  }

  private readonly wake = (): void => {
    if (!this.throttled || this.state === "closed" || this.state === "closing") return;
    if (this.mustThrottle()) {
      if (this.budgetBlocked()) this.budget.waitForRoom(this.wake);
      return;
    }
    this.throttled = false;
    this.sock.resume();
    this.pump();
  };

  private throttle(): void {
    this.throttled = true;
    this.sock.pause();
    // Woken by our own replies going out (settle, uncharge) or by room in the server-wide budget.
    if (this.budgetBlocked()) this.budget.waitForRoom(this.wake);
  }

  /** Whether the server-wide budget (not only this connection's own limits) keeps reading paused. */
  private budgetBlocked(): boolean {
    if (this.state === "option") return this.charged > 0 && this.budget.exhausted;
    return this.held !== undefined && !this.budget.fits(this.costOf(this.held));
  }

  // ---- input state machine --------------------------------------------------------------------------

  private pump(): void {
    for (;;) {
      switch (this.state) {
        case "flags": {
          if (this.input.length < 4) return;
          const flags = decoded(() => decodeClientFlags(this.input.take(4)));
          if (flags === undefined) return this.abort("client sent unknown flags");
          this.negotiator.noZeroes = flags.noZeroes;
          this.state = "option";
          break;
        }
        case "option": {
          if (this.throttled) return;
          if (this.handshakeBlocked()) return this.throttle();
          if (this.input.length < W.OPTION_HEADER_LENGTH) return;
          if (++this.options > this.limits.maxOptions) return this.abort(`more than ${this.limits.maxOptions} options`);
          const header = decoded(() => decodeOptionHeader(this.input.take(W.OPTION_HEADER_LENGTH)));
          if (header === undefined) return this.abort("bad option magic");
          if (header.length > this.limits.maxOptionData) {
            return this.abort(`option ${header.option} data of ${header.length} bytes is too large`);
          }
          this.optionType = header.option;
          this.optionLength = header.length;
          this.state = "optionData";
          break;
        }
        case "optionData": {
          if (this.input.length < this.optionLength) return;
          this.handleOption(this.input.take(this.optionLength));
          break;
        }
        case "request": {
          if (this.throttled) return;
          if (this.outstanding >= this.limits.maxOutstanding) return this.throttle();
          let req = this.held;
          if (req === undefined) {
            if (this.input.length < W.REQUEST_HEADER_LENGTH) return;
            req = decoded(() => decodeRequestHeader(this.input.take(W.REQUEST_HEADER_LENGTH)));
            if (req === undefined) return this.abort("bad request magic");
          }
          // The header is read first so that the request's whole cost is known before anything is held for it.
          if (this.requestBlocked(req)) {
            this.held = req;
            return this.throttle();
          }
          this.held = undefined;
          this.acceptRequest(req);
          break;
        }
        case "payload": {
          const req = this.pending!;
          if (this.input.length < req.length) return;
          let payload = this.input.take(req.length, this.allocate);
          // A view of the receive buffer: lent until the device is done with it, or copied when the
          // connection has as many buffers out as it may hold.
          if (this.receive?.owns(payload)) {
            if (this.receive.canLend(payload)) this.receive.lend(payload);
            else payload = this.copyOf(payload);
          }
          this.payloadReceived(payload);
          break;
        }
        case "drain": {
          this.drainLeft -= this.input.skip(this.drainLeft);
          if (this.drainLeft > 0) return;
          this.state = "request";
          break;
        }
        default:
          return;
      }
    }
  }

  /** A copy of `bytes` in memory from the pool. */
  private copyOf(bytes: Uint8Array): Uint8Array {
    const copy = this.allocate(bytes.byteLength);
    copy.set(bytes);
    return copy;
  }

  /** The pending WRITE's payload is all in: run it. */
  private payloadReceived(payload: Uint8Array): void {
    const req = this.pending!;
    this.pending = undefined;
    this.state = "request";
    void this.execute(req, payload);
  }

  private handleOption(data: Uint8Array): void {
    const option = this.optionType;
    const outcome = this.negotiator.handleOption(option, data);
    this.log(`option ${optionNames[option] ?? option}: ${outcome.action}`);
    const replies = outcome.replies;
    switch (outcome.action) {
      case "continue":
        this.writeAll(replies);
        this.state = "option";
        return;
      case "abort":
        this.writeAll(replies);
        this.beginClosing();
        return;
      case "close":
        this.abort(outcome.reason ?? "handshake failed");
        return;
      case "starttls":
        // Stop parsing; wrap the socket once the ACK has left in clear text.
        this.state = "upgrading";
        this.sock.pause();
        this.writeAll(replies, () => this.startTls());
        return;
      case "transmission":
        this.writeAll(replies);
        this.enterTransmission();
        return;
    }
  }

  /** Writes handshake replies; their bytes are charged until the kernel has them. */
  private writeAll(parts: readonly Uint8Array[], done?: () => void): void {
    const s = this.sock;
    const bytes = parts.reduce((sum, p) => sum + p.byteLength, 0);
    this.charged += bytes;
    this.budget.charge(bytes);
    s.cork();
    parts.forEach((p, i) =>
      s.write(p, i === parts.length - 1 ? () => {
        this.uncharge(bytes);
        done?.();
      } : undefined),
    );
    s.uncork();
  }

  /** Handshake reply bytes are out: release them and maybe resume reading options. */
  private uncharge(bytes: number): void {
    if (this.state === "closed") return;
    this.charged -= bytes;
    this.budget.release(bytes);
    if (this.throttled && !this.mustThrottle()) this.wake();
  }

  private startTls(): void {
    const raw = this.sock;
    if (this.state !== "upgrading" || raw.destroyed) return;
    this.detach(raw);
    // Anything the client sent after STARTTLS belongs to the TLS handshake: give it back to the socket.
    const early = this.input.drain();
    for (let i = early.length - 1; i >= 0; i--) raw.unshift(early[i]!);
    raw.on("error", () => raw.destroy());
    raw.on("close", this.onClose);
    const secure = new tls.TLSSocket(raw, { ...this.tlsOptions, isServer: true });
    secure.on("error", (error) => {
      this.log(`TLS error: ${error.message}`);
      secure.destroy();
      raw.destroy();
    });
    secure.once("secure", () => {
      if (this.state !== "upgrading") return;
      raw.off("close", this.onClose);
      this.sock = secure as unknown as Socket;
      this.attach(this.sock);
      this.negotiator.tlsEstablished();
      this.log("TLS established");
      this.state = "option";
      this.pump();
    });
  }

  private enterTransmission(): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.structured = this.negotiator.structuredReplies;
    this.contexts = this.negotiator.selectedContexts;
    const d = this.exp.descriptor;
    this.requestLimits = {
      exportSize: d.size,
      readOnly: d.readOnly,
      structuredReplies: this.structured,
      contextCount: this.contexts.length,
      maximumPayload: d.maximumPayload,
    };
    this.inTransmission = true;
    this.state = "request";
    this.log(`client entered transmission${this.structured ? " (structured replies)" : ""}`);
  }

  private acceptRequest(req: NbdRequest): void {
    if (req.type === W.NBD_CMD_DISC) {
      this.log("client sent disconnect");
      this.beginClosing();
      return;
    }
    const fault = checkRequest(req, this.requestLimits!);
    const carriesPayload = req.type === W.NBD_CMD_WRITE;
    if (fault !== null) {
      this.log(`${commandNames[req.type] ?? `command ${req.type}`} refused: ${fault.message}`);
      this.charge(REQUEST_OVERHEAD);
      this.replyError(req, fault.errno, fault.message, REQUEST_OVERHEAD);
      if (carriesPayload && req.length > 0) {
        // Skip the payload without holding it, however large.
        this.drainLeft = req.length;
        this.state = "drain";
      }
      return;
    }
    const payloadBytes = req.type === W.NBD_CMD_READ || carriesPayload ? req.length : 0;
    this.charge(REQUEST_OVERHEAD + payloadBytes);
    if (carriesPayload && req.length > 0) {
      this.pending = req;
      this.state = "payload";
      return;
    }
    void this.execute(req, undefined);
  }

  private readonly allocate = (length: number): Uint8Array => this.pool.acquire(length);

  private charge(cost: number): void {
    this.outstanding++;
    this.charged += cost;
    this.budget.charge(cost);
  }

  // ---- request execution ----------------------------------------------------------------------------

  private async execute(req: NbdRequest, payload: Uint8Array | undefined): Promise<void> {
    const cost = REQUEST_OVERHEAD + (req.type === W.NBD_CMD_READ || req.type === W.NBD_CMD_WRITE ? req.length : 0);
    try {
      await this.run(req, payload, cost);
      // The device is done with a WRITE payload once the call succeeded. After a failure the buffer is left
      // to the garbage collector, in case part of the failed call still reads it.
      if (payload && !this.receive?.giveBack(payload)) this.pool.release(payload);
    } catch (error) {
      if (payload) this.receive?.giveBack(payload, false);
      const errno = nbdErrnoOf(error);
      const message = errorMessageOf(error);
      this.log(`${commandNames[req.type]} at ${req.offset}+${req.length} failed: ${message}`);
      this.replyError(req, errno, message, cost);
    }
  }

  /** Runs a checked request and sends its successful reply; throws (before sending anything) on failure. */
  private async run(req: NbdRequest, payload: Uint8Array | undefined, cost: number): Promise<void> {
    const dev = this.exp.device;
    const fua = this.durableWrites || ((req.flags & W.NBD_CMD_FLAG_FUA) !== 0 && this.exp.cache !== "unsafe");
    switch (req.type) {
      case W.NBD_CMD_READ:
        return this.read(req, cost);
      case W.NBD_CMD_WRITE:
        if (req.length > 0) await dev.write(req.offset, payload!, fua ? { fua } : undefined);
        break;
      case W.NBD_CMD_WRITE_ZEROES:
        if (req.length > 0) {
          await dev.writeZeroes(req.offset, req.length, {
            unmap: this.exp.discard === "unmap" && (req.flags & W.NBD_CMD_FLAG_NO_HOLE) === 0,
            noFallback: (req.flags & W.NBD_CMD_FLAG_FAST_ZERO) !== 0,
            fua,
          });
        }
        break;
      case W.NBD_CMD_TRIM:
        if (this.exp.discard === "unmap" && req.length > 0) {
          await dev.discard(req.offset, req.length);
          if (fua) await dev.flush();
        }
        break;
      case W.NBD_CMD_FLUSH:
        if (this.exp.cache !== "unsafe") await dev.flush();
        break;
      case W.NBD_CMD_CACHE:
        // Advisory; the checked range is all there is to do.
        break;
      case W.NBD_CMD_BLOCK_STATUS:
        return this.blockStatus(req, cost);
    }
    this.replyOk(req, cost);
  }

  private get durableWrites(): boolean {
    return this.exp.cache === "writethrough" || this.exp.cache === "directsync";
  }

  private replyOk(req: NbdRequest, cost: number): void {
    const b = Buffer.allocUnsafe(W.SIMPLE_REPLY_LENGTH);
    writeSimpleReply(b, 0, 0, req);
    this.send([b], cost);
  }

  private replyError(req: NbdRequest, errno: number, message: string, cost: number): void {
    if (this.structured) {
      this.send([encodeErrorChunk(req, errno || W.NBD_EINVAL, message)], cost);
      return;
    }
    const b = Buffer.allocUnsafe(W.SIMPLE_REPLY_LENGTH);
    writeSimpleReply(b, 0, errno || W.NBD_EINVAL, req);
    this.send([b], cost);
  }

  private async read(req: NbdRequest, cost: number): Promise<void> {
    // The reply header goes in front of the data, in the same pooled buffer: no header allocation, and one
    // piece for the socket instead of two. After a failed read the buffer is not reused: a device call that
    // failed early might still write to it.
    const prefix = this.structured ? W.OFFSET_DATA_PREFIX_LENGTH : W.SIMPLE_REPLY_LENGTH;
    const buffer = this.pool.acquire(prefix + req.length);
    await this.readInto(req, buffer, prefix, cost, () => this.pool.release(buffer));
  }

  /**
   * Reads a request's data into `buffer` after `prefix` bytes (room for the reply header) and sends the reply;
   * `recycle` is called once it has been sent.
   */
  private async readInto(req: NbdRequest, buffer: Buffer, prefix: number, cost: number, recycle: () => void): Promise<void> {
    const dev = this.exp.device;
    const { offset, length } = req;
    const data = buffer.subarray(prefix);
    if (!this.structured) {
      if (length > 0) await dev.read(offset, data);
      writeSimpleReply(buffer, 0, 0, req);
      this.send([buffer], cost, recycle);
      return;
    }
    if (length === 0) {
      writeChunkHeader(buffer, 0, req, W.NBD_REPLY_TYPE_NONE, true, 0);
      this.send([buffer.subarray(0, W.STRUCTURED_HEADER_LENGTH)], cost, recycle);
      return;
    }
    const sparse = (req.flags & W.NBD_CMD_FLAG_DF) === 0 && length >= this.limits.sparseReadMinimum;
    const runs = sparse ? readRuns(await dev.blockStatus(offset, length), offset, length) : undefined;
    if (runs === undefined || (runs.length === 1 && !runs[0]!.zero)) {
      // One OFFSET_DATA chunk (small reads, and sparse reads of data only): no chunk lists on the hot path.
      await dev.read(offset, data);
      writeOffsetDataPrefix(buffer, 0, req, offset, length, true);
      this.send([buffer], cost, recycle);
      return;
    }
    await this.sendSparse(req, buffer, prefix, runs, cost, recycle);
  }

  /** A sparse read's reply: OFFSET_DATA chunks for the data runs (read now), OFFSET_HOLE chunks for the zero runs. */
  private async sendSparse(req: NbdRequest, buffer: Buffer, prefix: number, runs: ReadRun[], cost: number, recycle: () => void): Promise<void> {
    const dev = this.exp.device;
    const { offset } = req;
    const data = buffer.subarray(prefix);
    const reads = await Promise.allSettled(
      runs.filter((r) => !r.zero).map((r) => dev.read(r.offset, data.subarray(r.offset - offset, r.offset - offset + r.length))),
    );
    for (const r of reads) if (r.status === "rejected") throw r.reason;
    // A first data run uses the room in front of the data; the other chunk headers share one allocation.
    const inPlace = !runs[0]!.zero;
    let headerBytes = 0;
    runs.forEach((r, i) => {
      if (!(i === 0 && inPlace)) headerBytes += r.zero ? W.OFFSET_HOLE_LENGTH : W.OFFSET_DATA_PREFIX_LENGTH;
    });
    const headers = Buffer.allocUnsafe(headerBytes);
    let at = 0;
    const parts: Uint8Array[] = [];
    runs.forEach((r, i) => {
      const done = i === runs.length - 1;
      const start = r.offset - offset;
      if (i === 0 && inPlace) {
        writeOffsetDataPrefix(buffer, 0, req, r.offset, r.length, done);
        parts.push(buffer.subarray(0, prefix + r.length));
      } else if (r.zero) {
        writeOffsetHole(headers, at, req, r.offset, r.length, done);
        parts.push(headers.subarray(at, (at += W.OFFSET_HOLE_LENGTH)));
      } else {
        writeOffsetDataPrefix(headers, at, req, r.offset, r.length, done);
        parts.push(headers.subarray(at, (at += W.OFFSET_DATA_PREFIX_LENGTH)), data.subarray(start, start + r.length));
      }
    });
    this.send(parts, cost, recycle);
  }

  private async blockStatus(req: NbdRequest, cost: number): Promise<void> {
    const dev = this.exp.device;
    const { offset, length } = req;
    const reqOne = (req.flags & W.NBD_CMD_FLAG_REQ_ONE) !== 0;
    let extents: Promise<BlockStatusExtent[]> | undefined;
    const allocation = () => (extents ??= dev.blockStatus(offset, length));
    const results = await Promise.all(
      this.contexts.map(async (ctx): Promise<StatusRun[]> => {
        switch (ctx.kind) {
          case "allocation":
            return statusRuns(await allocation(), allocationFlags, offset, length, { reqOne });
          case "allocation-depth":
            return statusRuns(await allocation(), allocationDepthFlags, offset, length, { reqOne });
          case "dirty-bitmap": {
            if (!dev.bitmapStatus) throw new Error(`bitmap '${ctx.bitmap}' is not available`);
            const ranges = await dev.bitmapStatus(ctx.bitmap, offset, length);
            return statusRuns(ranges, dirtyFlags, offset, length, { reqOne });
          }
        }
      }),
    );
    const parts = results.map((runs, i) => encodeBlockStatusChunk(req, this.contexts[i]!.id, runs, i === results.length - 1));
    this.send(parts, cost);
  }
}

/** What a decoder returns, or undefined when the peer's bytes are malformed (the connection is then closed). */
function decoded<T>(decode: () => T): T | undefined {
  try {
    return decode();
  } catch (e) {
    if (isQcow2Error(e)) return undefined;
    throw e;
  }
}

/** Splits a read into data and zero runs from block status; anything uncovered is read as data. */
interface ReadRun {
  offset: number;
  length: number;
  zero: boolean;
}

function readRuns(extents: readonly BlockStatusExtent[], offset: number, length: number): ReadRun[] {
  const runs: ReadRun[] = [];
  const end = offset + length;
  let at = offset;
  for (const e of extents) {
    if (at >= end) break;
    const eEnd = Math.min(e.offset + e.length, end);
    if (eEnd <= at) continue;
    if (e.offset > at) break;
    const last = runs[runs.length - 1];
    if (last && last.zero === e.zero) last.length += eEnd - at;
    else runs.push({ offset: at, length: eEnd - at, zero: e.zero });
    at = eEnd;
  }
  if (at < end) {
    const last = runs[runs.length - 1];
    if (last && !last.zero) last.length += end - at;
    else runs.push({ offset: at, length: end - at, zero: false });
  }
  return runs;
}

