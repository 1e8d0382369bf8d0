/**
 * A read-only byte store over HTTP(S) ranged GETs: a remote image, backing file or external data file. Runtime
 * agnostic: it needs a `fetch`-shaped function (the global one in browsers and Node; the Node entry passes one
 * that honours `sslverify`). Reads go through a bounded LRU block cache; a miss fetches the missing blocks plus
 * readahead in as few requests as it can, at most `maxConcurrency` at a time. Failed requests (network errors,
 * 5xx, 429, timeouts) are retried with exponential backoff. The object is pinned at open by its ETag (else its
 * Last-Modified): every later response must carry the same validator and size, so a changed object gives a
 * clear error, never a mix of old and new bytes.
 */
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { assertByteRange } from "./store-checks";

/** The part of a fetch Response the store uses. */
export interface RemoteResponse {
  readonly status: number;
  readonly statusText?: string;
  readonly headers: { get(name: string): string | null };
  arrayBuffer(): Promise<ArrayBuffer>;
  readonly body?: { cancel(reason?: unknown): Promise<void> } | null;
}

/** What the store calls for each request (global `fetch` fits). */
export type RemoteFetch = (url: string, init: { method: string; headers: Record<string, string>; signal: AbortSignal }) => Promise<RemoteResponse>;

/** Headers added to every request (an S3 signature); called for each attempt, so signatures stay fresh. */
export type RemoteSigner = (url: string, method: string, headers: Record<string, string>) => Promise<Record<string, string>>;

export interface RemoteStoreOptions {
  /** Name for messages (default: the URL). */
  name?: string;
  /** Transport (default: globalThis.fetch). */
  fetch?: RemoteFetch;
  sign?: RemoteSigner;
  /** Bytes fetched beyond a missed read, as QEMU's curl `readahead` (default 256 KiB; a multiple of 512). */
  readahead?: number;
  /** Cache granularity in bytes (default 64 KiB; a power of two >= 512). */
  blockSize?: number;
  /** Upper bound of the block cache in bytes (default 32 MiB). */
  cacheBytes?: number;
  /** Requests in flight at once (default 8). */
  maxConcurrency?: number;
  /** Largest single ranged GET in bytes (default 4 MiB). */
  maxRequestBytes?: number;
  /** Retries after a failed attempt (default 4). */
  retries?: number;
  /** First backoff delay in ms, doubled per retry, capped at 2 s (default 100). */
  retryDelayMs?: number;
  /** Milliseconds one attempt may take, headers and body (default 5000, QEMU curl's `timeout`; 0: none). */
  timeoutMs?: number;
}

/** The validators an object was pinned by at open. */
export interface RemoteIdentity {
  size: number;
  etag?: string;
  lastModified?: string;
}

interface Settings {
  fetch: RemoteFetch;
  sign?: RemoteSigner;
  readahead: number;
  blockSize: number;
  cacheBytes: number;
  maxConcurrency: number;
  maxRequestBytes: number;
  retries: number;
  retryDelayMs: number;
  timeoutMs: number;
}

class RetryableError extends Error {}

const MAX_BACKOFF_MS = 2000;

function readOnlyError(): Qcow2Error {
  return new Qcow2Error("READ_ONLY", "Block node is read-only", { errno: "EPERM" });
}

function statusLine(res: RemoteResponse): string {
  return `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}`;
}

/** "bytes START-END/TOTAL" (TOTAL may be a star), or "bytes STAR/TOTAL". */
function parseContentRange(value: string | null): { start?: number; end?: number; total?: number } | undefined {
  if (value === null) return undefined;
  const m = /^\s*bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)\s*$/i.exec(value);
  if (!m) return undefined;
  return {
    ...(m[1] !== undefined ? { start: Number(m[1]), end: Number(m[2]) } : {}),
    ...(m[3] !== "*" ? { total: Number(m[3]) } : {}),
  };
}

function validatePositive(name: string, value: number, min: number): number {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Qcow2Error("INVALID_ARGUMENT", `Invalid ${name} ${value}`);
  }
  return value;
}

