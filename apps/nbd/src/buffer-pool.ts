/**
 * Reusable payload buffers for large requests. READ data and multi-chunk WRITE payloads of 4 KiB and more
 * come from here and go back once the socket or the device is done with them, so a steady stream of large
 * requests does not churn the garbage collector or grow the heap. Sizes round up to a power of two plus
 * `HEADROOM` bytes, so a reply header can sit in front of a power-of-two payload in the same buffer (one
 * write to the socket, no separate header allocation). New buffers are not zero-filled: every byte sent is
 * written first (by the device read or the socket). At most `retainBytes` of idle buffers are kept.
 */
const MIN_POOLED = 4096;
/** Bytes beyond the power of two each pooled buffer has room for (the longest reply header is 28). */
export const HEADROOM = 32;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly owned = new WeakSet<ArrayBuffer>();
  private idleBytes = 0;

  constructor(private readonly retainBytes = 16 * 1024 * 1024) {}

  /** A buffer of exactly `length` bytes (contents undefined). */
  acquire(length: number): Buffer {
    if (length < MIN_POOLED) return Buffer.allocUnsafe(length);
    const size = 2 ** Math.ceil(Math.log2(Math.max(1, length - HEADROOM))) + HEADROOM;
    const list = this.free.get(size);
    let backing = list?.pop();
    if (backing) this.idleBytes -= size;
    else {
      // Uninitialised memory: zero-filling would cost a pass over every byte the device overwrites anyway.
      backing = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer;
      this.owned.add(backing);
    }
    return Buffer.from(backing, 0, length);
  }

  /** Returns a buffer from `acquire` (anything else is ignored). The caller must not touch it afterwards. */
  release(view: Uint8Array): void {
    const backing = view.buffer as ArrayBuffer;
    if (!this.owned.has(backing) || this.idleBytes + backing.byteLength > this.retainBytes) return;
    let list = this.free.get(backing.byteLength);
    if (!list) this.free.set(backing.byteLength, (list = []));
    if (list.includes(backing)) return;
    list.push(backing);
    this.idleBytes += backing.byteLength;
  }
}
