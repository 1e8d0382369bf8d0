/**
 * @qcowkit/core/node: open and create images on the local file system. Everything of "@qcowkit/core" is
 * re-exported, plus `openImage`, `createImage` and the file-system resolver.
 */
import { realpath } from "node:fs/promises";
import { FileStore, checkSafeReference, resolveBackingFileName, resolveDataFileName } from "@qcowkit/datafile/node";
import { Qcow2Error, isQcow2Error, type ByteStore } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { trackBitmaps, withBitmapMethods } from "./bitmaps";
import { createQcow2, validateCreateOptions, type Qcow2CreateOptions } from "./create";
import { assertRealPathInside, imageLockMode } from "./node/open-policy";
import { Qcow2Image, type Qcow2OpenOptions } from "./qcow2-image";
import type { EncryptionOpenOptions } from "./crypto/image-encryption";
import { dirtyImageRepair } from "./repair";
import { NbdImage } from "./nbd/nbd-image";
import { NbdStore } from "./nbd/nbd-store";
import { isNbdFilename } from "./nbd/uri";
import { connectNbd } from "./node/nbd-socket";
import { probeFormat, type ImageFormat } from "./probe";
import { RawImage } from "./raw-image";
import { MAX_CHAIN_DEPTH, type ImageResolver, type ResolveContext } from "./resolver";

export * from "./index";

export { probeFormat, type ImageFormat } from "./probe";

export interface OpenImageOptions {
  /** Probed from the file when absent (qcow2 magic, else raw). */
  format?: ImageFormat | string;
  readOnly?: boolean;
  /** Override the stored external data file name. */
  dataFile?: string;
  /** Override the backing file (null: none). */
  backing?: string | null;
  backingFormat?: string;
  /** L2 + refcount cache bytes. */
  cacheSize?: number;
  /**
   * -U / force-share: take a lock that lets others write (read-only opens only). Without it a read-write
   * open takes QEMU's write lock and a read-only open its read lock; a conflict fails the open with
   * Qcow2Error LOCKED `Failed to get "write" lock` (QEMU's hint line in `error.hint`).
   */
  shareRW?: boolean;
  /**
   * Untrusted image (see the README's "Safe mode"): the format must be given (no probing), a backing file
   * must have a backing format, and the data file and backing file names stored in the image must be
   * relative, without "..", and inside the image's folder with symbolic links followed. Names given as
   * options (`dataFile`, `backing`) are the caller's and are not restricted.
   */
  safe?: boolean;
  /** Open only metadata (qemu-img info). */
  noIo?: boolean;
  /** Open for check/repair. */
  checkMode?: boolean;
  discard?: "ignore" | "unmap";
  /**
   * File reads and writes of at most this many bytes are made synchronously (see FileStore): for tools
   * that issue one request at a time (qimg, qio). Servers keep the default 0.
   */
  syncIoBytes?: number;
  /**
   * Like `syncIoBytes`, for files in memory only (tmpfs, ramfs: see FileStore's `inMemorySyncIoBytes`).
   * Servers (qnbd) set it; elsewhere their reads and writes stay on the thread pool.
   */
  inMemorySyncIoBytes?: number;
  /**
   * Reads up to this size are first tried from the page cache on the calling thread (see FileStore's
   * `cachedReadBytes`; native addon, Linux). Servers (qnbd) set it.
   */
  cachedReadBytes?: number;
  onWarning?: (message: string) => void;
  repairDirty?: Qcow2OpenOptions["repairDirty"];
  /** Internal: images already open in this chain. */
  chain?: string[];
  /** Encrypted qcow2 images: QEMU's encrypt.* options (the key secret). Not passed on to backing files. */
  encrypt?: EncryptionOpenOptions;
  /**
   * NBD names (`nbd://`, `nbd+unix://`, `nbd:`): milliseconds a silent server is waited for before the open
   * or a request fails (default 60 000; 0: forever).
   */
  nbdTimeoutMs?: number;
}

function checkFormat(format: string): ImageFormat {
  if (format === "qcow2" || format === "raw") return format;
  throw new Qcow2Error("NOT_SUPPORTED", `Unknown driver '${format}'`, { errno: "EINVAL" });
}

