import { constants, open } from "node:fs/promises";
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { printableName } from "../printable-name";
import {
  assertByteRange,
  assertByteSize,
  assertPreallocation,
  closedError,
  readOnlyError,
  shrinkPreallocationError,
} from "../store-checks";
import { couldNotCreate, couldNotOpen, fromSystemError } from "./system-error";

/** The part of Node's `FileHandle` FileStore uses (tests substitute their own). */
export interface FileHandleLike {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  stat(): Promise<{ size: number; blocks: number; isFile(): boolean }>;
  truncate(length: number): Promise<void>;
  datasync(): Promise<void>;
  close(): Promise<void>;
}

export interface FileStoreOpenOptions {
  /** Open read-only; writes fail with READ_ONLY. */
  readOnly?: boolean;
  /** Create the file when missing (error messages then say "Could not create 'x'", as qemu-img create does). */
  create?: boolean;
  /** Truncate the file to zero bytes on open. */
  truncate?: boolean;
  /** Permission bits of a created file (default 0o644, less the umask). */
  mode?: number;
  /** Name for messages; default the path. */
  name?: string;
}

/** Largest byte count handed to one read or write call (Node refuses more than 2^31 - 1). */
const maxBytesPerCall = 1 << 30;
/** Size of the zero buffer used to write zeros; ranges are written in pieces of at most this size. */
export const zeroBufferBytes = 1 << 20;
let sharedZeros: Uint8Array | undefined;

/**
 * A ByteStore on a regular file through `fs/promises` positional I/O.
 *
 * - Every position is checked to be a safe non-negative integer (Qcow2Error INTERNAL otherwise)
 *   before it reaches `fs`: Node 20 silently uses the file cursor for bigint or unsafe positions.
 * - Short reads and writes are continued until done; bytes past end of file read as zeros.
 * - `resize` "off" uses ftruncate (sparse). Node has no fallocate(), so "falloc" writes zeros into
 *   the grown tail only, exactly like "full" (the space is reserved, at the cost of the writes).
 *   Shrinking with preallocation fails (NOT_SUPPORTED), as in QEMU.
 * - `discard` and `writeZeroes(…, unmap)` on a range reaching end of file truncate and extend
 *   again (the tail becomes a hole); other ranges, and `writeZeroes` without unmap, are written
 *   with zeros in pieces of at most 1 MiB. `discard` never grows the file; `writeZeroes` grows it
 *   like a write.
 * - `flush` is fdatasync; `allocatedSize` is st_blocks * 512.
 * - Only regular files are accepted ("'file' driver requires 'x' to be a regular file").
 */
export class FileStore implements ByteStore {
  readonly readOnly: boolean;
  readonly name: string;
  private readonly handle: FileHandleLike;
  private closed = false;

  private constructor(handle: FileHandleLike, name: string, readOnly: boolean) {
    this.handle = handle;
    this.name = name;
    this.readOnly = readOnly;
  }