function settingsOf(opts: RemoteStoreOptions): Settings {
  // The global fetch must be called on the global object: browsers throw "Illegal invocation" otherwise.
  const f = opts.fetch ?? (globalThis.fetch?.bind(globalThis) as unknown as RemoteFetch | undefined);
  if (!f) throw new Qcow2Error("NOT_SUPPORTED", "No fetch implementation available for remote images", { errno: "ENOTSUP" });
  const readahead = validatePositive("readahead", opts.readahead ?? 256 * 1024, 0);
  if (readahead % 512 !== 0) {
    throw new Qcow2Error("INVALID_ARGUMENT", `HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  }
  const blockSize = validatePositive("block size", opts.blockSize ?? 64 * 1024, 512);
  if ((blockSize & (blockSize - 1)) !== 0) throw new Qcow2Error("INVALID_ARGUMENT", `Invalid block size ${blockSize}`);
  const timeoutMs = validatePositive("timeout", opts.timeoutMs ?? 5000, 0);
  return {
    fetch: f,
    ...(opts.sign ? { sign: opts.sign } : {}),
    readahead,
    blockSize,
    cacheBytes: validatePositive("cache size", opts.cacheBytes ?? 32 * 2 ** 20, 0),
    maxConcurrency: validatePositive("concurrency", opts.maxConcurrency ?? 8, 1),
    maxRequestBytes: Math.max(blockSize, validatePositive("request size", opts.maxRequestBytes ?? 4 * 2 ** 20, 1)),
    retries: validatePositive("retry count", opts.retries ?? 4, 0),
    retryDelayMs: validatePositive("retry delay", opts.retryDelayMs ?? 100, 0),
    timeoutMs,
  };
}

/** A counting semaphore: at most `limit` holders. */
class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly limit: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

export class RemoteStore implements ByteStore {
  readonly readOnly = true;
  readonly name: string;
  readonly url: string;
  /** What the object was pinned by at open. */
  readonly identity: RemoteIdentity;
  /** Requests sent (attempts included), and bytes received: for tests and benchmarks. */
  requestCount = 0;
  bytesReceived = 0;

  private readonly settings: Settings;
  private readonly limiter: Limiter;
  /** Cached blocks in LRU order (oldest first). */
  private readonly cache = new Map<number, Uint8Array>();
  private cachedBytes = 0;
  /** Blocks being fetched. */
  private readonly pending = new Map<number, Promise<Uint8Array>>();
  private closed = false;
  /** Where the last read ended (sequential reads are prefetched). */
  private sequentialEnd = -1;

  private constructor(url: string, name: string, identity: RemoteIdentity, settings: Settings) {
    this.url = url;
    this.name = name;
    this.identity = identity;
    this.settings = settings;
    this.limiter = new Limiter(settings.maxConcurrency);
  }

  /**
   * Open `url`: one ranged GET of the first `readahead` bytes (at least one block) learns the size and the
   * validators, checks that the server honours Range, and fills the cache with the start of the object.
   */
  static async open(url: string, opts: RemoteStoreOptions = {}): Promise<RemoteStore> {
    const settings = settingsOf(opts);
    const name = opts.name ?? url;
    const first = Math.max(settings.readahead, settings.blockSize);
    const probe = new RemoteStore(url, name, { size: 0 }, settings);
    const { res, data } = await probe.attempts("Error opening file", () => probe.request(0, first, undefined, true));
    const identity: RemoteIdentity = { size: 0 };
    if (res.status === 206) {
      const range = parseContentRange(res.headers.get("content-range"));
      if (range?.total === undefined) throw new Qcow2Error("IO_ERROR", "Error opening file: the server sent no object size (Content-Range)", { errno: "EIO" });
      identity.size = range.total;
    } else if (res.status === 416) {
      // An empty object: "bytes */0".
      identity.size = parseContentRange(res.headers.get("content-range"))?.total ?? 0;
    } else {
      identity.size = data.length;
    }
    const etag = res.headers.get("etag");
    const lastModified = res.headers.get("last-modified");
    if (etag !== null) identity.etag = etag;
    else if (lastModified !== null) identity.lastModified = lastModified;
    const store = new RemoteStore(url, name, identity, settings);
    store.requestCount = probe.requestCount;
    store.bytesReceived = probe.bytesReceived;
    if (res.status === 206 || res.status === 200) store.fill(0, data.subarray(0, Math.min(data.length, first)));
    return store;
  }

  async size(): Promise<number> {
    this.checkOpen();
    return this.identity.size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.checkOpen();
    assertByteRange(this.name, offset, into.length);
    const size = this.identity.size;
    const end = Math.min(offset + into.length, size);
    if (end < offset + into.length) into.fill(0, Math.max(0, end - offset));
    if (end <= offset) return;
    const bs = this.settings.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    const request = this.blocks(first, last);
    // A sequential reader gets the next stretch of the same length fetched while it consumes this one.
    if (offset === this.sequentialEnd) this.prefetch(last + 1, last + 1 + (last - first + 1));
    this.sequentialEnd = end;
    const blocks = await request;
    for (let b = first; b <= last; b++) {
      const data = blocks[b - first]!;
      const blockStart = b * bs;
      const from = Math.max(offset, blockStart);
      const to = Math.min(end, blockStart + data.length);
      into.set(data.subarray(from - blockStart, to - blockStart), from - offset);
    }
  }

  /** Blocks first..last (each a full block but the last of the object), fetched where not cached. */
  private async blocks(first: number, last: number): Promise<Uint8Array[]> {
    const bs = this.settings.blockSize;
    const lastBlock = Math.max(0, Math.ceil(this.identity.size / bs) - 1);
    const out: Array<Uint8Array | Promise<Uint8Array>> = [];
    let runStart = -1;
    const startRun = (b: number): void => {
      if (runStart < 0) runStart = b;
    };
    const endRun = (b: number, extend: boolean): void => {
      if (runStart < 0) return;
      let runEnd = b; // exclusive
      if (extend) {
        // Readahead: keep going past the read while the blocks are neither cached nor on their way.
        const limit = Math.min(lastBlock + 1, runStart + Math.max(b - runStart, Math.ceil(this.settings.readahead / bs)));
        while (runEnd < limit && !this.cache.has(runEnd) && !this.pending.has(runEnd)) runEnd++;
      }
      const promises = this.fetchRun(runStart, runEnd);
      for (let i = runStart; i < b; i++) out[i - first] = promises[i - runStart]!;
      runStart = -1;
    };
    for (let b = first; b <= last; b++) {
      const hit = this.cache.get(b);
      if (hit) {
        endRun(b, false);
        this.cache.delete(b);
        this.cache.set(b, hit); // most recently used
        out[b - first] = hit;
        continue;
      }
      const waiting = this.pending.get(b);
      if (waiting) {
        endRun(b, false);
        out[b - first] = waiting;
        continue;
      }
      startRun(b);
    }
    endRun(last + 1, true);
    return Promise.all(out);
  }

  /** Start fetching the blocks of [from, to) that are neither cached nor on their way; nothing waits for them. */
  private prefetch(from: number, to: number): void {
    const end = Math.min(to, Math.ceil(this.identity.size / this.settings.blockSize));
    // Never more than the cache can keep.
    const limit = Math.min(end, from + Math.floor(this.settings.cacheBytes / 2 / this.settings.blockSize));
    let runStart = -1;
    for (let b = from; b <= limit; b++) {
      const missing = b < limit && !this.cache.has(b) && !this.pending.has(b);
      if (missing && runStart < 0) runStart = b;
      if (!missing && runStart >= 0) {
        this.fetchRun(runStart, b);
        runStart = -1;
      }
    }
  }

  /** Fetch blocks [from, to) in requests of at most maxRequestBytes; one promise per block. */
  private fetchRun(from: number, to: number): Promise<Uint8Array>[] {
    const bs = this.settings.blockSize;
    const perRequest = Math.max(1, Math.floor(this.settings.maxRequestBytes / bs));
    const out: Promise<Uint8Array>[] = [];
    for (let start = from; start < to; start += perRequest) {
      const end = Math.min(to, start + perRequest);
      const offset = start * bs;
      const length = Math.min(end * bs, this.identity.size) - offset;
      const request = this.limiter.run(() =>
        this.attempts(`Could not read '${this.name}'`, () => this.request(offset, length, this.identity, false)),
      );
      for (let b = start; b < end; b++) {
        const p = request.then(({ data }) => {
          const piece = data.slice((b - start) * bs, Math.min(data.length, (b - start + 1) * bs));
          return piece;
        });
        this.pending.set(b, p);
        p.then(
          (piece) => {
            this.pending.delete(b);
            if (!this.closed) this.remember(b, piece);
          },
          () => this.pending.delete(b),
        );
        out.push(p);
      }
    }
    return out;
  }

  /** Put the blocks of `data` (starting at block-aligned `offset`) in the cache. */
  private fill(offset: number, data: Uint8Array): void {
    const bs = this.settings.blockSize;
    for (let at = 0; at < data.length; at += bs) {
      const piece = data.slice(at, Math.min(data.length, at + bs));
      // Only whole blocks, or the object's last one.
      if (piece.length === bs || offset + at + piece.length === this.identity.size) this.remember((offset + at) / bs, piece);
    }
  }

  private remember(block: number, data: Uint8Array): void {
    if (this.settings.cacheBytes < data.length) return;
    const old = this.cache.get(block);
    if (old) {
      this.cachedBytes -= old.length;
      this.cache.delete(block);
    }
    this.cache.set(block, data);
    this.cachedBytes += data.length;
    for (const [b, d] of this.cache) {
      if (this.cachedBytes <= this.settings.cacheBytes) break;
      this.cache.delete(b);
      this.cachedBytes -= d.length;
    }
  }

  /** Run `attempt` with retries and backoff; the final failure is one line starting with `context`. */
  private async attempts<T>(context: string, attempt: () => Promise<T>): Promise<T> {
    let lastMessage = "";
    for (let n = 0; ; n++) {
      if (this.closed) throw new Qcow2Error("IO_ERROR", `${context}: the store is closed`, { errno: "EIO" });
      try {
        return await attempt();
      } catch (e) {
        if (!(e instanceof RetryableError)) {
          if (e instanceof Qcow2Error) throw new Qcow2Error(e.code, `${context}: ${e.message}`, { errno: e.errno, cause: e });
          throw e;
        }
        lastMessage = e.message;
      }
      if (n >= this.settings.retries) break;
      const delay = Math.min(MAX_BACKOFF_MS, this.settings.retryDelayMs * 2 ** n);
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    }
    const tries = this.settings.retries + 1;
    throw new Qcow2Error("IO_ERROR", `${context}: ${lastMessage}${tries > 1 ? ` (${tries} attempts)` : ""}`, { errno: "EIO" });
  }

  /**
   * One ranged GET of [offset, offset+length). `pin`: the validators responses must match (absent at open).
   * `opening`: a 416 (empty object) and a 200 with at most `length` bytes (the whole object) are fine.
   */
  private async request(
    offset: number,
    length: number,
    pin: RemoteIdentity | undefined,
    opening: boolean,
  ): Promise<{ res: RemoteResponse; data: Uint8Array }> {
    const s = this.settings;
    let headers: Record<string, string> = { range: `bytes=${offset}-${offset + length - 1}` };
    if (pin?.etag !== undefined && !pin.etag.startsWith("W/")) headers["if-match"] = pin.etag;
    else if (pin?.lastModified !== undefined) headers["if-unmodified-since"] = pin.lastModified;
    if (s.sign) headers = await s.sign(this.url, "GET", headers);
    const controller = new AbortController();
    let timedOut = false;
    const timer = s.timeoutMs > 0 ? setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, s.timeoutMs) : undefined;
    this.requestCount++;
    try {
      let res: RemoteResponse;
      try {
        res = await s.fetch(this.url, { method: "GET", headers, signal: controller.signal });
      } catch (e) {
        throw new RetryableError(timedOut ? `timed out after ${s.timeoutMs} ms` : networkText(e));
      }
      const discard = (): void => {
        res.body?.cancel().catch(() => undefined);
      };
      if (res.status >= 500 || res.status === 429 || res.status === 408) {
        discard();
        throw new RetryableError(statusLine(res));
      }
      if (res.status === 412 || (pin && !sameObject(res, pin))) {
        discard();
        throw new Qcow2Error("IO_ERROR", "the remote object changed since it was opened", { errno: "EIO" });
      }
      if (res.status === 416 && opening) {
        discard();
        return { res, data: new Uint8Array(0) };
      }
      if (res.status === 404) {
        discard();
        throw new Qcow2Error("NOT_FOUND", `${statusLine(res)}`, { errno: "ENOENT" });
      }
      if (res.status === 401 || res.status === 403) {
        discard();
        throw new Qcow2Error("IO_ERROR", `Permission denied (${statusLine(res)})`, { errno: "EACCES" });
      }
      if (res.status === 200) {
        // The server ignored Range. Fine only at open when the whole object fits in what was asked for.
        const declared = Number(res.headers.get("content-length") ?? NaN);
        if (!opening || !(declared <= length)) {
          discard();
          throw new Qcow2Error("NOT_SUPPORTED", "Server does not support 'range' (byte ranges)", { errno: "ENOTSUP" });
        }
      } else if (res.status !== 206) {
        discard();
        throw new Qcow2Error("IO_ERROR", `unexpected ${statusLine(res)}`, { errno: "EIO" });
      }
      let body: Uint8Array;
      try {
        body = new Uint8Array(await res.arrayBuffer());
      } catch (e) {
        throw new RetryableError(timedOut ? `timed out after ${s.timeoutMs} ms` : networkText(e));
      }
      this.bytesReceived += body.length;
      if (res.status === 206) {
        const range = parseContentRange(res.headers.get("content-range"));
        const expectedEnd = Math.min(offset + length, pin?.size ?? Infinity) - 1;
        if (range?.start !== offset || (pin !== undefined && range.end !== expectedEnd) || (range.end !== undefined && body.length !== range.end - range.start! + 1)) {
          // A short body is a broken connection; a different range is a server bug.
          if (range?.start === offset && range.end !== undefined && body.length < range.end - range.start + 1) {
            throw new RetryableError(`short response (${body.length} of ${range.end - range.start + 1} bytes)`);
          }
          throw new Qcow2Error("IO_ERROR", `the server answered a different range (${res.headers.get("content-range") ?? "none"})`, { errno: "EIO" });
        }
      }
      return { res, data: body };
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
  }

  async write(_offset: number, _data: Uint8Array): Promise<void> {
    throw readOnlyError();
  }
  async resize(_size: number, _p?: StorePreallocation): Promise<void> {
    throw readOnlyError();
  }
  async discard(_offset: number, _length: number): Promise<void> {
    throw readOnlyError();
  }
  async writeZeroes(_offset: number, _length: number, _unmap?: boolean): Promise<void> {
    throw readOnlyError();
  }
  async flush(): Promise<void> {
    this.checkOpen();
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.cache.clear();
    this.cachedBytes = 0;
  }

  /** Bytes currently held by the block cache. */
  get cacheSize(): number {
    return this.cachedBytes;
  }

  private checkOpen(): void {
    if (this.closed) throw new Qcow2Error("IO_ERROR", `${this.name}: the store is closed`, { errno: "EIO" });
  }
}

/** Whether a response comes from the object pinned at open (same validator, same size). */
function sameObject(res: RemoteResponse, pin: RemoteIdentity): boolean {
  const etag = res.headers.get("etag");
  if (pin.etag !== undefined && etag !== null && etag !== pin.etag) return false;
  const lastModified = res.headers.get("last-modified");
  if (pin.etag === undefined && pin.lastModified !== undefined && lastModified !== null && lastModified !== pin.lastModified) return false;
  const total = parseContentRange(res.headers.get("content-range"))?.total;
  if (total !== undefined && total !== pin.size) return false;
  return true;
}

/** A network failure in one short phrase ("fetch failed: connect ECONNREFUSED 127.0.0.1:1"). */
function networkText(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    const detail = cause instanceof Error ? cause.message : "";
    const text = detail && !e.message.includes(detail) ? `${e.message}: ${detail}` : e.message;
    return text.split("\n")[0]!;
  }
  return String(e).split("\n")[0]!;
}
