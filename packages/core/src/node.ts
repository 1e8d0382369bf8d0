/**
 * Open and create images on the local file system. Everything of "@qcowkit/core" is
 * re-exported, plus `openImage`, `createImage` and the file-system resolver.
 *
 * @module @qcowkit/core/node
 */
import { realpath } from "node:fs/promises";
import { FileStore, NullStore, type FileDriver, checkSafeReference, imageFilePath, printableName, referenceLeavingFolder, resolveBackingFileName, resolveDataFileName, type ReferenceKind } from "@qcowkit/datafile/node";
import { Qcow2Error, isQcow2Error, type ByteStore } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { trackBitmaps } from "./bitmaps";
import { createQcow2, validateCreateOptions, type Qcow2CreateOptions } from "./create";
import { assertOpenedInside, imageLockMode, lockWarning, shownName, type ConfinedReference, type LockingMode } from "./node/open-policy";
import { Qcow2Image, type Qcow2OpenOptions } from "./qcow2-image";
import type { EncryptionOpenOptions } from "./crypto/image-encryption";
import { dirtyImageRepair } from "./repair";
import { NbdImage } from "./nbd/nbd-image";
import { NbdStore } from "./nbd/nbd-store";
import { isNbdFilename } from "./nbd/uri";
import { connectNbd } from "./node/nbd-socket";
import { isSshName, openSshImage } from "./node/ssh";
import { installNodeCodecs } from "./node/codecs";
import { nodeAesEngine, nodeDigest, nodePbkdf2 } from "./node/crypto";
import { registerAesEngine } from "./crypto/aes-engine";
import { registerPbkdf2, registerSyncDigest } from "./crypto/hash";
import { probeFormat, type ImageFormat } from "./probe";
import { RawImage } from "./raw-image";
import { LuksImage, type LuksImageCreateOptions, type LuksOpenOptions } from "./luks-image";
import { MAX_CHAIN_DEPTH, type ImageResolver, type ResolveContext } from "./resolver";
import { parseRemoteName, type RemoteName } from "./remote/remote-name";
import { createRemoteImage } from "./node/remote-create";
import { openRemoteStore, remoteReadOnlyError, type RemoteOpenOptions } from "./node/remote-open";

export * from "./index";

