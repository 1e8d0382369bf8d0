/**
 * The NBD server: accepts TCP or Unix-socket clients and serves one export, one shared device, to all of
 * them (so a flush on one connection covers writes made on any other). At most `shared` clients are served
 * at once; later ones wait unserved for a free slot, as with qemu-nbd.
 */
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as net from "node:net";
import type * as tls from "node:tls";
import { MemoryBudget } from "./budget";
import { BufferPool } from "./buffer-pool";
import {
  NbdConnection,
  type CacheMode,
  type ConnectionLimits,
  type DiscardMode,
  type ExportConfig,
} from "./connection";
import type { BlockImage } from "./device";
import { NBD_MAX_PAYLOAD, availableContexts } from "@qcowkit/nbd-protocol";

export interface ExportSettings {
  device: BlockImage;
  /** Export name (default ""). */
  name?: string;
  description?: string;
  /** Serve read-only even if the device is writable. */
  readOnly?: boolean;
  /** Offer qemu:allocation-depth. */
  allocationDepth?: boolean;
  /** Dirty bitmaps offered as qemu:dirty-bitmap:NAME. */
  bitmaps?: readonly string[];
  discard?: DiscardMode;
  cache?: CacheMode;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN (true unless only one client may connect). */
  multiConn?: boolean;
}

/** Builds what the connections serve from a device and the export settings. */
export function createExportConfig(s: ExportSettings): ExportConfig {
  return {
    device: s.device,
    discard: s.discard ?? "ignore",
    cache: s.cache ?? "writeback",
    descriptor: {
      name: s.name ?? "",
      description: s.description ?? "",
      size: s.device.virtualSize,
      readOnly: (s.readOnly ?? false) || s.device.readOnly,
      multiConn: s.multiConn ?? true,
      contexts: availableContexts({ allocationDepth: s.allocationDepth ?? false, bitmaps: s.bitmaps ?? [] }),
      minimumBlockSize: 1,
      preferredBlockSize: 4096,
      maximumPayload: NBD_MAX_PAYLOAD,
    },
  };
}

export interface NbdServerOptions {
  export: ExportConfig;
  /** Clients served at once; 0 = no limit. Default 1. */
  shared?: number;
  /** TLS socket options; when set, clients must upgrade with NBD_OPT_STARTTLS. */
  tls?: tls.TLSSocketOptions;
  /** Bytes of payloads and replies held across all connections before reading pauses. */
  memoryBudget?: number;
  limits?: Partial<ConnectionLimits>;
  log?: (message: string) => void;
  /** See ConnectionOptions.reuseReadMemory (default true). */
  reuseReadMemory?: boolean;
}

/** Clients waiting for a slot beyond `shared`; more are turned away. */
const MAX_WAITING = 16;
/**
 * Listen backlog with no connection limit: Linux's SOMAXCONN since 5.4 (the kernel caps any larger value at
 * net.core.somaxconn). Node's default, 511, turns away the rest of a burst of Unix-socket connects with EAGAIN.
 */
const MAX_BACKLOG = 4096;
/** Milliseconds a graceful close waits for clients to finish before dropping them. */
const SHUTDOWN_GRACE_MS = 10_000;

/**
 * Events: "connect" (a client is being served), "disconnect" (one left), "idle" (the last client left and
 * none is waiting).
 */
export class NbdServer extends EventEmitter {
  private readonly server: net.Server;
  private readonly active = new Set<NbdConnection>();
  private readonly waiting: net.Socket[] = [];
  /** Listeners put on waiting sockets, removed when they are served. */
  private readonly waitHandlers = new Map<net.Socket, () => void>();
  private readonly budget: MemoryBudget;
  private readonly pool = new BufferPool();
  private readonly shared: number;
  private unixPath: string | undefined;
  private closing: Promise<void> | undefined;

