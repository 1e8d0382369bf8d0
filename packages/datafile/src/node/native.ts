import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Qcow2Error, errnoText } from "@qcowkit/spec";
import { printableName } from "../printable-name";
import { fromSystemError, systemErrorText } from "./system-error";

/**
 * Loader of the native addon (source native/qcowkit_fs.c): a local build `native/build/qcowkit_fs.node`
 * (made by native/build.mjs during `pnpm build`, or at install time where no prebuilt addon loads), else
 * the prebuilt one shipped in the package, `prebuilds/<platform>-<arch>/node.napi.glibc.node` (prebuildify's
 * layout, made by native/prebuild.mjs for linux-x64 and linux-arm64). It gives FileStore what
 * Node's fs lacks: lseek SEEK_DATA/SEEK_HOLE, fallocate (allocate, punch hole, zero range),
 * open file description locks for QEMU-compatible image locking, reads from the page cache
 * only (preadv2 RWF_NOWAIT), and file-to-file copies and zero scans on their own threads.
 *
 * When the addon is missing (no C compiler at install time, Windows), fails to load, is a stale
 * build, or `QCOWKIT_NATIVE=0` is set, `nativeAvailable` is false, `nativeUnavailableReason` says
 * why, and FileStore keeps its pure JavaScript behaviour (no holes punched, falloc writes zeros),
 * except that it refuses to open a file read-write with a "write" lock it cannot take.
 */

/** The functions the addon exports (see native/qcowkit_fs.c for their exact contracts). */
export interface NativeFs {
  /** lseek(fd, offset, SEEK_DATA): the next data offset at or after `offset`, or -1 (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE): the next hole at or after `offset` (end of file counts), or -1 (ENXIO). */
  seekHole(fd: number, offset: number): number;
  /** fallocate(2) on the thread pool. Length must be at least 1. */
  fallocate(fd: number, mode: FallocateMode, offset: number, length: number): Promise<void>;
  /** fallocate(2) on the calling thread (small ranges: cheaper than a thread-pool round trip). */
  fallocateSync(fd: number, mode: FallocateMode, offset: number, length: number): void;
  /** fcntl(F_OFD_SETLK): true when set, false when a conflicting lock is held through another open file. */
  setLock(fd: number, type: "read" | "write" | "unlock", start: number, length: number): boolean;
  /** fcntl(F_OFD_GETLK): null when the lock could be taken, else the first conflicting lock. */
  getLock(fd: number, type: "read" | "write", start: number, length: number): NativeLockInfo | null;
  /** fstatfs(): the file system's block size (f_bsize) and fragment size (f_frsize). */
  fsBlockSize(fd: number): { blockSize: number; fragmentSize: number };
  /**
   * preadv2(RWF_NOWAIT) of `length` (>= 1) bytes at `position` into `buffer[at…]`, on the calling thread:
   * the bytes read from the page cache (0 at end of file, fewer than asked when only a first part is
   * cached), -1 when that would wait for the device, -2 when the file system or kernel cannot tell (tmpfs).
   */
  readCached(fd: number, buffer: Uint8Array, at: number, length: number, position: number): number;
  /**
   * Copy `length` bytes of the file `srcFd` at `srcPosition` to the file `dstFd` at `dstPosition`, growing it like
   * a write; bytes past the source's end are written as zeros. Two threads (the thread pool's and one more) each
   * pread a 2 MiB piece and pwrite it while it is in their core's cache. Overlapping ranges of one file are
   * copied as memmove does. Length 0 resolves at once. Rejects with the first failed call as a system error
   * whose `syscall` is "pread" (`position` a byte of the source) or "pwrite" (a byte of the destination).
   * With `flags` (ceil(length / 512) bytes), each piece is also scanned between its read and its write, as
   * `scanZeroSectors` does.
   */
  copyRange(srcFd: number, srcPosition: number, dstFd: number, dstPosition: number, length: number, flags?: Uint8Array): Promise<void>;
  /**
   * Fill `flags` (exactly ceil(length / 512) bytes, else a RangeError) with 1 for each 512-byte sector of
   * `[position, position + length)` that reads as all zeros (past end of file counts as zeros), else 0; the
   * last sector may be partial. Reads on two threads in 256 KiB pieces. Rejects like `copyRange` ("pread").
   */
  scanZeroSectors(fd: number, position: number, length: number, flags: Uint8Array): Promise<void>;
  /** What this build of the addon supports on this platform. */
  readonly features: NativeFeatures;
  readonly abiVersion: number;
}

/**
 * fallocate(2) modes: "allocate" (0: reserve, growing the file), "keep-size" (reserve, size
 * unchanged), "punch-hole" (deallocate, always with keep-size), "zero-range" (read as zeros,
 * blocks stay allocated, may grow the file), "zero-range-keep-size".
 */
export type FallocateMode = "allocate" | "keep-size" | "punch-hole" | "zero-range" | "zero-range-keep-size";

export interface NativeFeatures {
  readonly seekHole: boolean;
  readonly fallocate: boolean;
  readonly ofdLocks: boolean;
  readonly statfs: boolean;
  /** readCached can answer (Linux with preadv2 and RWF_NOWAIT); else it always returns -2. */
  readonly cachedRead: boolean;
}

/** A lock reported by F_OFD_GETLK. `length` 0 means "to end of file"; `pid` is -1 for OFD locks. */
export interface NativeLockInfo {
  type: "read" | "write";
  start: number;
  length: number;
  pid: number;
}

/** The ABI version native/qcowkit_fs.c declares; a build reporting another one is stale. */
const expectedAbiVersion = 4;
const addonFile = "native/build/qcowkit_fs.node";

