/**
 * A raw image file served as a BlockImage, on Node's positional file I/O. Temporary: the engine's
 * `openImage` (@qcowkit/core/node) replaces it. Node offers no hole punching or SEEK_DATA, so discard is a
 * no-op, zeroing writes zero bytes (and refuses NBD FAST_ZERO), and block status reports all data.
 */
import * as fs from "node:fs";
import { Qcow2Error, type Errno } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent } from "./device";
import { assertInRange, assertWritable } from "./device-checks";

/** Node 20 silently uses the file cursor for bigint or unsafe positions: refuse them before every call. */
function assertPosition(position: number): void {
  if (!Number.isSafeInteger(position) || position < 0) {
    throw new Qcow2Error("INTERNAL", `unsafe file position ${position}`);
  }
}

const strerror: Readonly<Record<string, string>> = {
  ENOENT: "No such file or directory",
  EACCES: "Permission denied",
  EPERM: "Operation not permitted",
  EISDIR: "Is a directory",
  EROFS: "Read-only file system",
  ENOSPC: "No space left on device",
  EIO: "Input/output error",
  EFBIG: "File too large",
  ELOOP: "Too many levels of symbolic links",
  ENOTDIR: "Not a directory",
  EMFILE: "Too many open files",
};

/** The text after "Could not open 'x': " for a Node system error. */
export function systemErrorText(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && strerror[code]) return strerror[code];
  return error instanceof Error ? error.message : String(error);
}

/** A Node fs error during I/O as a Qcow2Error. */
function ioError(error: unknown, what: string): Qcow2Error {
  const code = (error as { code?: unknown }).code;
  const text = `${what}: ${systemErrorText(error)}`;
  if (code === "ENOSPC" || code === "EDQUOT") return new Qcow2Error("NO_SPACE", text, { cause: error });
  if (code === "EFBIG") return new Qcow2Error("NO_SPACE", text, { errno: "EFBIG", cause: error });
  const errno: Errno = code === "EROFS" ? "EROFS" : code === "EPERM" || code === "EACCES" ? "EPERM" : "EIO";
  return new Qcow2Error("IO_ERROR", text, { errno, cause: error });
}

function pread(fd: number, into: Uint8Array, at: number, length: number, position: number): Promise<number> {
  assertPosition(position);
  return new Promise((resolve, reject) => {
    fs.read(fd, into, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function pwrite(fd: number, data: Uint8Array, at: number, length: number, position: number): Promise<number> {
  assertPosition(position);
  return new Promise((resolve, reject) => {
    fs.write(fd, data, at, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function promisify0(call: (cb: (err: NodeJS.ErrnoException | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => call((err) => (err ? reject(err) : resolve())));
}

/** Bytes written per call when zeroing. */
const ZERO_CHUNK = 1024 * 1024;
let zeroChunk: Uint8Array | undefined;

export class RawFileDevice implements BlockImage {
  readonly format = "raw" as const;
  readonly clusterSize = 512;
  private closed = false;

  private constructor(
    private readonly fd: number,
    readonly path: string,
    public virtualSize: number,
    readonly readOnly: boolean,
  ) {}

  /** Opens `path`; errors are Qcow2Errors worded like QEMU's "Could not open 'x': ...". */
  static async open(path: string, opts: { readOnly?: boolean } = {}): Promise<RawFileDevice> {
    const readOnly = opts.readOnly ?? false;
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(path, readOnly ? "r" : "r+", (err, f) => (err ? reject(err) : resolve(f))),
      );
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      throw new Qcow2Error(code === "ENOENT" ? "NOT_FOUND" : "IO_ERROR", `Could not open '${path}': ${systemErrorText(error)}`, {
        errno: code === "ENOENT" ? "ENOENT" : code === "EACCES" || code === "EPERM" ? "EPERM" : code === "EROFS" ? "EROFS" : "EIO",
        cause: error,
      });
    }
    try {
      const stat = await new Promise<fs.Stats>((resolve, reject) => fs.fstat(fd, (err, s) => (err ? reject(err) : resolve(s))));
      if (stat.isDirectory()) throw new Qcow2Error("INVALID_ARGUMENT", `Could not open '${path}': Is a directory`);
      return new RawFileDevice(fd, path, stat.size, readOnly);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    assertInRange(guestOffset, into.byteLength, this.virtualSize);
    let done = 0;
    try {
      while (done < into.byteLength) {
        const n = await pread(this.fd, into, done, into.byteLength - done, guestOffset + done);
        if (n === 0) {
          // The file shrank under us: what is gone reads as zeros.
          into.fill(0, done);
          return;
        }
        done += n;
      }
    } catch (error) {
      throw error instanceof Qcow2Error ? error : ioError(error, "read failed");
    }
  }

  async write(guestOffset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    this.assertOpen();
    assertWritable(this.readOnly);
    assertInRange(guestOffset, data.byteLength, this.virtualSize);
    await this.writeAll(guestOffset, data);
    if (opts.fua) await this.flush();
  }

  async writeZeroes(
    guestOffset: number,
    byteLength: number,
    opts: { unmap?: boolean; noFallback?: boolean; fua?: boolean } = {},
  ): Promise<void> {
    this.assertOpen();
    assertWritable(this.readOnly);
    assertInRange(guestOffset, byteLength, this.virtualSize);
    if (opts.noFallback) throw new Qcow2Error("NOT_SUPPORTED", "fast zeroing is not supported on this file");
    zeroChunk ??= new Uint8Array(ZERO_CHUNK);
    for (let done = 0; done < byteLength; done += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, byteLength - done);
      await this.writeAll(guestOffset + done, zeroChunk.subarray(0, n));
    }
    if (opts.fua) await this.flush();
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.assertOpen();
    assertWritable(this.readOnly);
    assertInRange(guestOffset, byteLength, this.virtualSize);
    // A hint only; Node cannot punch holes.
  }

  async flush(): Promise<void> {
    this.assertOpen();
    if (this.readOnly) return;
    try {
      await promisify0((cb) => fs.fdatasync(this.fd, cb));
    } catch (error) {
      throw ioError(error, "flush failed");
    }
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    this.assertOpen();
    assertInRange(guestOffset, byteLength, this.virtualSize);
    if (byteLength === 0) return [];
    return [
      { offset: guestOffset, length: byteLength, present: true, zero: false, data: true, depth: 0, hostOffset: guestOffset, hostFile: this.path },
    ];
  }

  async resize(newVirtualSize: number, opts: { shrink?: boolean } = {}): Promise<void> {
    this.assertOpen();
    assertWritable(this.readOnly);
    assertPosition(newVirtualSize);
    if (newVirtualSize < this.virtualSize && !opts.shrink) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Use the --shrink option to perform a shrink operation.");
    }
    try {
      await promisify0((cb) => fs.ftruncate(this.fd, newVirtualSize, cb));
    } catch (error) {
      throw ioError(error, "resize failed");
    }
    this.virtualSize = newVirtualSize;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await promisify0((cb) => fs.close(this.fd, cb));
  }

  private async writeAll(position: number, data: Uint8Array): Promise<void> {
    let done = 0;
    try {
      while (done < data.byteLength) {
        done += await pwrite(this.fd, data, done, data.byteLength - done, position + done);
      }
    } catch (error) {
      throw error instanceof Qcow2Error ? error : ioError(error, "write failed");
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "image is closed");
  }
}