  /**
   * Open `path`. Errors are one line in QEMU's wording, e.g. Qcow2Error NOT_FOUND
   * "Could not open 'x.raw': No such file or directory".
   */
  static async open(path: string, options: FileStoreOpenOptions = {}): Promise<FileStore> {
    const name = options.name ?? path;
    // QEMU says "Could not create" when creating an image file, "Could not open" otherwise.
    const prefix = options.create ? couldNotCreate(name) : couldNotOpen(name);
    const readOnly = options.readOnly ?? false;
    if (readOnly && (options.create || options.truncate)) {
      throw new Qcow2Error("INVALID_ARGUMENT", `${prefix}: cannot create or truncate a read-only file`);
    }
    if (path === "" || path.includes("\0")) {
      throw new Qcow2Error("NOT_FOUND", `${prefix}: No such file or directory`);
    }
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
    let flags = (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_NONBLOCK;
    if (options.create) flags |= constants.O_CREAT;
    if (options.truncate) flags |= constants.O_TRUNC;
    let handle;
    try {
      handle = await open(path, flags, options.mode ?? 0o644);
    } catch (error) {
      throw fromSystemError(error, prefix);
    }
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) {
        throw new Qcow2Error("INVALID_ARGUMENT", `'file' driver requires '${printableName(name)}' to be a regular file`);
      }
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw fromSystemError(error, prefix);
    }
    return new FileStore(handle, name, readOnly);
  }

  /** Wrap an already open handle (positioned I/O only; the cursor is never used). */
  static fromHandle(handle: FileHandleLike, options: { name: string; readOnly?: boolean }): FileStore {
    return new FileStore(handle, options.name, options.readOnly ?? false);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    assertByteRange(this.name, offset, into.byteLength);
    let done = 0;
    while (done < into.byteLength) {
      const position = offset + done;
      const length = Math.min(into.byteLength - done, maxBytesPerCall);
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.handle.read(into, done, length, checkedPosition(this.name, position)));
      } catch (error) {
        throw fromSystemError(error, `Could not read '${printableName(this.name)}' at byte ${position}`);
      }
      if (bytesRead === 0) {
        into.fill(0, done); // end of file
        return;
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, data.byteLength);
    await this.writeAll(offset, data);
  }

  async flush(): Promise<void> {
    this.assertOpen();
    try {
      await this.handle.datasync();
    } catch (error) {
      throw fromSystemError(error, `Could not flush '${printableName(this.name)}'`);
    }
  }

  async size(): Promise<number> {
    this.assertOpen();
    return (await this.stat()).size;
  }

  async resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    this.assertWritable();
    assertByteSize(this.name, size);
    assertPreallocation(this.name, preallocation);
    const oldSize = await this.size();
    if (size < oldSize && preallocation !== "off") throw shrinkPreallocationError();
    if (preallocation === "off" || size <= oldSize) {
      await this.truncate(size);
      return;
    }
    try {
      await this.writeZeroBytes(oldSize, size);
    } catch (error) {
      // Like QEMU: undo a partial preallocation.
      await this.handle.truncate(oldSize).catch(() => undefined);
      throw error;
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, length);
    const size = await this.size();
    const end = Math.min(offset + length, size);
    if (end <= offset) return;
    if (end === size) {
      await this.truncate(offset);
      await this.truncate(size);
    } else {
      await this.writeZeroBytes(offset, end);
    }
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, length);
    const end = offset + length;
    if (length === 0) return;
    const size = await this.size();
    if (unmap && end >= size) {
      if (offset < size) await this.truncate(offset);
      await this.truncate(end);
    } else {
      await this.writeZeroBytes(offset, end);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.handle.close();
    } catch (error) {
      throw fromSystemError(error, `Could not close '${printableName(this.name)}'`);
    }
  }

  async allocatedSize(): Promise<number> {
    this.assertOpen();
    return (await this.stat()).blocks * 512;
  }

  private async writeAll(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.byteLength) {
      const position = offset + done;
      const length = Math.min(data.byteLength - done, maxBytesPerCall);
      let bytesWritten: number;
      try {
        ({ bytesWritten } = await this.handle.write(data, done, length, checkedPosition(this.name, position)));
      } catch (error) {
        throw fromSystemError(error, `Could not write '${printableName(this.name)}' at byte ${position}`);
      }
      if (bytesWritten <= 0) {
        throw new Qcow2Error("IO_ERROR", `Could not write '${printableName(this.name)}' at byte ${position}: no progress`);
      }
      done += bytesWritten;
    }
  }

  /** Write zeros over `[start, end)` in pieces of at most `zeroBufferBytes`. */
  private async writeZeroBytes(start: number, end: number): Promise<void> {
    sharedZeros ??= new Uint8Array(zeroBufferBytes);
    for (let position = start; position < end; position += zeroBufferBytes) {
      await this.writeAll(position, sharedZeros.subarray(0, Math.min(zeroBufferBytes, end - position)));
    }
  }

  private async truncate(size: number): Promise<void> {
    try {
      await this.handle.truncate(checkedPosition(this.name, size));
    } catch (error) {
      throw fromSystemError(error, `Could not resize '${printableName(this.name)}'`);
    }
  }

  private async stat(): Promise<{ size: number; blocks: number }> {
    try {
      return await this.handle.stat();
    } catch (error) {
      throw fromSystemError(error, `Could not stat '${printableName(this.name)}'`);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw closedError(this.name);
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
  }
}

/** The last line of defence before `fs`: a position Node 20 would not silently replace by the cursor. */
function checkedPosition(name: string, position: number): number {
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new Qcow2Error("INTERNAL", `${name}: invalid byte offset ${String(position)}`);
  }
  return position;
}