/** True when the native addon is loaded and in use. */
export let nativeAvailable = false;
/** Why the addon is not in use, when it is not. */
export let nativeUnavailableReason: string | undefined;
let loaded: NativeFs | undefined;
let loadedFrom: NativeFs | undefined;

/** The loaded addon, or undefined when FileStore must use its JavaScript fallbacks. */
export function nativeFs(): NativeFs | undefined {
  return loaded;
}

/**
 * Turn the addon off (`false`) or back on (`true`, when it loaded) for this process. For tests and
 * for comparing behaviour; stores opened afterwards see the change.
 */
export function setNativeEnabled(enabled: boolean): void {
  if (!enabled) {
    loaded = undefined;
    nativeAvailable = false;
    nativeUnavailableReason = "disabled by setNativeEnabled(false)";
    return;
  }
  if (loadedFrom) {
    loaded = loadedFrom;
    nativeAvailable = true;
    nativeUnavailableReason = undefined;
  }
}

/** The prebuilt addon for this platform, in prebuildify's layout (made by native/prebuild.mjs). */
const prebuiltFile = `prebuilds/${process.platform}-${process.arch}/node.napi.glibc.node`;

/** Package-relative addon files to try, in order: a local build (made here, so the best fit), then the prebuilt one. */
const addonFiles = [addonFile, prebuiltFile];

function candidatePaths(file: string): string[] {
  // Source layout: src/node/native.ts; bundled layout: dist/node.js. Both sit below the package root.
  const paths = [new URL(`../../${file}`, import.meta.url), new URL(`../${file}`, import.meta.url)];
  const found = paths.filter((url) => url.protocol === "file:").map((url) => fileURLToPath(url));
  // Bundled into an app (the qimg, qio and qnbd bins are single files): the addon stays in this package,
  // found through the app's dependency on it: the first node_modules folder on require's search path that
  // holds the package. (Not require.resolve: resolving the package's main file takes the real path of every
  // folder on the way, about 2 ms of every command's start-up.)
  try {
    const folders = createRequire(import.meta.url).resolve.paths("@qcowkit/datafile") ?? [];
    const root = folders.map((folder) => join(folder, "@qcowkit", "datafile")).find((dir) => existsSync(join(dir, "package.json")));
    if (root !== undefined) found.push(join(root, file));
  } catch {
    // Not resolvable from here: this module is the package itself.
  }
  return found;
}

/** Loads one addon file: the addon, or why it cannot be used. */
function loadFile(file: string, path: string): NativeFs | string {
  let addon: NativeFs;
  try {
    addon = createRequire(import.meta.url)(path) as NativeFs;
  } catch (error) {
    return `${file} failed to load: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}`;
  }
  if (addon.abiVersion !== expectedAbiVersion) {
    return `${file} is a stale build (ABI ${String(addon.abiVersion)}, expected ${expectedAbiVersion}); run pnpm build`;
  }
  return addon;
}

function load(): void {
  const setting = process.env.QCOWKIT_NATIVE;
  if (setting === "0" || setting === "off") {
    nativeUnavailableReason = "disabled by QCOWKIT_NATIVE=0";
    return;
  }
  const problems: string[] = [];
  for (const file of addonFiles) {
    const path = candidatePaths(file).find((candidate) => existsSync(candidate));
    if (!path) continue;
    const addon = loadFile(file, path);
    if (typeof addon === "string") {
      problems.push(addon);
      continue;
    }
    loaded = addon;
    loadedFrom = addon;
    nativeAvailable = true;
    return;
  }
  nativeUnavailableReason =
    problems.length > 0
      ? problems.join("; ")
      : `no addon for ${process.platform}-${process.arch}: ${prebuiltFile} is not shipped and ${addonFile} was not built (no C compiler or Node headers at install time)`;
}

load();

/**
 * errno names meaning "this file system cannot do that" (QEMU's file driver turns each into
 * ENOTSUP and falls back): FileStore then uses its JavaScript path.
 */
const unsupportedCodes = new Set(["EOPNOTSUPP", "ENOTSUP", "ENOSYS", "ENODEV", "ENOTTY"]);

/** True for an addon error meaning the operation is not supported here. */
export function isUnsupportedError(error: unknown): boolean {
  if (error instanceof Qcow2Error) return error.code === "NOT_SUPPORTED";
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && unsupportedCodes.has(code);
}

/**
 * A one-line Qcow2Error for an error the addon threw: `prefix`, ": ", then strerror() text in
 * glibc's wording ("Could not discard 'x' at byte 0: Operation not supported"). Unsupported
 * operations become NOT_SUPPORTED / ENOTSUP as QEMU reports them; argument errors (a bug in the
 * caller) become INTERNAL.
 */
export function fromNativeError(error: unknown, prefix: string): Qcow2Error {
  if (error instanceof Qcow2Error) return error;
  if (error instanceof TypeError || error instanceof RangeError) {
    return new Qcow2Error("INTERNAL", `${prefix}: ${error.message}`, { cause: error });
  }
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && unsupportedCodes.has(code)) {
    return new Qcow2Error("NOT_SUPPORTED", `${prefix}: ${errnoText.ENOTSUP}`, { errno: "ENOTSUP", cause: error });
  }
  if (typeof code === "string" && systemErrorText(code) !== undefined) {
    const mapped = fromSystemError(error, prefix);
    if (mapped instanceof Qcow2Error) return mapped;
  }
  const text = error instanceof Error ? error.message : String(error);
  return new Qcow2Error("IO_ERROR", `${prefix}: ${printableName(text)}`, { cause: error });
}
