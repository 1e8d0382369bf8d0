import { fdatasyncSync, read as fdRead, readSync, write as fdWrite, writeSync } from "node:fs";
import { constants, open, statfs } from "node:fs/promises";
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
import { assertScanFlags, copyThroughBuffer, zeroSectorFlags, zeroSectorsByReading } from "../store-copy";
import { couldNotCreate, couldNotOpen, fromSystemError } from "./system-error";
import { imagePermissions, inactiveLock, lockImage, lockingUnavailableError, lockingUnavailableReason, type ImageLock } from "./lock";
import { fromNativeError, isUnsupportedError, nativeFs, type FallocateMode, type NativeFs } from "./native";
import { allocationExtents, fallocateRange, type AllocationExtent } from "./sparse";

/** The part of Node's `FileHandle` FileStore uses (tests substitute their own). */
export interface FileHandleLike {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  stat(): Promise<{ size: number; blocks: number; isFile(): boolean }>;
  truncate(length: number): Promise<void>;
  datasync(): Promise<void>;
  close(): Promise<void>;
  /** The OS file descriptor (Node's FileHandle has it); without one the native addon is not used. */
  readonly fd?: number;
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
  /**
   * QEMU-compatible image lock taken on open (see lock.ts): "write" as a read-write qcow2 in QEMU
   * (needs a writable store), "read" as a read-only one, "shared" as QEMU's force-share `-U`
   * (read-only stores only), "none" (default) takes no lock. A conflict fails the open with
   * Qcow2Error LOCKED `Failed to get "write" lock` (hint line in `error.hint`). Without the
   * native addon (or with `native: false`) no lock can be taken: "write" then fails the open with
   * Qcow2Error NOT_SUPPORTED naming the opt-out, and "read"/"shared" open with an inactive lock.
   */
  lock?: FileStoreLockMode;
  /** Use the native addon when it is available (default true); false forces the JavaScript paths. */
  native?: boolean;
  /**
   * QEMU's file protocol driver the file is opened as: "file" (default) accepts regular files only,
   * "host_device" and "host_cdrom" character and block devices only (their size as fstat gives it).
   */
  driver?: FileDriver;
  /**
   * Reads and writes of at most this many bytes are made synchronously (default 0: never). For tools that
   * do one request at a time (qimg, qio) this skips the thread-pool round trip, which on the page cache
   * costs more than the copy itself; servers with many requests in flight keep the default.
   */
  syncIoBytes?: number;
  /**
   * Like `syncIoBytes`, but only when the file lives in memory (Linux tmpfs or ramfs, seen by statfs at open),
   * where a read or write is a copy that never waits for a device. Servers with many requests in flight set
   * it: a thread-pool round trip costs several times the copy there, while on other file systems their
   * requests stay on the thread pool, where slow ones do not hold up the others. The larger of the two
   * applies.
   */
  inMemorySyncIoBytes?: number;
  /**
   * Reads of at most this many bytes (that `syncIoBytes` leaves to the thread pool) are first tried on the
   * calling thread from the page cache alone (preadv2 RWF_NOWAIT, native addon, Linux): when the data is
   * cached that is a copy without a thread-pool round trip; what is not cached, or a file system that cannot
   * tell (tmpfs), goes to the thread pool as before, so a read waiting for the device holds up nothing.
   * Default 0: never. For servers.
   */
  cachedReadBytes?: number;
}

export type FileStoreLockMode = "read" | "write" | "shared" | "none";

/** QEMU's protocol drivers for local files (see FileStoreOpenOptions.driver). */
export type FileDriver = "file" | "host_device" | "host_cdrom";

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
 * - `resize` "off" uses ftruncate (sparse). Node has no fallocate(), so without the native addon
 *   "falloc" writes zeros into the grown tail only, exactly like "full" (the space is reserved, at
 *   the cost of the writes).
 *   Shrinking with preallocation fails (NOT_SUPPORTED), as in QEMU.
 * - `discard` and `writeZeroes(…, unmap)` on a range reaching end of file truncate and extend
 *   again (the tail becomes a hole); other ranges, and `writeZeroes` without unmap, are written
 *   with zeros in pieces of at most 1 MiB. `discard` never grows the file; `writeZeroes` grows it
 *   like a write.
 * - `flush` is fdatasync; `allocatedSize` is st_blocks * 512.
 * - Only regular files are accepted ("'file' driver requires 'x' to be a regular file"), or only devices
 *   with the `driver` option "host_device" or "host_cdrom".
 *
 * With the native addon (`nativeAvailable`, src/node/native.ts), as QEMU's file driver does:
 * - `discard` and `writeZeroes(…, unmap)` punch holes (fallocate PUNCH_HOLE|KEEP_SIZE);
 * - `writeZeroes` without unmap uses fallocate ZERO_RANGE, else punches and re-allocates the range
 *   (it stays allocated);
 * - `resize(…, "falloc")` reserves the new tail with fallocate, as posix_fallocate does;
 * - `allocationStatus` maps data and holes with lseek SEEK_DATA/SEEK_HOLE;
 * - `copyFrom` another FileStore and `zeroSectors` run on two threads of their own, the bytes never
 *   reaching JavaScript;
 * - the `lock` open option takes QEMU-compatible OFD locks.
 * Where the file system refuses an operation (EOPNOTSUPP and the like), the JavaScript behaviour
 * above is used instead and the refusal is remembered for this store.
 */