// Compression on libuv's thread pool (node:zlib, native zstd) for every image opened through this entry.
installNodeCodecs();
// Encrypted images: AES and hashes through node:crypto.
registerAesEngine(nodeAesEngine);
registerSyncDigest(nodeDigest);
registerPbkdf2(nodePbkdf2);

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
   * QEMU's file.locking. "on" (default): lock as described above; when locks cannot be taken (the native
   * addon of @qcowkit/datafile did not load), a read-write open fails with Qcow2Error NOT_SUPPORTED and a
   * read-only one goes ahead with a warning. "off": no lock at all (the caller answers for concurrent use).
   */
  locking?: LockingMode;
  /**
   * Untrusted image (see the README's "Safe mode"): the format must be given (no probing), a backing file
   * must have a backing format, and the data file and backing file names stored in the image must be
   * relative, without "..", and inside the image's folder with symbolic links followed. Names given as
   * options (`dataFile`, `backing`) are the caller's and are not restricted.
   */
  safe?: boolean;
  /**
   * Data file and backing file names stored in the image must lead to a regular file inside the image's
   * folder (each image of a chain its own folder); NBD backing names are refused. Unlike safe mode, names may
   * be absolute or contain "..", as long as the file actually opened lies inside: its real path is taken from
   * the open descriptor (/proc/self/fd), so a symbolic link swapped in after a check cannot lead elsewhere.
   * Safe mode implies it. qnbd turns it on by default. Refusals are Qcow2Error NOT_SUPPORTED, errno EPERM.
   */
  confineReferences?: boolean;
  /** Open only metadata (qemu-img info). */
  noIo?: boolean;
  /** Open for check/repair. */
  checkMode?: boolean;
  discard?: "ignore" | "unmap";
  /** Put a layer over the external data file once opened (QEMU's filter drivers over the data-file child: blkdebug). */
  wrapDataFile?: (store: ByteStore) => ByteStore;
  /**
   * Put a layer over the image file once opened, before its format is probed (QEMU's filter drivers over the
   * image's file child: blkdebug). Not applied to backing files.
   */
  wrapFile?: (store: ByteStore) => ByteStore;
  /**
   * Backing file names the caller opens itself (`json:{...}` block node descriptions, which only the caller
   * understands): the opened image (read-only), or undefined for a name the resolver should open as usual.
   */
  openBackingName?: (name: string, format: string | undefined) => Promise<BlockImage> | undefined;
  /** The external data file as an open store (a null-co node, say) in place of a file name. */
  dataFileStore?: ByteStore;
  /**
   * The image's file as an open store, in place of opening `name` (QEMU's `file` child given as a node: a
   * qcow2 image on the guest disk of another image, through ImageStore). `name` only names the image then;
   * no lock is taken (the store's owner holds it). The store is closed with the image.
   */
  file?: ByteStore;
  /** The protocol driver the image file is opened with (QEMU's driver=host_device...): see FileStore's `driver`. */
  fileDriver?: FileDriver;
  /** null-co:// options: size (default 1 GiB), read-zeroes (default off: reads leave the buffer as it was). */
  nullCo?: { size?: number; readZeroes?: boolean };
  /** qcow2's lazy-refcounts runtime option (the image's own setting otherwise). */
  lazyRefcounts?: boolean;
  /** qcow2's overlap-check.inactive-l2 (QEMU's overlap-check=all includes it): see Qcow2OpenOptions. */
  overlapCheckInactiveL2?: boolean;
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
  /**
   * Stored data file and backing file names that are absolute or have ".." and lead out of the image's folder
   * are followed with a warning through `onWarning` (default true). False for an image the caller has just
   * created, whose names are the caller's own.
   */
  warnOutsideReferences?: boolean;
  repairDirty?: Qcow2OpenOptions["repairDirty"];
  /** Internal: images already open in this chain. */
  chain?: string[];
  /** Internal: this image is a confined backing file; the file opened must lie inside the named image's folder. */
  openedInside?: ConfinedReference;
  /**
   * Encrypted qcow2 images: QEMU's encrypt.* options (the key secret); for a luks image its `key-secret`. Not
   * passed on to backing files.
   */
  encrypt?: EncryptionOpenOptions;
  /** The backing image's own encrypt.* options (QEMU's backing.encrypt.*). */
  backingEncrypt?: EncryptionOpenOptions;
  /**
   * NBD names (`nbd://`, `nbd+unix://`, `nbd:`): milliseconds a silent server is waited for before the open
   * or a request fails (default 60 000; 0: forever). Also the connect timeout of `ssh://` names.
   */
  nbdTimeoutMs?: number;
  /** Remote names (http(s)://, s3://, json: with an http(s) protocol): RemoteStore settings. */
  remote?: RemoteOpenOptions;
}

function checkFormat(format: string): ImageFormat {
  if (format === "qcow2" || format === "raw" || format === "luks") return format;
  throw new Qcow2Error("NOT_SUPPORTED", `Unknown driver '${format}'`, { errno: "EINVAL" });
}

/**
 * Outside safe mode stored names are followed wherever they lead, as QEMU follows them; one that is absolute
 * or has ".." and leads out of the image's folder is followed with a warning (through `onWarning`).
 */
function warnLeavingReference(opts: OpenImageOptions, imageName: string, name: string, kind: "data-file" | "backing"): void {
  if (!opts.onWarning || opts.warnOutsideReferences === false) return;
  const why = referenceLeavingFolder(imageName, name, kind, process.cwd());
  if (why === undefined) return;
  const label = kind === "data-file" ? "data file" : "backing file";
  const reason = why === "absolute" ? "an absolute name" : "a name with '..'";
  opts.onWarning(`warning: '${printableName(imageName)}' names ${label} '${printableName(name)}' (${reason}) outside its folder; following it`);
}

