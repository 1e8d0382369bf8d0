import { describe, expect, it } from "vitest";
import { BufferPool, HEADROOM } from "../../src/buffer-pool";

describe("BufferPool", () => {
  it("reuses released large buffers and never small or foreign ones", () => {
    const pool = new BufferPool(1 << 20);
    const a = pool.acquire(100_000);
    expect(a.length).toBe(100_000);
    expect(a.buffer.byteLength).toBe(131072 + HEADROOM);
    pool.release(a);
    pool.release(a); // a second release must not hand the buffer out twice
    const b = pool.acquire(70_000);
    expect(b.buffer).toBe(a.buffer);
    const c = pool.acquire(70_000);
    expect(c.buffer).not.toBe(a.buffer);
    const small = pool.acquire(100);
    pool.release(small);
    pool.release(new Uint8Array(131072));
    expect(pool.acquire(131072).buffer).not.toBe(small.buffer);
  });

  it("keeps at most its retention limit of idle buffers", () => {
    const pool = new BufferPool(2 * (128 * 1024 + HEADROOM));
    const bufs = [pool.acquire(128 * 1024), pool.acquire(128 * 1024), pool.acquire(128 * 1024)];
    for (const b of bufs) pool.release(b);
    const again = [pool.acquire(128 * 1024), pool.acquire(128 * 1024), pool.acquire(128 * 1024)];
    const reused = again.filter((x) => bufs.some((b) => b.buffer === x.buffer));
    expect(reused).toHaveLength(2);
  });

  it("has room for a reply header in front of a power-of-two payload, in the same size class", () => {
    const pool = new BufferPool(1 << 20);
    const withHeader = pool.acquire(28 + 65536);
    expect(withHeader.buffer.byteLength).toBe(65536 + HEADROOM);
    pool.release(withHeader);
    expect(pool.acquire(65536).buffer).toBe(withHeader.buffer);
  });
});
