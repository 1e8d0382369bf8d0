/**
 * A byte budget shared by all connections of a server: request payloads being held and reply bytes not yet
 * handed to the kernel are charged to it, and connections stop reading new requests while it is spent.
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
