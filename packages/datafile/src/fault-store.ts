import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { MemoryStore } from "./memory-store";
import { seededRandom } from "./seeded-random";
import { closedError } from "./store-checks";

/** Which unflushed operations survive a simulated power loss. */
export interface UnflushedKeepOptions {
  /** Seed of the deterministic choice. */
  seed: number;
  /** Chance that each unflushed operation survives, from 0 to 1; default 0.5. */
  keepProbability?: number;
}

export interface FaultInjectingStoreOptions {
  /** Counted operations after the first `failAfter` throw Qcow2Error IO_ERROR (the store stays usable for reads). */
  failAfter?: number;
  /** Simulated power loss once `crashAfter` counted operations completed: every later call throws. */
  crashAfter?: number;
  /** Default for `crashImage()`: keep a seeded random subset of unflushed operations. */
  keepUnflushed?: UnflushedKeepOptions;
  /** Name for messages; default the inner store's name. */
  name?: string;
}

/** The kinds of operations that are counted (everything that changes the store, and flush). */
export type CountedOperation = "write" | "flush" | "discard" | "writeZeroes" | "resize";

type PendingOperation =
  | { kind: "write"; offset: number; data: Uint8Array }
  | { kind: "discard"; offset: number; length: number }
  | { kind: "writeZeroes"; offset: number; length: number; unmap: boolean }
  | { kind: "resize"; size: number; preallocation: StorePreallocation };

/**
 * A ByteStore wrapper for crash and error-path tests. The inner store only ever holds durable
 * state: writes, discards, write-zeroes and resizes are kept in a list (and shown to readers through
 * a copy-on-write overlay) until `flush()` applies them to the inner store and flushes it. After a
 * simulated crash, `crashImage()` builds a MemoryStore over the inner store holding what was
 * flushed, plus optionally a seeded random subset of the unflushed operations (a disk that reorders
 * writes). Nothing is copied wholesale, so multi-GiB sparse stores are fine.
 *
 * Operations are serialised. `operationCount` counts attempted write, flush, discard, writeZeroes
 * and resize calls (reads and size queries are not counted).
 */
export class FaultInjectingStore implements ByteStore {
  readonly name: string;
  private readonly inner: ByteStore;
  private readonly options: FaultInjectingStoreOptions;
  private pending: PendingOperation[] = [];
  private live: MemoryStore | undefined;
  private count = 0;
  private isCrashed = false;
  private closed = false;
  private queueTail: Promise<unknown> = Promise.resolve();