/** A resolver that opens referenced files on the local file system, as QEMU 7.2 resolves their names. */
export function fileResolver(opts: OpenImageOptions = {}): ImageResolver {
  return {
    async openDataFile(name: string, ctx: ResolveContext): Promise<ByteStore> {
      // The data-file option is the caller's own choice; only names stored in the image are restricted.
      const stored = name !== opts.dataFile;
      const path = opts.safe && stored
        ? checkSafeReference(ctx.imageName, name, "data-file", { cwd: process.cwd() })
        : resolveDataFileName(name).path!;
      if (opts.safe && stored) await assertRealPathInside(ctx.imageName, path, "data-file", name);
      return FileStore.open(path, {
        readOnly: ctx.readOnly,
        name,
        syncIoBytes: opts.syncIoBytes ?? 0,
        inMemorySyncIoBytes: opts.inMemorySyncIoBytes ?? 0,
        cachedReadBytes: opts.cachedReadBytes ?? 0,
      });
    },
    async openBacking(name: string, format: string | undefined, ctx: ResolveContext): Promise<BlockImage> {
      try {
        let path: string;
        const stored = name !== opts.backing;
        if (opts.safe && format === undefined) {
          throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the backing file format in safe mode", { errno: "EPERM" });
        }
        if (opts.safe && stored) {
          path = checkSafeReference(ctx.imageName, name, "backing");
          await assertRealPathInside(ctx.imageName, path, "backing", name);
        } else if (isNbdFilename(name)) {
          // A backing file on an NBD export (QEMU follows such names too).
          return await openNbdImage(name, { ...(format !== undefined ? { format } : {}), readOnly: true, ...(opts.nbdTimeoutMs !== undefined ? { nbdTimeoutMs: opts.nbdTimeoutMs } : {}) });
        } else {
          const resolved = resolveBackingFileName(ctx.imageName, name);
          if (!resolved || resolved.path === undefined) {
            throw new Qcow2Error("NOT_SUPPORTED", `Unknown protocol '${resolved?.protocol ?? ""}'`, { errno: "ENOTSUP" });
          }
          path = resolved.path;
        }
        if (ctx.chain.length >= MAX_CHAIN_DEPTH) {
          throw new Qcow2Error("INVALID_IMAGE", "Backing chain too deep");
        }
        let real: string | undefined;
        try {
          real = await realpath(path);
        } catch {
          real = undefined;
        }
        if (real !== undefined && ctx.chain.includes(real)) {
          throw new Qcow2Error("INVALID_IMAGE", `Backing file '${name}' loops back into the chain`);
        }
        return await openImage(path, {
          ...opts,
          ...(format !== undefined ? { format } : { format: undefined }),
          readOnly: true,
          backing: undefined,
          dataFile: undefined,
          encrypt: undefined,
          chain: [...ctx.chain, ...(real !== undefined ? [real] : [])],
        } as OpenImageOptions);
      } catch (e) {
        if (isQcow2Error(e)) {
          throw new Qcow2Error(e.code, `Could not open backing file: ${e.message}`, { errno: e.errno, cause: e });
        }
        throw e;
      }
    },
  };
}

