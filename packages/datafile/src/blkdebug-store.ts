/**
 * QEMU's blkdebug driver as a ByteStore wrapper: error injection for tests. An inject-error rule makes the
 * requests of its I/O types (those touching its offset, when it has one) fail with its errno, once or every
 * time. Rules of the event "none" are active from the start (QEMU raises that event when blkdebug opens);
 * rules of other events (the qcow2 driver's debug events) are accepted and never fire here.
 */
import { Qcow2Error, errnoText, type ByteStore, type StorePreallocation } from "@qcowkit/spec";

export type BlkdebugIoType = "read" | "write" | "write-zeroes" | "discard" | "flush" | "block-status";

export interface BlkdebugInjectError {
  /** The event that activates the rule ("none": active from the start). */
  event: string;
  /** The I/O type the rule applies to; all of them when absent. */
  iotype?: BlkdebugIoType;
  /** errno number (default 5, EIO). */
  errno?: number;
  /** Only requests touching this byte offset (sector * 512); all requests when absent. */
  offset?: number;
  /** Removed once it fired. */
  once?: boolean;
}

export const BLKDEBUG_IO_TYPES: readonly BlkdebugIoType[] = ["read", "write", "write-zeroes", "discard", "flush", "block-status"];

/** Linux errno numbers QEMU's tests use, by the names Qcow2Error knows. */
const ERRNO_NAMES: Record<number, keyof typeof errnoText> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  11: "EAGAIN",
  13: "EACCES",
  17: "EEXIST",
  22: "EINVAL",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  34: "ERANGE",
  95: "ENOTSUP",
};

export class BlkdebugStore implements ByteStore {
  readonly name: string;
  private active: BlkdebugInjectError[];

  constructor(
    private readonly inner: ByteStore,
    rules: readonly BlkdebugInjectError[],
  ) {
    this.name = inner.name;
    for (const r of rules) {
      if (r.errno !== undefined && ERRNO_NAMES[r.errno] === undefined) {
        throw new Qcow2Error("INVALID_ARGUMENT", `blkdebug: errno ${r.errno} is not supported`);
      }
    }
    this.active = rules.filter((r) => r.event === "none");
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  private check(iotype: BlkdebugIoType, offset: number, length: number): void {
    const rule = this.active.find(
      (r) => (r.iotype === undefined || r.iotype === iotype) && (r.offset === undefined || (length > 0 && r.offset >= offset && r.offset < offset + length)),
    );
    if (!rule) return;
    if (rule.once) this.active = this.active.filter((r) => r !== rule);
    const errno = ERRNO_NAMES[rule.errno ?? 5]!;
    throw new Qcow2Error("IO_ERROR", errnoText[errno], { errno });
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.check("read", offset, into.byteLength);
    await this.inner.read(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check("write", offset, data.byteLength);
    await this.inner.write(offset, data);
  }

  async flush(): Promise<void> {
    this.check("flush", 0, 0);
    await this.inner.flush();
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  resize(size: number, preallocation?: StorePreallocation): Promise<void> {
    return this.inner.resize(size, preallocation);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check("discard", offset, length);
    await this.inner.discard(offset, length);
  }

  async writeZeroes(offset: number, length: number, unmap?: boolean): Promise<void> {
    this.check("write-zeroes", offset, length);
    await this.inner.writeZeroes(offset, length, unmap);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
