/**
 * Bytes received from an NBD server, consumed in exact amounts by one reader at a time. Messages inside one
 * received chunk are handed out as views; only messages spanning chunks are copied.
 */
export class ReceiveBuffer {
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

  /** The stream ended (the server hung up, or the client gave up on it): waiting readers fail with `error`. */
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
    if (this.waiter) return Promise.reject(new Error("ReceiveBuffer: two readers at once"));
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
    });
  }

  /** Removes and returns the next `n` buffered bytes (a view when they lie in one chunk). */
  take(n: number): Uint8Array {
    if (n > this.buffered) throw new RangeError(`take(${n}) with ${this.buffered} bytes buffered`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return new Uint8Array(0);
    if (n <= first.byteLength - this.head) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = new Uint8Array(n);
    this.copyTo(out, 0, n);
    return out;
  }

  /** Removes the next `n` buffered bytes into `target` at `at`. */
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

  /** Drops the next `n` buffered bytes. */
  skip(n: number): void {
    if (n > this.buffered) throw new RangeError(`skip(${n}) with ${this.buffered} bytes buffered`);
    let left = n;
    while (left > 0) {
      const step = Math.min(left, this.chunks[0]!.byteLength - this.head);
      this.advance(step);
      left -= step;
    }
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