export class FileStore implements ByteStore {
  readonly readOnly: boolean;
  readonly name: string;
  private readonly handle: FileHandleLike;
  private closed = false;
  /** The native addon, when it is loaded, wanted, and the handle has a file descriptor. */
  private readonly native: NativeFs | undefined;
  /** fallocate modes this file system refused; not tried again on this store. */
  private readonly refusedModes = new Set<FallocateMode>();
  private heldLock: ImageLock | undefined;

  private constructor(handle: FileHandleLike, name: string, readOnly: boolean, useNative = true) {
    this.handle = handle;
    this.name = name;
    this.readOnly = readOnly;
    this.native = useNative && typeof handle.fd === "number" ? nativeFs() : undefined;
  }

  /** The OS file descriptor, while open (undefined for substituted handles without one). */
  get fd(): number | undefined {
    return this.closed ? undefined : this.handle.fd;
  }

  /** True when the native addon serves this store (holes, fallocate, locks). */
  get usesNative(): boolean {
    return this.native !== undefined;
  }

  /**
   * True while `writeZeroes` without unmap goes through fallocate (zero-range, or punch + allocate)
   * instead of writing zero bytes; false without the addon or once the file system refused both.
   */
  get efficientZeroes(): boolean {
    if (!this.native || !this.native.features.fallocate || this.handle.fd === undefined) return false;
    const punchAndAllocate = !this.refusedModes.has("punch-hole") && !this.refusedModes.has("allocate");
    return !this.refusedModes.has("zero-range") || punchAndAllocate;
  }

