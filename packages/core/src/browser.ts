/**
 * @qcowkit/core/browser: everything of "@qcowkit/core", plus opening images from Blobs (the File API) and a
 * zstd codec whose WebAssembly module is bundled with it. No Node modules, no polyfills.
 */
import { BlobStore, type BlobLike } from "@qcowkit/datafile";
import { Qcow2Error, isQcow2Error } from "@qcowkit/spec";
import { withBitmapMethods } from "./bitmaps";
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
 * Open `files[0]` read-only. The other files answer the names the image refers to (its external data file,
 * its backing file, their backing files) by base name: a browser has no directories.
 */
export async function openBlobImage(files: readonly NamedBlob[], opts: OpenBlobOptions = {}): Promise<BlockImage> {
  if (files.length === 0) throw new Qcow2Error("INVALID_ARGUMENT", "No image file given");
  return openNamed(files, files[0]!, opts, []);
}

async function openNamed(files: readonly NamedBlob[], file: NamedBlob, opts: OpenBlobOptions, chain: string[]): Promise<BlockImage> {
  const store = new BlobStore(file, file.name);
  const format = opts.format ?? (await probeFormat(store));
  if (format === "raw") return RawImage.open(store);
  if (format !== "qcow2") throw new Qcow2Error("NOT_SUPPORTED", `Unknown driver '${format}'`, { errno: "EINVAL" });
  const resolver: ImageResolver = {
    async openDataFile(name) {
      return new BlobStore(findBlob(files, name), name);
    },
    async openBacking(name, backingFormat, ctx) {
      try {
        const backing = findBlob(files, name);
        if (ctx.chain.length >= MAX_CHAIN_DEPTH) throw new Qcow2Error("INVALID_IMAGE", "Backing chain too deep");
        if (ctx.chain.includes(backing.name)) throw new Qcow2Error("INVALID_IMAGE", `Backing file '${name}' loops back into the chain`);
        return await openNamed(files, backing, { ...(backingFormat !== undefined ? { format: backingFormat } : {}) }, ctx.chain);
      } catch (e) {
        if (isQcow2Error(e)) throw new Qcow2Error(e.code, `Could not open backing file: ${e.message}`, { errno: e.errno, cause: e });
        throw e;
      }
    },
  };
  return withBitmapMethods(
    await Qcow2Image.open(store, {
      readOnly: true,
      resolver,
      filename: file.name,
      chain,
      ...(opts.noIo ? { noIo: true } : {}),
      ...(opts.checkMode ? { checkMode: true } : {}),
      ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    }),
  );
}
