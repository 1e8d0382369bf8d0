/**
 * The memory a connection's socket reads go into (see socket-reader.ts), reused from read to read.
 *
 * Bytes of a read are parsed at once. A WRITE payload that lies whole inside the buffer goes to the device
 * as a view of it, without a copy: the buffer is then lent out, the next read goes into another buffer, and
 * the lent one is reused once every view of it is given back. A buffer whose view was never given back (the
 * device call failed, see NbdConnection.execute) is left to the garbage collector.
 */
export class ReceiveBuffers {
  private current: Uint8Array;
  /** Views out per buffer (by its ArrayBuffer), the current one included. */
  private readonly lent = new Map<ArrayBufferLike, number>();
  private readonly idle: Uint8Array[] = [];
  private readonly ours = new WeakSet<ArrayBufferLike>();

  /**
   * @param size bytes of each buffer (the most one socket read can bring)
   * @param keepIdle buffers kept for reuse once given back; more are left to the garbage collector
   * @param maxLent buffers that may be out at once (see canLend)
   */
  constructor(
    readonly size = 64 * 1024,
    private readonly keepIdle = 8,
    private readonly maxLent = 8,
  ) {
    this.current = this.fresh();
  }

  /** The buffer for the next socket read. */
  get buffer(): Uint8Array {
    return this.current;
  }

  /** Whether `view` lies in one of these buffers. */
  owns(view: Uint8Array): boolean {
    return this.ours.has(view.buffer);
  }

  /**
   * Whether `view` (of the current buffer) may go out. A lent view holds its whole buffer, whatever its own
   * length, and a connection's payloads are charged by their length: a client sending one small write per
   * socket read could otherwise hold a 64 KiB buffer per request. Past `maxLent` buffers out, the caller
   * copies the payload instead.
   */
  canLend(view: Uint8Array): boolean {
    return this.lent.has(view.buffer) || this.lent.size < this.maxLent;
  }

  /** `view` (of the current buffer) goes out until giveBack(view). */
  lend(view: Uint8Array): void {
    this.lent.set(view.buffer, (this.lent.get(view.buffer) ?? 0) + 1);
  }

  /**
   * Returns a lent view; false when `view` is not one of ours (the caller frees it its own way). With `reuse`
   * false (a failed device call may still read the view) its buffer is never read into again.
   */
  giveBack(view: Uint8Array, reuse = true): boolean {
    const backing = view.buffer;
    if (!this.ours.has(backing)) return false;
    if (!reuse) {
      this.ours.delete(backing);
      if (backing === this.current.buffer) this.current = this.idle.pop() ?? this.fresh();
    }
    const n = this.lent.get(backing) ?? 0;
    if (n > 1) {
      this.lent.set(backing, n - 1);
      return true;
    }
    this.lent.delete(backing);
    if (reuse && backing !== this.current.buffer && this.idle.length < this.keepIdle) this.idle.push(new Uint8Array(backing));
    return true;
  }

  /** After a read's bytes were used: the next read goes into a buffer no lent view points into. */
  rotate(): void {
    if (this.lent.has(this.current.buffer)) this.current = this.idle.pop() ?? this.fresh();
  }

  /** Views lent out and not given back. */
  get lentCount(): number {
    let n = 0;
    for (const count of this.lent.values()) n += count;
    return n;
  }

  private fresh(): Uint8Array {
    // Not zero-filled: a read writes the bytes before anything looks at them.
    const buffer = Buffer.allocUnsafeSlow(this.size);
    this.ours.add(buffer.buffer);
    return buffer;
  }
}
