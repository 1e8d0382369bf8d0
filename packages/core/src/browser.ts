/**
 * Everything of "@qcowkit/core", plus opening images from Blobs (the File API) and a
 * zstd codec whose WebAssembly module is bundled with it. No Node modules, no polyfills.
 *
 * @module @qcowkit/core/browser
 */
import { BlobStore, RemoteStore, resolveBackingFileName, type BlobLike, type RemoteFetch, type RemoteStoreOptions } from "@qcowkit/datafile";
import { Qcow2Error, isQcow2Error, type ByteStore } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { registerCodecLoader } from "./compression";
import { probeFormat } from "./probe";
import { Qcow2Image } from "./qcow2-image";
import { RawImage } from "./raw-image";
import { MAX_CHAIN_DEPTH, type ImageResolver } from "./resolver";
import { loadZstdCodec } from "./zstd";

export * from "./index";
export { BlobStore, SyncHandleStore, type BlobLike, type SyncAccessHandleLike } from "@qcowkit/datafile";
export { loadZstdCodec, type ZstdLoadOptions } from "./zstd";

registerCodecLoader("zstd", () => loadZstdCodec({ wasmBytes: async () => (await import("./browser/zstd-wasm")).default }));

/** A Blob with the file name it answers to (a browser File is one). */
export interface NamedBlob extends BlobLike {
  readonly name: string;
}

export interface OpenBlobOptions {
  /** "qcow2" or "raw"; probed (qcow2 magic and version >= 2, else raw) when absent. */
  format?: string;
  /** Metadata only, as qemu-img info: neither the data file nor the backing chain is opened. */
  noIo?: boolean;
  /** Open for a consistency check (qemu-img check): damaged images open as far as QEMU opens them. */
  checkMode?: boolean;
  /** Engine warnings ("qcow2: ..." lines). */
  onWarning?: (message: string) => void;
}

/** The last component of a path as QEMU stores it ("dir/base.qcow2" and "/abs/base.qcow2" answer to "base.qcow2"). */
export function baseName(name: string): string {
  return name.slice(name.lastIndexOf("/") + 1);
}

function notFound(name: string): Qcow2Error {
  return new Qcow2Error("NOT_FOUND", `Could not open '${name}': No such file or directory`, { errno: "ENOENT" });
}

/** The first blob whose name is the base name of `name`. */
function findBlob(files: readonly NamedBlob[], name: string): NamedBlob {
  const wanted = baseName(name);
  const found = files.find((f) => f.name === wanted);
  if (!found) throw notFound(name);
  return found;
}

/**
 * Where an image's files come from: a name it stores (data file, backing file) turned into the name of the
 * file it means, relative to the image that stores it, and that file opened.
 */
interface FileSource {
  resolve(stored: string, relativeTo: string): string;
  open(name: string): Promise<ByteStore>;
}

/**
 * Open `files[0]` read-only. The other files answer the names the image refers to (its external data file,
 * its backing file, their backing files) by base name: a browser has no directories.
 */
export async function openBlobImage(files: readonly NamedBlob[], opts: OpenBlobOptions = {}): Promise<BlockImage> {
  if (files.length === 0) throw new Qcow2Error("INVALID_ARGUMENT", "No image file given");
  const source: FileSource = {
    resolve: (stored) => findBlob(files, stored).name,
    open: async (name) => new BlobStore(findBlob(files, name), name),
  };
  return openNamed(source, files[0]!.name, opts, []);
}

export interface OpenUrlOptions extends OpenBlobOptions {
  /** Transport (default: globalThis.fetch). */
  fetch?: RemoteFetch;
  /** RemoteStore settings (readahead, cache, timeouts). */
  store?: Omit<RemoteStoreOptions, "fetch" | "name" | "sign">;
}

/**
 * Open the image at `url` (http or https) read-only by ranged GETs (RemoteStore). The server must answer
 * Range requests; from another origin it must also allow CORS (see apps/web/README.md). Data file and
 * backing file names stored in the image resolve against the URL of the image that stores them, as QEMU's
 * curl driver resolves them ("base.qcow2" stored in https://host/dir/top.qcow2 is https://host/dir/base.qcow2).
 */
export async function openUrlImage(url: string, opts: OpenUrlOptions = {}): Promise<BlockImage> {
  const source: FileSource = {
    resolve: (stored, relativeTo) => resolveUrl(stored, relativeTo),
    open: (name) => RemoteStore.open(name, { ...opts.store, ...(opts.fetch ? { fetch: opts.fetch } : {}), name }),
  };
  return openNamed(source, url, opts, []);
}

/**
 * The URL a name stored in the image at `base` means, as QEMU combines them: a URL stays as it is, a relative
 * name replaces the last path component of `base`. Local paths (absolute, or `file:`) cannot be opened from a
 * page and are refused in one line.
 */
export function resolveUrl(name: string, base: string): string {
  const ref = resolveBackingFileName(base, name);
  if (ref?.protocol === "http" || ref?.protocol === "https") return name;
  if (ref !== undefined && ref.protocol === undefined && !name.startsWith("/") && ref.path !== undefined) return ref.path;
  throw new Qcow2Error("NOT_SUPPORTED", `Could not open '${name}': a page can open only http and https URLs`, { errno: "ENOTSUP" });
}

async function openNamed(source: FileSource, name: string, opts: OpenBlobOptions, chain: string[]): Promise<BlockImage> {
  const store = await source.open(name);
  try {
    const format = opts.format ?? (await probeFormat(store));
    if (format === "raw") return await RawImage.open(store);
    if (format !== "qcow2") throw new Qcow2Error("NOT_SUPPORTED", `Unknown driver '${format}'`, { errno: "EINVAL" });
    return await openQcow2(source, store, name, opts, chain);
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
}

async function openQcow2(source: FileSource, store: ByteStore, name: string, opts: OpenBlobOptions, chain: string[]): Promise<BlockImage> {
  const resolver: ImageResolver = {
    async openDataFile(stored) {
      return source.open(source.resolve(stored, name));
    },
    async openBacking(stored, backingFormat, ctx) {
      try {
        const backing = source.resolve(stored, name);
        if (ctx.chain.length >= MAX_CHAIN_DEPTH) throw new Qcow2Error("INVALID_IMAGE", "Backing chain too deep");
        if (ctx.chain.includes(backing)) throw new Qcow2Error("INVALID_IMAGE", `Backing file '${stored}' loops back into the chain`);
        return await openNamed(source, backing, { ...(backingFormat !== undefined ? { format: backingFormat } : {}) }, ctx.chain);
      } catch (e) {
        if (isQcow2Error(e)) throw new Qcow2Error(e.code, `Could not open backing file: ${e.message}`, { errno: e.errno, cause: e });
        throw e;
      }
    },
  };
  return await Qcow2Image.open(store, {
    readOnly: true,
    resolver,
    filename: name,
    chain,
    ...(opts.noIo ? { noIo: true } : {}),
    ...(opts.checkMode ? { checkMode: true } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
  });
}
