/**
 * A queue of received chunks, consumed in order. Messages that lie inside one chunk are returned as views
 * (no copy); only messages spanning chunks are copied once into a new array.
 */
export class InputBuffer {
  private chunks: Uint8Array[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  /** Unconsumed bytes. */
  length = 0;

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.byteLength;
  }

  /**
   * Removes and returns the next `n` bytes (n <= length): a view when they lie in one chunk, else a copy in
   * memory from `allocate` (default: a new array).
   */
  take(n: number, allocate?: (length: number) => Uint8Array): Uint8Array {
    if (n > this.length) throw new RangeError(`take(${n}) with ${this.length} bytes buffered`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return new Uint8Array(0);
    const inFirst = first.byteLength - this.head;
    if (n <= inFirst) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = allocate ? allocate(n) : new Uint8Array(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Removes the next `n` bytes (n <= length) into `target` at `at`. */
  copyInto(target: Uint8Array, at: number, n: number): void {
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
    const count = Math.min(n, this.length);
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
    this.length = 0;
    return out;
  }

  private advance(n: number): void {
    this.head += n;
    this.length -= n;
    if (this.head === this.chunks[0]!.byteLength) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
