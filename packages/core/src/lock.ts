/**
 * A readers-writer lock with FIFO fairness: readers run together, a writer runs alone, and a waiting
 * writer holds back readers that arrive after it (so writers are not starved).
 */
interface Waiter {
  write: boolean;
  grant: () => void;
}

export class RwLock {
  private readers = 0;
  private writer = false;
  private readonly queue: Waiter[] = [];

  async read<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.writer && this.queue.length === 0) {
      this.readers++;
    } else {
      await new Promise<void>((grant) => this.queue.push({ write: false, grant }));
    }
    try {
      return await fn();
    } finally {
      this.readers--;
      this.dispatch();
    }
  }

  async write<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.writer && this.readers === 0 && this.queue.length === 0) {
      this.writer = true;
    } else {
      await new Promise<void>((grant) => this.queue.push({ write: true, grant }));
    }
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.dispatch();
    }
  }

  /** Exactly one reader holds the lock and no writer does: the caller, when it holds it for reading. */
  get soleReader(): boolean {
    return this.readers === 1 && !this.writer;
  }

  private dispatch(): void {
    while (this.queue.length > 0 && !this.writer) {
      const head = this.queue[0]!;
      if (head.write) {
        if (this.readers > 0) return;
        this.queue.shift();
        this.writer = true;
        head.grant();
        return;
      }
      this.queue.shift();
      this.readers++;
      head.grant();
    }
  }
}

/**
 * Ranges held by operations in flight: `enter` waits until no held range overlaps the given one, then
 * holds it until the returned function is called.
 */
export class RangeLocks {
  private readonly held: Array<{ from: number; to: number; done: Promise<void> }> = [];

  async enter(from: number, to: number): Promise<() => void> {
    for (;;) {
      const overlap = this.held.find((r) => r.from < to && from < r.to);
      if (!overlap) break;
      await overlap.done;
    }
    let leave!: () => void;
    const entry = { from, to, done: new Promise<void>((resolve) => (leave = resolve)) };
    this.held.push(entry);
    return () => {
      this.held.splice(this.held.indexOf(entry), 1);
      leave();
    };
  }
}