/** A resolver that opens referenced files on the local file system, as QEMU 7.2 resolves their names. */
export function fileResolver(opts: OpenImageOptions = {}): ImageResolver {
  return {
    async openDataFile(name: string, ctx: ResolveContext): Promise<ByteStore> {
      // The data-file option is the caller's own choice; only names stored in the image are restricted.
      const stored = name !== opts.dataFile;
      const remote = opts.safe && stored ? undefined : parseRemoteName(name);
      if (remote) {
        if (stored && confines(opts)) {
          throw new Qcow2Error("NOT_SUPPORTED", `Refusing data file '${shownName(name)}' in confined mode: it is not a file in the image's folder`, { errno: "EPERM" });
        }
        // Metadata local, data remote: readable; writes go to an overlay.
        if (!ctx.readOnly) throw remoteReadOnlyError(name, "data file");
        return openRemoteStore(name, remote, opts.remote);
      }
      const path = opts.safe && stored
        ? checkSafeReference(ctx.imageName, name, "data-file", { cwd: process.cwd() })
        : resolveDataFileName(name).path!;
      if (stored && !opts.safe) warnLeavingReference(opts, ctx.imageName, name, "data-file");
      const store = await FileStore.open(path, {
        readOnly: ctx.readOnly,
        name,
        syncIoBytes: opts.syncIoBytes ?? 0,
        inMemorySyncIoBytes: opts.inMemorySyncIoBytes ?? 0,
        cachedReadBytes: opts.cachedReadBytes ?? 0,
      });
      if (stored && confines(opts)) {
        try {
          await assertOpenedInside(store.fd, path, confinedReference(ctx.imageName, "data-file", name, opts));
        } catch (e) {
          await store.close().catch(() => undefined);
          throw e;
        }
      }
      return opts.wrapDataFile ? opts.wrapDataFile(store) : store;
    },
    async openBacking(name: string, format: string | undefined, ctx: ResolveContext): Promise<BlockImage> {
      // A backing image opens read-only with the caller's settings, without the caller's overrides.
      const openBackingImage = (path: string, chain: string[], openedInside?: ConfinedReference): Promise<BlockImage> => {
        const {
          format: _format,
          backing: _backing,
          dataFile: _dataFile,
          // The options of the top image's own children do not apply to its backing image.
          dataFileStore: _dataFileStore,
          wrapDataFile: _wrapDataFile,
          wrapFile: _wrapFile,
          lazyRefcounts: _lazyRefcounts,
          overlapCheckInactiveL2: _overlapCheckInactiveL2,
          nullCo: _nullCo,
          encrypt: _encrypt,
          backingEncrypt,
          openedInside: _openedInside,
          file: _file,
          fileDriver: _fileDriver,
          ...inherited
        } = opts;
        return openImage(path, {
          ...inherited,
          ...(format !== undefined && { format }),
          ...(backingEncrypt && { encrypt: backingEncrypt }),
          ...(openedInside && { openedInside }),
          readOnly: true,
          chain,
        });
      };
      try {
        const custom = opts.confineReferences || opts.safe ? undefined : opts.openBackingName?.(name, format);
        if (custom) return await custom;
        let path: string;
        const stored = name !== opts.backing;
        if (opts.safe && format === undefined) {
          throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the backing file format in safe mode", { errno: "EPERM" });
        }
        const confined = stored && confines(opts);
        if (opts.safe && stored) {
          path = checkSafeReference(ctx.imageName, name, "backing");
        } else if (parseRemoteName(name)) {
          if (confined) {
            throw new Qcow2Error("NOT_SUPPORTED", `Refusing backing file '${shownName(name)}' in confined mode: it is not a file in the image's folder`, { errno: "EPERM" });
          }
          if (ctx.chain.length >= MAX_CHAIN_DEPTH) throw new Qcow2Error("INVALID_IMAGE", "Backing chain too deep");
          if (ctx.chain.includes(name)) throw new Qcow2Error("INVALID_IMAGE", `Backing file '${name}' loops back into the chain`);
          return await openBackingImage(name, [...ctx.chain, name]);
        } else if (isNbdFilename(name)) {
          if (confined) {
            throw new Qcow2Error("NOT_SUPPORTED", `Refusing backing file '${shownName(name)}' in confined mode: it is not a file in the image's folder`, { errno: "EPERM" });
          }
          // A backing file on an NBD export (QEMU follows such names too).
          return await openNbdImage(name, { ...(format !== undefined ? { format } : {}), readOnly: true, ...(opts.nbdTimeoutMs !== undefined ? { nbdTimeoutMs: opts.nbdTimeoutMs } : {}) });
        } else {
          if (stored) warnLeavingReference(opts, ctx.imageName, name, "backing");
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
        return await openBackingImage(path, [...ctx.chain, ...(real !== undefined ? [real] : [])], confined ? confinedReference(ctx.imageName, "backing", name, opts) : undefined);
      } catch (e) {
        if (isQcow2Error(e)) {
          throw new Qcow2Error(e.code, `Could not open backing file: ${e.message}`, { errno: e.errno, cause: e });
        }
        throw e;
      }
    },
  };
}

function confines(opts: OpenImageOptions): boolean {
  return (opts.safe ?? false) || (opts.confineReferences ?? false);
}

function confinedReference(imagePath: string, kind: ReferenceKind, storedName: string, opts: OpenImageOptions): ConfinedReference {
  return { imagePath, kind, storedName, mode: opts.safe ? "safe mode" : "confined mode" };
}

/** Open a qcow2 or raw image file. */
export async function openImage(name: string, opts: OpenImageOptions = {}): Promise<BlockImage> {
  if (isNbdFilename(name)) return openNbdImage(name, opts);
  if (isSshName(name)) return openSshImage(name, opts.nbdTimeoutMs);
  const remote = parseRemoteName(name);
  if (remote) return openRemoteImage(name, remote, opts);
  const path = imageFilePath(name);
  const readOnly = opts.readOnly ?? false;
  // null-co:// (QEMU's null driver): zeros on read, writes dropped; raw on top of it, as `-f raw null-co://`.
  if (path.startsWith("null-co://") || opts.format === "null-co") {
    if (opts.format !== undefined && opts.format !== "raw" && opts.format !== "null-co") {
      throw new Qcow2Error("INVALID_IMAGE", `Image is not in ${opts.format} format`);
    }
    const nullStore = new NullStore(opts.nullCo?.size, path || "null-co://", readOnly, opts.nullCo?.readZeroes ?? false);
    return RawImage.open(opts.wrapFile ? opts.wrapFile(nullStore) : nullStore);
  }
  if (opts.file) return openOnStore(path, opts.file, opts, readOnly);
  const store = await FileStore.open(path, {
    readOnly,
    lock: imageLockMode(readOnly, opts.shareRW, opts.locking),
    ...(opts.fileDriver !== undefined ? { driver: opts.fileDriver } : {}),
    syncIoBytes: opts.syncIoBytes ?? 0,
    inMemorySyncIoBytes: opts.inMemorySyncIoBytes ?? 0,
    cachedReadBytes: opts.cachedReadBytes ?? 0,
  });
  const unlocked = lockWarning(store, path);
  if (unlocked !== undefined) opts.onWarning?.(unlocked);
  try {
    if (opts.openedInside) await assertOpenedInside(store.fd, path, opts.openedInside);
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  return openOnStore(path, store, opts, readOnly, async () => {
    try {
      return [await realpath(path)];
    } catch {
      return [];
    }
  });
}

/**
 * The format (given, or probed) opened over `store`, which it then owns: a file openImage opened, or the
 * caller's store (the `file` option). `chainOf` names the first image of a backing chain (loop detection).
 */
async function openOnStore(name: string, store: ByteStore, opts: OpenImageOptions, readOnly: boolean, chainOf: () => Promise<string[]> = async () => []): Promise<BlockImage> {
  try {
    const file = opts.wrapFile ? opts.wrapFile(store) : store;
    let format: ImageFormat;
    if (opts.format !== undefined) format = checkFormat(opts.format);
    else if (opts.safe) throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the image format in safe mode; give the format", { errno: "EPERM" });
    else format = await probeFormat(file, name);
    if (format === "raw") return await RawImage.open(file, { probed: opts.format === undefined });
    if (format === "luks") return await LuksImage.open(file, luksOpenOptions(opts));
    const chain = opts.chain ?? (await chainOf());
    // Qcow2Image.open closes the store itself when it fails after taking it over.
    return await Qcow2Image.open(file, qcow2OpenOptions(name, opts, readOnly, chain));
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

/** A luks image's key (its `key-secret`, given as `encrypt.keySecret`); info opens without one. */
function luksOpenOptions(opts: OpenImageOptions): LuksOpenOptions {
  return { ...(opts.encrypt?.keySecret !== undefined ? { keySecret: opts.encrypt.keySecret } : {}), ...(opts.noIo ? { noIo: true } : {}) };
}

/** How openImage opens a qcow2 image named `path` (a file or an NBD export). */
function qcow2OpenOptions(path: string, opts: OpenImageOptions, readOnly: boolean, chain: string[]): Qcow2OpenOptions {
  return {
    readOnly,
    resolver: fileResolver(opts),
    filename: path,
    chain,
    ...(opts.dataFile !== undefined ? { dataFile: opts.dataFile } : {}),
    ...(opts.dataFileStore !== undefined ? { dataFile: opts.dataFileStore } : {}),
    ...(opts.backing !== undefined ? { backing: opts.backing } : {}),
    ...(opts.backingFormat !== undefined ? { backingFormat: opts.backingFormat } : {}),
    ...(opts.cacheSize !== undefined ? { cacheBytes: opts.cacheSize } : {}),
    ...(opts.noIo ? { noIo: true } : {}),
    ...(opts.checkMode ? { checkMode: true } : {}),
    ...(opts.discard ? { discard: opts.discard } : {}),
    ...(opts.lazyRefcounts !== undefined ? { lazyRefcounts: opts.lazyRefcounts } : {}),
    ...(opts.overlapCheckInactiveL2 ? { overlapCheckInactiveL2: true } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    ...(opts.encrypt ? { encrypt: opts.encrypt } : {}),
    // Writable opens keep persistent dirty bitmaps up to date (in_use while open, stored at close).
    bitmaps: trackBitmaps,
    // A dirty image (lazy refcounts, not closed cleanly) opened read-write is repaired, as QEMU does.
    repairDirty: opts.repairDirty ?? dirtyImageRepair({ onMessage: (line) => opts.onWarning?.(line) }),
  };
}

export interface CreateImageOptions extends Qcow2CreateOptions {
  /** luks: a raw LUKS1 volume, made from `encrypt` (format "luks", its key secret) and `size`/`preallocation`. */
  format?: ImageFormat;
}

function luksCreateOptions(opts: CreateImageOptions): LuksImageCreateOptions {
  const { format: _format, ...luks } = opts.encrypt ?? { format: "luks" };
  return { ...luks, size: opts.size, ...(opts.preallocation !== undefined ? { preallocation: opts.preallocation } : {}) };
}

/**
 * Create an image file (and its external data file) as qemu-img create does. A raw image is a file of
 * `size` bytes (preallocation off/falloc/full).
 */
export async function createImage(name: string, opts: CreateImageOptions): Promise<void> {
  const format = opts.format ?? "qcow2";
  if (isNbdFilename(name)) return createOnNbd(name, format, opts);
  if (parseRemoteName(name)) {
    if (format === "luks") throw new Qcow2Error("NOT_SUPPORTED", "Creating a luks image on a remote store is not supported", { errno: "ENOTSUP" });
    return createRemoteImage(name, format, opts);
  }
  const path = imageFilePath(name);
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
  if (format === "luks") {
    await using store = await FileStore.open(path, { create: true, truncate: true });
    await LuksImage.create(store, luksCreateOptions(opts));
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
  // createQcow2 leaves the files open (flushed): they are ours to close.
  try {
    await dataStore?.close();
  } finally {
    await meta.close();
  }
}

/**
 * A remote image (http(s)://, s3://, json: with an http(s) protocol): read-only, no lock, the format probed
 * unless given (by the options or the json: name's "driver"). Its backing file and data file names resolve as
 * for a local image (relative names against the working directory, URLs as URLs).
 */
async function openRemoteImage(name: string, remote: RemoteName, opts: OpenImageOptions): Promise<BlockImage> {
  if (opts.readOnly === false || opts.readOnly === undefined) throw remoteReadOnlyError(name);
  let format: ImageFormat | undefined;
  const given = opts.format ?? remote.format;
  if (given !== undefined) format = checkFormat(given);
  else if (opts.safe) throw new Qcow2Error("NOT_SUPPORTED", "Refusing to probe the image format in safe mode; give the format", { errno: "EPERM" });
  const store = await openRemoteStore(name, remote, opts.remote);
  try {
    format ??= await probeFormat(store);
    if (format === "raw") return await RawImage.open(store);
    if (format === "luks") return await LuksImage.open(store, luksOpenOptions(opts));
    return await Qcow2Image.open(store, qcow2OpenOptions(name, opts, true, opts.chain ?? [name]));
  } catch (e) {
    await store.close().catch(() => undefined);
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
  imageLockMode(readOnly, opts.shareRW, opts.locking);
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
    format ??= await probeFormat(store, filename);
    if (format === "raw") return await NbdImage.open(client, { filename, readOnly });
    if (format === "luks") return await LuksImage.open(store, luksOpenOptions(opts));
    return await Qcow2Image.open(store, qcow2OpenOptions(filename, opts, readOnly, []));
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
  if (format === "luks") throw new Qcow2Error("NOT_SUPPORTED", "Creating a luks image on an NBD export is not supported", { errno: "ENOTSUP" });
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
export type { LockingMode } from "./node/open-policy";
export { openRemoteStore, remoteReadOnlyError, s3ConfigFromEnv, type RemoteOpenOptions } from "./node/remote-open";
export { connectNbd, connectNbdSocket } from "./node/nbd-socket";
export type { OpenNbdOptions } from "./node/nbd-socket";
export { readableFromFd, writeStreamToFd, writeAllToFd, webStreamFromNode, nodeReadableFromWeb, pipeWebStreamTo } from "./node/streams";