  /** The image lock taken by the `lock` open option, if any (`active` false without the addon). */
  get imageLock(): ImageLock | undefined {
    return this.heldLock;
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
    const lock = options.lock ?? "none";
    assertLockMode(lock, readOnly);
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
      const driver = options.driver ?? "file";
      if (driver === "file" && !stats.isFile()) {
        throw new Qcow2Error("INVALID_ARGUMENT", `'file' driver requires '${printableName(name)}' to be a regular file`);
      }
      if (driver !== "file" && !stats.isCharacterDevice() && !stats.isBlockDevice()) {
        throw new Qcow2Error("INVALID_ARGUMENT", `'${driver}' driver requires '${printableName(name)}' to be either a character or block device`);
      }
    } catch (error) {
      await handle.close().catch(() => undefined);
      throw fromSystemError(error, prefix);
    }
    const unavailable = lock === "write" ? lockingUnavailableReason(options.native ?? true) : undefined;
    if (unavailable !== undefined) {
      await handle.close().catch(() => undefined);
      throw lockingUnavailableError(name, unavailable);
    }
    const store = new FileStore(handle, name, readOnly, options.native ?? true);
    store.syncIoBytes = options.syncIoBytes ?? 0;
    store.inMemory = await isInMemoryFile(path);
    const inMemory = options.inMemorySyncIoBytes ?? 0;
    if (inMemory > store.syncIoBytes && store.inMemory) store.syncIoBytes = inMemory;
    if (store.native?.features.cachedRead) store.cachedReadBytes = options.cachedReadBytes ?? 0;
    if (lock !== "none") {
      try {
        // Without the addon (a reader only, see above) this is an inactive lock the caller can warn about.
        const sets = imagePermissions({ write: lock === "write", shareWrite: lock === "shared" });
        store.heldLock = store.native
          ? lockImage(handle.fd, { write: lock === "write", shareWrite: lock === "shared", name })
          : inactiveLock(sets.permissions, sets.sharedPermissions);
      } catch (error) {
        await handle.close().catch(() => undefined);
        throw error;
      }
    }
    return store;
  }

  /** Wrap an already open handle (positioned I/O only; the cursor is never used). */
  static fromHandle(handle: FileHandleLike, options: { name: string; readOnly?: boolean; native?: boolean }): FileStore {
    return new FileStore(handle, options.name, options.readOnly ?? false, options.native ?? true);
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
        bytesRead = await this.readAt(into, done, length, checkedPosition(this.name, position));
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
      // In memory, fdatasync waits for no device: on this thread it is ~2 µs, a thread-pool round trip ~30.
      const fd = this.handle.fd;
      if (this.inMemory && typeof fd === "number") fdatasyncSync(fd);
      else await this.handle.datasync();
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
      if (oldSize === 0 && size > 0 && preallocation === "off") {
        // As QEMU's file driver does when a file grows from empty: the first block is written (zeros), so it
        // is allocated (visible in qemu-img map of a new raw image).
        await this.writeAll(0, new Uint8Array(size < 4096 ? 512 : 4096).subarray(0, Math.min(size, 4096)));
      }
      return;
    }
    if (preallocation === "falloc" && (await this.tryReserve(oldSize, size))) return;
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
    if (await this.tryFallocate("punch-hole", offset, end - offset, "discard")) return;
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
    if (this.native && !unmap && (await this.tryNativeZeroRange(offset, end))) return;
    const size = await this.size();
    if (await this.tryNativeZeroes(offset, end, size, unmap)) return;
    if (unmap && end >= size) {
      if (offset < size) await this.truncate(offset);
      await this.truncate(end);
    } else {
      await this.writeZeroBytes(offset, end);
    }
  }

  /**
   * Copy `length` bytes of `source` at `sourceOffset` to `offset` of this file, growing it like a write; bytes
   * past the source's end are written as zeros. When the source is an open FileStore too and the native addon
   * serves this store, the addon copies file to file on two threads (pread + pwrite, 2 MiB pieces) and no byte
   * passes through JavaScript; otherwise the bytes go through one 2 MiB buffer (`source.read`, then `write`).
   * Overlapping ranges of this store (with the addon: of one file) are copied as memmove does. Errors name the
   * side that failed, as reads and writes do: "Could not read 'src' at byte N: …" or "Could not write 'dst' at
   * byte N: …" (other bytes of the range may have been copied). With `scan`, each piece is also checked for
   * zero sectors between its read and its write (see ByteStore.copyFrom).
   */
  async copyFrom(source: ByteStore, sourceOffset: number, offset: number, length: number, scan?: Uint8Array): Promise<void> {
    this.assertWritable();
    assertByteRange(source.name, sourceOffset, length);
    assertByteRange(this.name, offset, length);
    assertScanFlags(this.name, scan, length);
    if (length === 0) return;
    const sourceFd = source instanceof FileStore ? source.openFd() : undefined;
    const fd = this.handle.fd;
    if (!this.native || sourceFd === undefined || typeof fd !== "number") {
      await copyThroughBuffer(source, sourceOffset, this, offset, length, scan);
      return;
    }
    const from = checkedPosition(source.name, sourceOffset);
    const to = checkedPosition(this.name, offset);
    try {
      await this.native.copyRange(sourceFd, from, fd, to, length, scan);
    } catch (error) {
      const position = (error as { position?: unknown } | null)?.position;
      if ((error as { syscall?: unknown } | null)?.syscall === "pwrite") {
        const at = typeof position === "number" ? position : to;
        throw fromNativeError(error, `Could not write '${printableName(this.name)}' at byte ${at}`);
      }
      const at = typeof position === "number" ? position : from;
      throw fromNativeError(error, `Could not read '${printableName(source.name)}' at byte ${at}`);
    }
  }

  /**
   * One byte per 512-byte sector of `[offset, offset + length)` (the last may be partial): 1 when it reads as
   * all zeros, else 0; bytes past end of file are zeros. With the native addon the file is read and scanned
   * on two threads (256 KiB pieces) and no byte passes through JavaScript; otherwise it is read in 2 MiB
   * pieces and scanned here. Errors read "Could not read 'x' at byte N: …".
   */
  async zeroSectors(offset: number, length: number): Promise<Uint8Array> {
    this.assertOpen();
    assertByteRange(this.name, offset, length);
    const fd = this.handle.fd;
    if (length === 0 || !this.native || typeof fd !== "number") return zeroSectorsByReading(this, offset, length);
    const flags = zeroSectorFlags(length);
    const from = checkedPosition(this.name, offset);
    try {
      await this.native.scanZeroSectors(fd, from, length, flags);
    } catch (error) {
      const position = (error as { position?: unknown } | null)?.position;
      throw fromNativeError(error, `Could not read '${printableName(this.name)}' at byte ${typeof position === "number" ? position : from}`);
    }
    return flags;
  }

  /** The descriptor while this store is open, for another FileStore's native copy (undefined without one). */
  private openFd(): number | undefined {
    const fd = this.closed ? undefined : this.handle.fd;
    return typeof fd === "number" ? fd : undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Release the lock bytes while the descriptor is still ours (closing would drop them too).
    this.heldLock?.unlock();
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

  /**
   * The allocation map of `[offset, offset + length)`: contiguous extents from `offset`, each data
   * (storage allocated) or a hole (reads as zeros), from lseek SEEK_DATA/SEEK_HOLE. Bytes past end of
   * file are a hole. At most `maxExtentsPerCall` (4096) extents are returned, so the answer may cover
   * only a prefix of the range. Without the native addon the whole file part is reported as data.
   */
  async allocationStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    this.assertOpen();
    assertByteRange(this.name, offset, length);
    if (length === 0) return [];
    const size = await this.size();
    const fd = this.handle.fd;
    if (this.native && this.native.features.seekHole && fd !== undefined) {
      return allocationExtents(this.native, fd, this.name, offset, length, size);
    }
    const end = offset + length;
    const dataEnd = Math.min(Math.max(offset, size), end);
    const extents: AllocationExtent[] = [];
    if (dataEnd > offset) extents.push({ offset, length: dataEnd - offset, data: true });
    if (end > dataEnd) extents.push({ offset: dataEnd, length: end - dataEnd, data: false });
    return extents;
  }

  /**
   * fallocate `mode` over `[offset, offset + length)` through the addon. Resolves false when there is
   * no addon or the file system refuses the mode (remembered: the caller falls back to JavaScript);
   * other failures reject.
   */
  private async tryFallocate(
    mode: FallocateMode,
    offset: number,
    length: number,
    what: string,
    prefix = `Could not ${what} '${printableName(this.name)}' at byte ${offset}`,
  ): Promise<boolean> {
    const fd = this.handle.fd;
    if (!this.native || !this.native.features.fallocate || fd === undefined || this.refusedModes.has(mode)) return false;
    try {
      await fallocateRange(this.native, fd, this.name, mode, offset, length, prefix);
      return true;
    } catch (error) {
      if (isUnsupportedError(error)) {
        this.refusedModes.add(mode);
        return false;
      }
      // Some file systems refuse unaligned ranges with EINVAL; QEMU then falls back too.
      if ((error as { errno?: unknown }).errno === "EINVAL") return false;
      throw error;
    }
  }

  /** writeZeroes through fallocate; false when the JavaScript path must do it. */
  /**
   * Zeroing without unmap and without asking for the file size (one fstat less per call, which matters
   * for small copy-on-write zeroing): zero-range, else punch + allocate, both of which handle ranges past
   * the end of the file. False when neither is available.
   */
  private async tryNativeZeroRange(offset: number, end: number): Promise<boolean> {
    if (await this.tryFallocate("zero-range", offset, end - offset, "write zeroes to")) return true;
    if (this.refusedModes.has("punch-hole") || this.refusedModes.has("allocate")) return false;
    if (!(await this.tryFallocate("punch-hole", offset, end - offset, "write zeroes to"))) return false;
    if (await this.tryFallocate("allocate", offset, end - offset, "write zeroes to")) return true;
    // The range reads as zeros (a hole) and only has to reach `end`.
    if (end > (await this.size())) await this.truncate(end);
    return true;
  }

  private async tryNativeZeroes(offset: number, end: number, size: number, unmap: boolean): Promise<boolean> {
    if (!this.native) return false;
    const inFileEnd = Math.min(end, size);
    if (unmap) {
      if (inFileEnd > offset && !(await this.tryFallocate("punch-hole", offset, inFileEnd - offset, "discard"))) {
        return false;
      }
      if (end > size) await this.truncate(end);
      return true;
    }
    // Zero range grows the file when the range ends past end of file, like a write.
    if (await this.tryFallocate("zero-range", offset, end - offset, "write zeroes to")) return true;
    // QEMU's next choice: punch a hole, then allocate the range again so it stays allocated.
    if (this.refusedModes.has("punch-hole") || this.refusedModes.has("allocate")) return false;
    if (inFileEnd > offset && !(await this.tryFallocate("punch-hole", offset, inFileEnd - offset, "write zeroes to"))) {
      return false;
    }
    if (!(await this.tryFallocate("allocate", offset, end - offset, "write zeroes to"))) {
      // The range already reads as zeros (a hole); it only has to reach `end`.
      if (end > size) await this.truncate(end);
    }
    return true;
  }

  /**
   * Grow from `oldSize` to `size` with reserved blocks (fallocate mode 0), like QEMU's
   * posix_fallocate for "falloc". False when the file system cannot (the caller writes zeros).
   */
  private async tryReserve(oldSize: number, size: number): Promise<boolean> {
    try {
      // QEMU's wording: "Could not preallocate new data: No space left on device".
      return await this.tryFallocate("allocate", oldSize, size - oldSize, "preallocate", "Could not preallocate new data");
    } catch (error) {
      await this.handle.truncate(oldSize).catch(() => undefined);
      throw error;
    }
  }

  /**
   * One positional read. Node's callback API on the descriptor is about twice as fast as FileHandle.read for
   * small requests (one less promise layer inside Node), so it is used whenever the handle has a descriptor.
   */
  private syncIoBytes = 0;
  /** The file is on a memory file system (tmpfs, ramfs), seen by statfs at open. */
  private inMemory = false;
  /** Reads up to this size try the page cache on this thread first (0 once the file system cannot tell). */
  private cachedReadBytes = 0;

  private readAt(into: Uint8Array, at: number, length: number, position: number): Promise<number> {
    const fd = this.handle.fd;
    if (typeof fd !== "number") return this.handle.read(into, at, length, position).then((r) => r.bytesRead);
    if (length <= this.syncIoBytes) {
      try {
        return Promise.resolve(readSync(fd, into, at, length, position));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    if (length <= this.cachedReadBytes && this.native) {
      let n = -1;
      try {
        n = this.native.readCached(fd, into, at, length, position);
      } catch {
        // Left to the thread-pool read below, which reports it in the usual wording.
      }
      if (n >= 0) return Promise.resolve(n);
      if (n === -2) this.cachedReadBytes = 0;
    }
    return new Promise((resolve, reject) =>
      fdRead(fd, into, at, length, position, (error, n) => (error ? reject(error) : resolve(n))),
    );
  }

  private writeAt(data: Uint8Array, at: number, length: number, position: number): Promise<number> {
    const fd = this.handle.fd;
    if (typeof fd !== "number") return this.handle.write(data, at, length, position).then((r) => r.bytesWritten);
    if (length <= this.syncIoBytes) {
      try {
        return Promise.resolve(writeSync(fd, data, at, length, position));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return new Promise((resolve, reject) =>
      fdWrite(fd, data, at, length, position, (error, n) => (error ? reject(error) : resolve(n))),
    );
  }

  private async writeAll(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.byteLength) {
      const position = offset + done;
      const length = Math.min(data.byteLength - done, maxBytesPerCall);
      let bytesWritten: number;
      try {
        bytesWritten = await this.writeAt(data, done, length, checkedPosition(this.name, position));
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

/** statfs f_type of the Linux file systems whose files are memory: tmpfs (also /dev/shm) and ramfs. */
const memoryFileSystems = new Set([0x01021994, 0x858458f6]);

/** True when `path` is on a memory file system (Linux only; false when statfs fails). */
async function isInMemoryFile(path: string): Promise<boolean> {
  if (process.platform !== "linux") return false;
  try {
    return memoryFileSystems.has((await statfs(path)).type);
  } catch {
    return false;
  }
}

function assertLockMode(lock: unknown, readOnly: boolean): void {
  if (lock !== "read" && lock !== "write" && lock !== "shared" && lock !== "none") {
    throw new Qcow2Error("INVALID_ARGUMENT", `invalid lock mode ${JSON.stringify(String(lock))}`);
  }
  if (lock === "write" && readOnly) {
    throw new Qcow2Error("INVALID_ARGUMENT", "a write lock needs a writable file (readOnly is set)");
  }
  if (lock === "shared" && !readOnly) {
    // QEMU's wording for force-share on a writable image.
    throw new Qcow2Error("INVALID_ARGUMENT", "force-share=on can only be used with read-only images");
  }
}

/** The last line of defence before `fs`: a position Node 20 would not silently replace by the cursor. */
function checkedPosition(name: string, position: number): number {
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new Qcow2Error("INTERNAL", `${name}: invalid byte offset ${String(position)}`);
  }
  return position;
}
