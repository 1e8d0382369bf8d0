/**
 * Bytes received from a peer, consumed in order and in exact amounts. A message inside one received chunk is
 * handed out as a view (no copy); only a message spanning chunks is copied, once, into memory from the
 * caller's allocator. One reader may wait for bytes to arrive (`need`); `fail` ends the stream for it.
 */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private buffered = 0;
  private waiter: { bytes: number; resolve: () => void; reject: (error: Error) => void } | undefined;
  private failure: Error | undefined;

  /** Unconsumed bytes. */
  get length(): number {
    return this.buffered;
  }

  /** The error the stream ended with, once it ended. */
  get error(): Error | undefined {
    return this.failure;
  }

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0 || this.failure) return;
    this.chunks.push(chunk);
    this.buffered += chunk.byteLength;
    const w = this.waiter;
    if (w && this.buffered >= w.bytes) {
      this.waiter = undefined;
      w.resolve();
    }
  }

  /** The stream ended: the waiting reader, and any later one, fails with `error` (the first one given). */
  fail(error: Error): void {
    this.failure ??= error;
    const w = this.waiter;
    if (w) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  /** Resolves once `bytes` bytes are buffered; rejects when the stream ends first. */
  need(bytes: number): Promise<void> {
    if (this.buffered >= bytes) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiter) return Promise.reject(new Error("ByteQueue: two readers at once"));
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
    });
  }

  /** The 32-bit big-endian value at the read position, not consumed (4 bytes must be buffered). */
  peekU32(): number {
    if (this.buffered < 4) throw new RangeError(`peekU32 with ${this.buffered} bytes buffered`);
    let value = 0;
    let chunk = 0;
    let at = this.head;
    for (let i = 0; i < 4; i++) {
      while (at >= this.chunks[chunk]!.byteLength) {
        chunk++;
        at = 0;
      }
      value = value * 256 + this.chunks[chunk]![at++]!;
    }
    return value;
  }

  /**
   * Removes and returns the next `n` bytes: a view when they lie in one chunk, else a copy in memory from
   * `allocate` (default: a new array).
   */
  take(n: number, allocate?: (length: number) => Uint8Array): Uint8Array {
    if (n > this.buffered) throw new RangeError(`take(${n}) with ${this.buffered} bytes buffered`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return new Uint8Array(0);
    if (n <= first.byteLength - this.head) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = allocate ? allocate(n) : new Uint8Array(n);
    this.copyTo(out, 0, n);
    return out;
  }

  /** Removes the next `n` bytes into `target` at `at`. */
  copyTo(target: Uint8Array, at: number, n: number): void {
    if (n > this.buffered) throw new RangeError(`copyTo(${n}) with ${this.buffered} bytes buffered`);
    let copied = 0;
    while (copied < n) {
      const chunk = this.chunks[0]!;
      const count = Math.min(n - copied, chunk.byteLength - this.head);
      target.set(chunk.subarray(this.head, this.head + count), at + copied);
      copied += count;
      this.advance(count);
    }
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const count = Math.min(n, this.buffered);
    let left = count;
    while (left > 0) {
      const step = Math.min(left, this.chunks[0]!.byteLength - this.head);
      this.advance(step);
      left -= step;
    }
    return count;
  }

  /** Removes and returns everything buffered, as separate chunks. */
  drain(): Uint8Array[] {
    const out = this.chunks.map((c, i) => (i === 0 ? c.subarray(this.head) : c));
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
    return out;
  }

  private advance(n: number): void {
    this.head += n;
    this.buffered -= n;
    if (this.head === this.chunks[0]!.byteLength) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