  constructor(private readonly opts: NbdServerOptions) {
    super();
    this.shared = opts.shared ?? 1;
    this.budget = new MemoryBudget(opts.memoryBudget ?? 128 * 1024 * 1024);
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.onSocket(socket));
  }

  get connectionCount(): number {
    return this.active.size;
  }

  /** Bytes of request payloads and replies currently held (charged to the memory budget). */
  get memoryInUse(): number {
    return this.budget.used;
  }

  /** Clients waiting for a free slot. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Listens on TCP; resolves with the bound address (port 0 picks a free port). */
  listenTcp(host: string, port: number): Promise<net.AddressInfo> {
    return this.listen({ host, port, exclusive: true, backlog: this.backlog }).then(() => this.server.address() as net.AddressInfo);
  }

  /** Listens on a Unix socket. A stale socket file at `path` is replaced; any other file is an error. */
  async listenUnix(path: string): Promise<void> {
    let stat: fs.Stats | undefined;
    try {
      stat = fs.lstatSync(path);
    } catch {
      stat = undefined;
    }
    if (stat?.isSocket()) fs.unlinkSync(path);
    await this.listen({ path, exclusive: true, backlog: this.backlog });
    this.unixPath = path;
  }

  /** Connects the kernel queues before we accept them: every client we could serve or keep waiting. */
  private get backlog(): number {
    if (this.shared === 0) return MAX_BACKLOG;
    return Math.min(MAX_BACKLOG, Math.max(511, this.shared + MAX_WAITING));
  }

  private listen(options: net.ListenOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.server.once("error", onError);
      this.server.listen(options, () => {
        this.server.off("error", onError);
        resolve();
      });
    });
  }

  /**
   * Stops accepting, lets every client finish its requests in flight (at most `graceMs`), then drops what
   * remains. Does not close the device.
   */
  close(graceMs = SHUTDOWN_GRACE_MS): Promise<void> {
    this.closing ??= (async () => {
      const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
      for (const s of this.waiting.splice(0)) s.destroy();
      const all = Promise.all([...this.active].map((c) => c.shutdown()));
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          for (const c of this.active) c.destroy();
          resolve();
        }, graceMs);
      });
      await Promise.race([all, late]);
      clearTimeout(timer);
      await all;
      await stopped;
      if (this.unixPath) {
        try {
          if (fs.lstatSync(this.unixPath).isSocket()) fs.unlinkSync(this.unixPath);
        } catch {
          // already gone
        }
      }
    })();
    return this.closing;
  }

  private onSocket(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.shared === 0 || this.active.size < this.shared) {
      this.serve(socket);
      return;
    }
    if (this.waiting.length >= MAX_WAITING) {
      this.log("too many clients waiting; connection refused");
      socket.destroy();
      return;
    }
    const gone = () => {
      socket.destroy();
      const i = this.waiting.indexOf(socket);
      if (i >= 0) this.waiting.splice(i, 1);
      this.waitHandlers.delete(socket);
    };
    socket.on("error", gone);
    socket.on("close", gone);
    this.waitHandlers.set(socket, gone);
    this.waiting.push(socket);
  }

  private serve(socket: net.Socket): void {
    const gone = this.waitHandlers.get(socket);
    if (gone) {
      socket.off("error", gone);
      socket.off("close", gone);
      this.waitHandlers.delete(socket);
    }
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : "unix socket";
    const log = this.opts.log ? (m: string) => this.log(`[${peer}] ${m}`) : undefined;
    const conn = new NbdConnection(socket, this.opts.export, {
      budget: this.budget,
      pool: this.pool,
      ...(this.opts.tls ? { tls: this.opts.tls } : {}),
      ...(this.opts.limits ? { limits: this.opts.limits } : {}),
      ...(this.opts.reuseReadMemory !== undefined ? { reuseReadMemory: this.opts.reuseReadMemory } : {}),
      ...(log ? { log } : {}),
    });
    this.active.add(conn);
    conn.start();
    log?.("connected");
    this.emit("connect");
    void conn.closed.then(() => {
      this.active.delete(conn);
      log?.("disconnected");
      this.emit("disconnect");
      this.admitWaiting();
      if (this.active.size === 0 && this.waiting.length === 0) this.emit("idle");
    });
  }

  private admitWaiting(): void {
    while (!this.closing && this.waiting.length > 0 && (this.shared === 0 || this.active.size < this.shared)) {
      const next = this.waiting.shift()!;
      if (!next.destroyed) this.serve(next);
    }
  }

  private log(message: string): void {
    this.opts.log?.(message);
  }
}