/** Open a qcow2 or raw image file. */
export async function openImage(path: string, opts: OpenImageOptions = {}): Promise<BlockImage> {
  if (isNbdFilename(path)) return openNbdImage(path, opts);
  const readOnly = opts.readOnly ?? false;
  const store = await FileStore.open(path, {
    readOnly,
    lock: imageLockMode(readOnly, opts.shareRW),
    syncIoBytes: opts.syncIoBytes ?? 0,
    inMemorySyncIoBytes: opts.inMemorySyncIoBytes ?? 0,
    cachedReadBytes: opts.cachedReadBytes ?? 0,
  });
  try {
    let format: ImageFormat;
    if (opts.format !== undefined) format = checkFormat(opts.format);
    else if (opts.safe) throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the image format in safe mode; give the format", { errno: "EPERM" });
    else format = await probeFormat(store);
    if (format === "raw") return await RawImage.open(store);
    let chain = opts.chain;
    if (chain === undefined) {
      try {
        chain = [await realpath(path)];
      } catch {
        chain = [];
      }
    }
    // Qcow2Image.open closes the store itself when it fails after taking it over.
    return withBitmapMethods(await Qcow2Image.open(store, qcow2OpenOptions(path, opts, readOnly, chain)));
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

/** How openImage opens a qcow2 image named `path` (a file or an NBD export). */
function qcow2OpenOptions(path: string, opts: OpenImageOptions, readOnly: boolean, chain: string[]): Qcow2OpenOptions {
  return {
    readOnly,
    resolver: fileResolver(opts),
    filename: path,
    chain,
    ...(opts.dataFile !== undefined ? { dataFile: opts.dataFile } : {}),
    ...(opts.backing !== undefined ? { backing: opts.backing } : {}),
    ...(opts.backingFormat !== undefined ? { backingFormat: opts.backingFormat } : {}),
    ...(opts.cacheSize !== undefined ? { cacheBytes: opts.cacheSize } : {}),
    ...(opts.noIo ? { noIo: true } : {}),
    ...(opts.checkMode ? { checkMode: true } : {}),
    ...(opts.discard ? { discard: opts.discard } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    ...(opts.encrypt ? { encrypt: opts.encrypt } : {}),
    // Writable opens keep persistent dirty bitmaps up to date (in_use while open, stored at close).
    bitmaps: trackBitmaps,
    // A dirty image (lazy refcounts, not closed cleanly) opened read-write is repaired, as QEMU does.
    repairDirty: opts.repairDirty ?? dirtyImageRepair({ onMessage: (line) => opts.onWarning?.(line) }),
  };
}

export interface CreateImageOptions extends Qcow2CreateOptions {
  format?: ImageFormat;
}

/**
 * Create an image file (and its external data file) as qemu-img create does. A raw image is a file of
 * `size` bytes (preallocation off/falloc/full).
 */
export async function createImage(path: string, opts: CreateImageOptions): Promise<void> {
  const format = opts.format ?? "qcow2";
  if (isNbdFilename(path)) return createOnNbd(path, format, opts);
  if (format === "raw") {
    const store = await FileStore.open(path, { create: true, truncate: true });
    try {
      const p = opts.preallocation ?? "off";
      await store.resize(opts.size, p === "metadata" ? "off" : p);
      await store.flush();
    } finally {
      await store.close();
    }
    return;
  }
  validateCreateOptions(opts);
  const meta = await FileStore.open(path, { create: true, truncate: true });
  let dataStore: FileStore | undefined;
  try {
    if (opts.dataFile !== undefined) {
      dataStore = await FileStore.open(resolveDataFileName(opts.dataFile).path!, { create: true, truncate: true, name: opts.dataFile });
    }
    await createQcow2(meta, opts, dataStore ? { dataStore } : {});
  } catch (e) {
    await meta.close().catch(() => undefined);
    await dataStore?.close().catch(() => undefined);
    throw e;
  }
}

/**
 * An NBD export named as QEMU names it: probed (qcow2 magic, else raw) unless the format is given, like a
 * file. A raw export is an NbdImage; a qcow2 image stored on the export opens over an NbdStore. No lock is
 * taken (the server owns the image).
 */
async function openNbdImage(name: string, opts: OpenImageOptions): Promise<BlockImage> {
  const readOnly = opts.readOnly ?? false;
  imageLockMode(readOnly, opts.shareRW);
  let format: ImageFormat | undefined;
  if (opts.format !== undefined) format = checkFormat(opts.format);
  else if (opts.safe) throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the image format in safe mode; give the format", { errno: "EPERM" });
  const { client, location } = await connectNbd(name, {
    ...(opts.nbdTimeoutMs !== undefined ? { timeoutMs: opts.nbdTimeoutMs } : {}),
  });
  const filename = location.displayName;
  try {
    if (!readOnly && client.readOnly) {
      throw new Qcow2Error("READ_ONLY", "Could not open image: Permission denied", { errno: "EACCES" });
    }
    const store = new NbdStore(client, filename, readOnly);
    format ??= await probeFormat(store);
    if (format === "raw") return await NbdImage.open(client, { filename, readOnly });
    return withBitmapMethods(await Qcow2Image.open(store, qcow2OpenOptions(filename, opts, readOnly, [])));
  } catch (e) {
    await client.close().catch(() => undefined);
    throw e;
  }
}

/**
 * qemu-img create on an NBD export (QEMU's generic create for protocols without one): the export must be
 * large enough and cannot be preallocated; a raw image gets its first sector zeroed, a qcow2 image is
 * written over the export's start.
 */
async function createOnNbd(name: string, format: ImageFormat, opts: CreateImageOptions): Promise<void> {
  if (format === "qcow2") validateCreateOptions(opts);
  const { client, location } = await connectNbd(name);
  const store = new NbdStore(client, location.displayName, false);
  try {
    if (client.readOnly) throw new Qcow2Error("READ_ONLY", "Could not open image: Permission denied", { errno: "EACCES" });
    if (format === "raw") {
      const prealloc = opts.preallocation ?? "off";
      await store.resize(opts.size, prealloc === "metadata" ? "off" : prealloc);
      if (opts.size > 0) await store.writeZeroes(0, Math.min(512, client.size), true);
      await store.flush();
    } else {
      await createQcow2(store, opts);
    }
  } finally {
    await store.close().catch(() => undefined);
  }
}

export { FileStore };
export { connectNbd, connectNbdSocket } from "./node/nbd-socket";
export type { OpenNbdOptions } from "./node/nbd-socket";
