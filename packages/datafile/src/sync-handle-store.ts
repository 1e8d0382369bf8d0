/**
 * A read-write ByteStore over a synchronous random-access file handle: a browser's Origin Private File
 * System `FileSystemSyncAccessHandle` (dedicated workers only), or anything with the same five calls. The
 * bytes live on disk, so an image written through it costs no memory beyond the caller's buffers.
 */
import type { ByteStore, StorePreallocation } from "@qcowkit/spec";
import { assertByteRange, assertByteSize, assertPreallocation, closedError, readOnlyError, shrinkPreallocationError } from "./store-checks";

/** The part of FileSystemSyncAccessHandle the store uses. */
export interface SyncAccessHandleLike {
  read(buffer: Uint8Array, options: { at: number }): number;
  write(buffer: Uint8Array, options: { at: number }): number;
  truncate(size: number): void;
  getSize(): number;
  flush(): void;
  close(): void;
}

/** Zeros are written this many bytes at a time. */
const ZERO_CHUNK = 1024 * 1024;

export class SyncHandleStore implements ByteStore {
  readonly readOnly: boolean;
  private closed = false;

  constructor(
    private readonly handle: SyncAccessHandleLike,
    readonly name: string,
    opts: { readOnly?: boolean } = {},
  ) {
    this.readOnly = opts.readOnly ?? false;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    assertByteRange(this.name, offset, into.byteLength);
    let done = 0;
    while (done < into.byteLength) {
      const n = this.handle.read(into.subarray(done), { at: offset + done });
      if (n <= 0) break;
      done += n;
    }
    if (done < into.byteLength) into.fill(0, done);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
    assertByteRange(this.name, offset, data.byteLength);
    let done = 0;
    while (done < data.byteLength) {
      const n = this.handle.write(data.subarray(done), { at: offset + done });
      if (n <= 0) throw new Error(`${this.name}: short write`);
      done += n;
    }
  }

  async flush(): Promise<void> {
    this.assertOpen();
    this.handle.flush();
  }

  async size(): Promise<number> {
    this.assertOpen();
    return this.handle.getSize();
  }

  async resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
    assertByteSize(this.name, size);
    assertPreallocation(this.name, preallocation);
    const old = this.handle.getSize();
    if (size < old && preallocation !== "off") throw shrinkPreallocationError();
    this.handle.truncate(size);
    if (preallocation === "full" && size > old) await this.writeZeroBytes(old, size - old);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
    assertByteRange(this.name, offset, length);
    // Discarding never changes the size: only the part inside the file is zeroed.
    const inside = Math.max(0, Math.min(offset + length, this.handle.getSize()) - offset);
    if (inside > 0) await this.writeZeroBytes(offset, inside);
  }

  async writeZeroes(offset: number, length: number, _unmap?: boolean): Promise<void> {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
    assertByteRange(this.name, offset, length);
    if (length === 0) return;
    const size = this.handle.getSize();
    // Past the end a hole is enough: growing the file reads as zeros there.
    const inside = Math.max(0, Math.min(offset + length, size) - offset);
    if (inside > 0) await this.writeZeroBytes(offset, inside);
    if (offset + length > size) this.handle.truncate(offset + length);
  }

  async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.readOnly) this.handle.flush();
    this.handle.close();
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    const zeros = new Uint8Array(Math.min(length, ZERO_CHUNK));
    for (let done = 0; done < length; done += zeros.byteLength) {
      await this.write(offset + done, zeros.subarray(0, Math.min(zeros.byteLength, length - done)));
    }
  }

  private assertOpen(): void {
    if (this.closed) throw closedError(this.name);
  }
}
