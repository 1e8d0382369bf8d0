/**
 * RemoteStore against small Node HTTP servers on loopback that misbehave on purpose: 500s, connections
 * closed mid-body, an object that changes, Range ignored, a server that never answers. Each case ends in a
 * retry that succeeds or a one-line error, never in wrong data or a wait past the timeout. Also the block
 * cache bound, readahead and the concurrency cap. The same store against nginx and through the CLI is
 * tested in apps/cli/test/remote-http.test.ts.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { RemoteStore, nodeFetch } from "../src/node";
import { seededRandom } from "../src/testing";

interface Behaviour {
  /** Called per request; return true when it answered the request itself. */
  before?(req: http.IncomingMessage, res: http.ServerResponse, n: number): boolean;
  etag?: () => string;
  ignoreRange?: boolean;
}

let servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  servers = [];
});

/** Serve `data` with Range support (unless told otherwise); counts requests and the most in flight. */
async function serve(data: () => Uint8Array, b: Behaviour = {}) {
  const stats = { requests: 0, inFlight: 0, maxInFlight: 0, ranges: [] as string[] };
  const server = http.createServer((req, res) => {
    const n = stats.requests++;
    stats.inFlight++;
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
    res.on("close", () => stats.inFlight--);
    if (b.before?.(req, res, n)) return;
    const body = data();
    const etag = b.etag?.() ?? '"v1"';
    const ifMatch = req.headers["if-match"];
    if (ifMatch !== undefined && ifMatch !== etag) {
      res.writeHead(412).end();
      return;
    }
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? "");
    stats.ranges.push(req.headers.range ?? "");
    // Answer slowly enough that concurrent requests overlap.
    setTimeout(() => {
      if (!range || b.ignoreRange) {
        res.writeHead(200, { "content-length": body.length, etag }).end(body);
        return;
      }
      const start = Number(range[1]);
      const end = Math.min(Number(range[2]), body.length - 1);
      res.writeHead(206, { "content-length": end - start + 1, "content-range": `bytes ${start}-${end}/${body.length}`, etag });
      res.end(body.subarray(start, end + 1));
    }, 5);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/obj`, stats };
}

function randomBytes(n: number, seed = 1): Uint8Array {
  const rnd = seededRandom(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rnd() * 256);
  return out;
}

const fast = { retryDelayMs: 1, fetch: nodeFetch() };

describe("RemoteStore", () => {
  it("reads every byte right at random offsets, past the end as zeros", async () => {
    const data = randomBytes(3 * 2 ** 20 + 123);
    const { url } = await serve(() => data);
    const store = await RemoteStore.open(url, { ...fast, blockSize: 4096, readahead: 16384, cacheBytes: 64 * 1024 });
    expect(await store.size()).toBe(data.length);
    const rnd = seededRandom(7);
    for (let i = 0; i < 200; i++) {
      const offset = Math.floor(rnd() * (data.length + 5000));
      const length = 1 + Math.floor(rnd() * 100_000);
      const buf = new Uint8Array(length);
      await store.read(offset, buf);
      const expected = new Uint8Array(length);
      if (offset < data.length) expected.set(data.subarray(offset, Math.min(data.length, offset + length)));
      expect(Buffer.from(buf).equals(Buffer.from(expected))).toBe(true);
      // The cache never holds more than its bound.
      expect(store.cacheSize).toBeLessThanOrEqual(64 * 1024);
    }
    await store.close();
  });

  it("global fetch works as the transport too (as in browsers)", async () => {
    const data = randomBytes(300_000, 2);
    const { url } = await serve(() => data);
    const store = await RemoteStore.open(url, { retryDelayMs: 1 });
    const buf = new Uint8Array(1000);
    await store.read(250_000, buf);
    expect(Buffer.from(buf).equals(Buffer.from(data.subarray(250_000, 251_000)))).toBe(true);
  });

  it("reads ahead: sequential small reads need few requests; a cache hit needs none", async () => {
    const data = randomBytes(2 ** 20, 3);
    const { url, stats } = await serve(() => data);
    const store = await RemoteStore.open(url, { ...fast, blockSize: 4096, readahead: 256 * 1024 });
    const before = stats.requests;
    const buf = new Uint8Array(4096);
    for (let off = 256 * 1024; off < 512 * 1024; off += 4096) await store.read(off, buf);
    expect(stats.requests - before).toBe(1);
    await store.read(0, buf);
    expect(stats.requests - before).toBe(1);
  });

  it("prefetches the next stretch for a sequential reader", async () => {
    const data = randomBytes(2 ** 20, 15);
    const { url, stats } = await serve(() => data);
    const store = await RemoteStore.open(url, { ...fast, blockSize: 4096, readahead: 4096 });
    const buf = new Uint8Array(65536);
    await store.read(512 * 1024, buf);
    expect(stats.ranges.some((r) => r.startsWith(`bytes=${576 * 1024}-`))).toBe(false);
    await store.read(576 * 1024, buf); // sequential: [640K, 704K) is fetched ahead
    await new Promise((r) => setTimeout(r, 100));
    expect(stats.ranges.some((r) => r.startsWith(`bytes=${640 * 1024}-`))).toBe(true);
    const before = stats.requests;
    await store.read(640 * 1024, buf);
    expect(Buffer.from(buf).equals(Buffer.from(data.subarray(640 * 1024, 704 * 1024)))).toBe(true);
    // Served from what was prefetched (the next prefetch may have started).
    expect(stats.ranges.filter((r) => r.startsWith(`bytes=${640 * 1024}-`))).toHaveLength(1);
    expect(stats.requests - before).toBeLessThanOrEqual(1);
  });

  it("keeps at most maxConcurrency requests in flight", async () => {
    const data = randomBytes(4 * 2 ** 20, 4);
    const { url, stats } = await serve(() => data);
    const store = await RemoteStore.open(url, { ...fast, blockSize: 4096, readahead: 4096, maxConcurrency: 3, maxRequestBytes: 64 * 1024 });
    stats.maxInFlight = 0;
    const buf = new Uint8Array(2 ** 20);
    await store.read(2 ** 20, buf);
    expect(Buffer.from(buf).equals(Buffer.from(data.subarray(2 ** 20, 2 ** 21)))).toBe(true);
    expect(stats.maxInFlight).toBeGreaterThan(1);
    expect(stats.maxInFlight).toBeLessThanOrEqual(3);
  });

  it("retries 500s with backoff and then reads the right bytes", async () => {
    const data = randomBytes(200_000, 5);
    let failures = 0;
    const { url } = await serve(() => data, {
      before(_req, res, n) {
        if (n >= 1 && n <= 3) {
          failures++;
          res.writeHead(500).end("oops");
          return true;
        }
        return false;
      },
    });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096 });
    const buf = new Uint8Array(10_000);
    await store.read(100_000, buf);
    expect(failures).toBe(3);
    expect(Buffer.from(buf).equals(Buffer.from(data.subarray(100_000, 110_000)))).toBe(true);
  });

  it("gives up after the retries with one line", async () => {
    const { url } = await serve(() => new Uint8Array(10), {
      before(_req, res) {
        res.writeHead(503, "Service Unavailable").end();
        return true;
      },
    });
    const err = await RemoteStore.open(url, { ...fast, retries: 2 }).catch((e: Error) => e);
    expect((err as Error).message).toBe("Error opening file: HTTP 503 Service Unavailable (3 attempts)");
  });

  it("retries a connection closed mid-body, never returning the partial data", async () => {
    const data = randomBytes(500_000, 6);
    let cut = 0;
    const { url } = await serve(() => data, {
      before(req, res, n) {
        if (n === 1 || n === 2) {
          cut++;
          const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range!)!;
          const start = Number(range[1]);
          const end = Number(range[2]);
          res.writeHead(206, { "content-length": end - start + 1, "content-range": `bytes ${start}-${end}/${data.length}`, etag: '"v1"' });
          res.write(data.subarray(start, start + 100));
          setTimeout(() => res.destroy(), 5);
          return true;
        }
        return false;
      },
    });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096 });
    const buf = new Uint8Array(50_000);
    await store.read(300_000, buf);
    expect(cut).toBe(2);
    expect(Buffer.from(buf).equals(Buffer.from(data.subarray(300_000, 350_000)))).toBe(true);
  });

  it("a server that stops mid-read for good gives one error line", async () => {
    const data = randomBytes(500_000, 8);
    let stopped = false;
    const { url } = await serve(() => data, {
      before(_req, res) {
        if (!stopped) return false;
        res.destroy();
        return true;
      },
    });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096, retries: 2 });
    stopped = true;
    const err = await store.read(400_000, new Uint8Array(1000)).catch((e: Error) => e);
    expect((err as Error).message).toMatch(/^Could not read 'http:\/\/127\.0\.0\.1:\d+\/obj': .*socket hang up.* \(3 attempts\)$/);
    expect((err as Error).message).not.toContain("\n");
  });

  it("an object that changes after open is an error, never a mix", async () => {
    let version = 1;
    const v1 = randomBytes(300_000, 9);
    const v2 = randomBytes(300_000, 10);
    const { url } = await serve(() => (version === 1 ? v1 : v2), { etag: () => `"v${version}"` });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096 });
    version = 2;
    const err = await store.read(200_000, new Uint8Array(1000)).catch((e: Error) => e);
    expect((err as Error).message).toBe(`Could not read '${url}': the remote object changed since it was opened`);
  });

  it("a changed object is noticed by its ETag even when the server ignores If-Match", async () => {
    let version = 1;
    const data = randomBytes(300_000, 11);
    const { url } = await serve(() => data, {
      etag: () => `"v${version}"`,
      before(req) {
        delete req.headers["if-match"];
        return false;
      },
    });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096 });
    version = 2;
    const err = await store.read(200_000, new Uint8Array(1000)).catch((e: Error) => e);
    expect((err as Error).message).toContain("the remote object changed since it was opened");
  });

  it("a server that ignores Range is refused at open in one line", async () => {
    const { url } = await serve(() => randomBytes(2 ** 20, 12), { ignoreRange: true });
    const err = await RemoteStore.open(url, fast).catch((e: Error) => e);
    expect((err as Error).message).toBe("Error opening file: Server does not support 'range' (byte ranges)");
  });

  it("a small object served whole without Range is fine", async () => {
    const data = randomBytes(1000, 13);
    const { url } = await serve(() => data, { ignoreRange: true });
    const store = await RemoteStore.open(url, fast);
    expect(await store.size()).toBe(1000);
    const buf = new Uint8Array(1000);
    await store.read(0, buf);
    expect(Buffer.from(buf).equals(Buffer.from(data))).toBe(true);
  });

  it("a server that never answers fails after the timeout, not later", async () => {
    const data = randomBytes(300_000, 14);
    let hang = false;
    const { url } = await serve(() => data, {
      before() {
        return hang; // never answered
      },
    });
    const store = await RemoteStore.open(url, { ...fast, readahead: 4096, blockSize: 4096, timeoutMs: 200, retries: 1 });
    hang = true;
    const started = Date.now();
    const err = await store.read(200_000, new Uint8Array(100)).catch((e: Error) => e);
    expect((err as Error).message).toBe(`Could not read '${url}': timed out after 200 ms (2 attempts)`);
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("is read-only", async () => {
    const { url } = await serve(() => new Uint8Array(4096));
    const store = await RemoteStore.open(url, fast);
    await expect(store.write(0, new Uint8Array(1))).rejects.toThrow("Block node is read-only");
    await expect(store.resize(0)).rejects.toThrow("Block node is read-only");
  });
});
