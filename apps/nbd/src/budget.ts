/**
 * A byte budget shared by all connections of a server: request payloads being held, reply bytes not yet
 * handed to the kernel and handshake replies not yet sent are charged to it. It is a hard ceiling: a request
 * is taken only when its whole cost fits (`fits`); connections stop reading while it does not.
 */
export class MemoryBudget {
  /** Bytes currently charged. */
  used = 0;
  private readonly waiters = new Set<() => void>();

  constructor(
    /** Bytes; reading pauses at or above this. */
    readonly limit: number,
  ) {}

  get exhausted(): boolean {
    return this.used >= this.limit;
  }

  /**
   * Whether `bytes` more may be charged without passing the limit. When nothing is charged anything fits,
   * so that a request larger than the whole limit is not refused for ever.
   */
  fits(bytes: number): boolean {
    return this.used === 0 || this.used + bytes <= this.limit;
  }

  charge(bytes: number): void {
    this.used += bytes;
  }

  release(bytes: number): void {
    this.used -= bytes;
    if (this.used < this.limit && this.waiters.size > 0) {
      const waiting = [...this.waiters];
      this.waiters.clear();
      for (const wake of waiting) wake();
    }
  }

  /** Calls `wake` once, the next time the budget drops below its limit. */
  waitForRoom(wake: () => void): void {
    this.waiters.add(wake);
  }

  cancelWait(wake: () => void): void {
    this.waiters.delete(wake);
  }
}