  constructor(inner: ByteStore, options: FaultInjectingStoreOptions = {}) {
    for (const key of ["failAfter", "crashAfter"] as const) {
      const value = options[key];
      if (value !== undefined && !(Number.isSafeInteger(value) && value >= 0)) {
        throw new Qcow2Error("INVALID_ARGUMENT", `${key} must be a non-negative integer`);
      }
    }
    this.inner = inner;
    this.options = options;
    this.name = options.name ?? inner.name;
    if (options.crashAfter === 0) this.isCrashed = true;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** Counted operations attempted so far. */
  get operationCount(): number {
    return this.count;
  }

  /** Operations since the last successful flush. */
  get unflushedOperationCount(): number {
    return this.pending.length;
  }

  /** True once the simulated power loss happened. */
  get crashed(): boolean {
    return this.isCrashed;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.serialize(async () => {
      this.assertAlive();
      await (await this.liveStore()).read(offset, into);
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.counted("write", async (live) => {
      await live.write(offset, data);
      this.pending.push({ kind: "write", offset, data: data.slice() });
    });
  }

  flush(): Promise<void> {
    return this.counted("flush", async () => {
      await this.applyPending();
      await this.inner.flush();
    });
  }

  size(): Promise<number> {
    return this.serialize(async () => {
      this.assertAlive();
      return (await this.liveStore()).size();
    });
  }

  resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    return this.counted("resize", async (live) => {
      await live.resize(size, preallocation);
      this.pending.push({ kind: "resize", size, preallocation });
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.counted("discard", async (live) => {
      await live.discard(offset, length);
      this.pending.push({ kind: "discard", offset, length });
    });
  }

  writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    return this.counted("writeZeroes", async (live) => {
      await live.writeZeroes(offset, length, unmap);
      this.pending.push({ kind: "writeZeroes", offset, length, unmap });
    });
  }

  /**
   * Close. Without a crash, unflushed operations are handed to the inner store (as a clean
   * shutdown would leave them) and the inner store is closed. After a crash the inner store is left
   * open, because crash images read from it: close it yourself when done with them.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  close(): Promise<void> {
    return this.serialize(async () => {
      if (this.closed) return;
      this.closed = true;
      if (this.isCrashed) return;
      await this.applyPending();
      await this.inner.close();
    });
  }

  /** Simulate power loss now: every later call fails. */
  crash(): void {
    this.isCrashed = true;
  }

  /**
   * Simulate power loss (if not already crashed) and return what the disk holds afterwards: a
   * writable MemoryStore over the inner store with the flushed state, plus a seeded random subset of
   * the unflushed operations applied in their original order (`keep`, or the constructor's
   * `keepUnflushed`; none when both are absent).
   */
  crashImage(keep: UnflushedKeepOptions | undefined = this.options.keepUnflushed): Promise<MemoryStore> {
    return this.serialize(async () => {
      const keepProbability = keep?.keepProbability ?? 0.5;
      if (!(keepProbability >= 0 && keepProbability <= 1)) {
        throw new Qcow2Error("INVALID_ARGUMENT", "keepProbability must be between 0 and 1");
      }
      this.isCrashed = true;
      const image = new MemoryStore({ base: this.inner, size: await this.inner.size(), name: this.name });
      const random = keep ? seededRandom(keep.seed) : undefined;
      for (const operation of this.pending) {
        if (random && random() < keepProbability) await applyOperation(image, operation);
      }
      return image;
    });
  }

  /** Simulate power loss (if not already crashed) and return only what was flushed. */
  durableImage(): Promise<MemoryStore> {
    return this.crashImage(undefined);
  }

  private counted<T>(kind: CountedOperation, run: (live: MemoryStore) => Promise<T>): Promise<T> {
    return this.serialize(async () => {
      this.assertAlive();
      const number = ++this.count;
      const { failAfter, crashAfter } = this.options;
      if (failAfter !== undefined && number > failAfter) {
        throw new Qcow2Error("IO_ERROR", `${this.name}: injected I/O error on operation ${number} (${kind})`);
      }
      const result = await run(await this.liveStore());
      if (crashAfter !== undefined && number >= crashAfter) this.isCrashed = true;
      return result;
    });
  }

  private async liveStore(): Promise<MemoryStore> {
    this.live ??= new MemoryStore({
      base: this.inner,
      size: await this.inner.size(),
      readOnly: this.inner.readOnly,
      name: this.name,
    });
    return this.live;
  }

  /** Hand the unflushed operations to the inner store, in order. */
  private async applyPending(): Promise<void> {
    for (const operation of this.pending) await applyOperation(this.inner, operation);
    this.pending = [];
    // The inner store now holds everything the overlay held.
    this.live = undefined;
  }

  private assertAlive(): void {
    if (this.closed) throw closedError(this.name);
    if (this.isCrashed) throw new Qcow2Error("IO_ERROR", `${this.name}: simulated power loss`);
  }

  private serialize<T>(run: () => Promise<T>): Promise<T> {
    const result = this.queueTail.then(run, run);
    this.queueTail = result.catch(() => undefined);
    return result;
  }
}

function applyOperation(store: ByteStore, operation: PendingOperation): Promise<void> {
  switch (operation.kind) {
    case "write":
      return store.write(operation.offset, operation.data);
    case "discard":
      return store.discard(operation.offset, operation.length);
    case "writeZeroes":
      return store.writeZeroes(operation.offset, operation.length, operation.unmap);
    case "resize":
      return store.resize(operation.size, operation.preallocation);
  }
}
