/**
 * Creating a qcow2 image as qemu-img 7.2 does (qcow2_co_create): the same refusals and messages, the same
 * file layout (header, refcount table, one refcount block, L1 table, then preallocated L2 tables and data).
 */
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  Qcow2Error,
  encodeImageHeader,
  l1EntriesForSize,
  setRefcount,
  setReftableEntry,
  viewOf,
  type ByteStore,
  type CompressionType,
  type ImageHeader,
} from "@qcowkit/spec";
import type { BlockImage, Preallocation } from "./block-image";
import { requireKeySecret, setUpImageEncryption, validateEncryptionCreateOptions, type EncryptionCreateOptions } from "./crypto/create-encryption";
import { preallocateHostSpace } from "./preallocate-host";
import { Qcow2Image } from "./qcow2-image";

export interface Qcow2CreateOptions {
  /** Virtual size in bytes (qemu-img rounds it up to a multiple of 512 first). */
  size: number;
  /** 2 (compat=0.10) or 3 (compat=1.1, default). */
  version?: 2 | 3;
  /** Bytes, a power of two from 512 to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** Refcount entry width in bits, a power of two up to 64 (default 16). */
  refcountBits?: number;
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: CompressionType;
  preallocation?: Preallocation;
  /** Name of the external data file stored in the image (the store itself is passed separately). */
  dataFile?: string;
  dataFileRaw?: boolean;
  backingFile?: string;
  backingFormat?: string;
  /** Encrypt the image (encrypt.format aes or luks, with the key secret's bytes). */
  encrypt?: EncryptionCreateOptions;
}

export interface CreateContext {
  /** The external data file, already created (truncated) by the caller. */
  dataStore?: ByteStore;
}

const MIN_CLUSTER = 512;
const MAX_CLUSTER = 2 * 1024 * 1024;

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** QEMU's create-time checks, in QEMU's order. Returns the options with defaults filled in. */
export function validateCreateOptions(o: Qcow2CreateOptions): Required<Omit<Qcow2CreateOptions, "dataFile" | "backingFile" | "backingFormat" | "encrypt">> & Qcow2CreateOptions {
  const fail = (msg: string) => new Qcow2Error("INVALID_ARGUMENT", msg);
  if (!Number.isSafeInteger(o.size) || o.size < 0) throw fail("Invalid image size specified. You may use k, M, G, T, P or E suffixes for");
  if (o.size % 512 !== 0) throw fail("Image size must be a multiple of 512 bytes");
  const version = o.version ?? 3;
  const clusterSize = o.clusterSize ?? 65536;
  const extendedL2 = o.extendedL2 ?? false;
  if (extendedL2 && version < 3) {
    throw fail(
      "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
    );
  }
  if (!isPowerOfTwo(clusterSize) || clusterSize < MIN_CLUSTER || clusterSize > MAX_CLUSTER) {
    throw fail("Cluster size must be a power of two between 512 and 2048k");
  }
  if (extendedL2 && clusterSize < 16384) {
    throw fail("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  }
  let preallocation = o.preallocation ?? "off";
  if (o.backingFile !== undefined && preallocation !== "off" && !extendedL2) {
    throw fail("Backing file and preallocation can only be used at the same time if extended_l2 is on");
  }
  if (o.backingFormat !== undefined && o.backingFile === undefined) {
    throw fail("Backing format cannot be used without backing file");
  }
  const lazyRefcounts = o.lazyRefcounts ?? false;
  if (version < 3 && lazyRefcounts) {
    throw fail("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const refcountBits = o.refcountBits ?? 16;
  if (refcountBits > 64 || !isPowerOfTwo(refcountBits)) {
    throw fail("Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (version < 3 && refcountBits !== 16) {
    throw fail(
      "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
    );
  }
  const dataFileRaw = o.dataFileRaw ?? false;
  if (dataFileRaw && o.dataFile === undefined) throw fail("data-file-raw requires data-file");
  if (dataFileRaw && o.backingFile !== undefined) {
    throw fail("Backing file and data-file-raw cannot be used at the same time");
  }
  if (dataFileRaw && preallocation === "off") preallocation = "metadata";
  if (o.dataFile !== undefined && version < 3) {
    throw fail(
      "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
    );
  }
  const compressionType = o.compressionType ?? "zlib";
  if (compressionType !== "zlib" && version < 3) {
    throw fail(
      "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)",
    );
  }
  const l1Entries = l1EntriesForSize(o.size, Math.log2(clusterSize), extendedL2);
  if (l1Entries * 8 > 32 * 1024 * 1024) {
    throw fail("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
  if (o.encrypt) validateEncryptionCreateOptions(o.encrypt);
  return { ...o, version, clusterSize, extendedL2, preallocation, lazyRefcounts, refcountBits, dataFileRaw, compressionType };
}

/**
 * `store` for an image that must not close it: close() is a no-op (the image flushes before closing), everything
 * else is the store's own (bound to it, so getters and private state keep working).
 */
function keepOpen(store: ByteStore): ByteStore {
  return new Proxy(store, {
    get(target, key) {
      if (key === "close") return async () => undefined;
      const value = Reflect.get(target, key, target) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/**
 * Write a new qcow2 image into `meta` (which should be empty). The external data file, when named, must be
 * passed in `ctx.dataStore`; it is sized to the virtual size. Returns nothing; open the image to use it.
 * Both stores are the caller's: they are left open (and flushed), for the caller to use or close.
 */
export async function createQcow2(meta: ByteStore, options: Qcow2CreateOptions, ctx: CreateContext = {}): Promise<void> {
  const o = validateCreateOptions(options);
  if (o.dataFile !== undefined && !ctx.dataStore) {
    throw new Qcow2Error("INTERNAL", "createQcow2: the data file store is missing");
  }
  if (o.encrypt) requireKeySecret(o.encrypt);
  const cs = o.clusterSize;
  const refcountOrder = Math.log2(o.refcountBits);
  const hdr = newImageHeader(o, { size: 0, l1Size: 0, l1TableOffset: 0, refcountTableOffset: cs, refcountTableClusters: 1 });
  // Header, refcount table (one entry: the block at cluster 2) and the first refcount block (clusters 0-2).
  const start = new Uint8Array(3 * cs);
  start.set(encodeImageHeader(hdr), 0);
  setReftableEntry(viewOf(start.subarray(cs, 2 * cs)), 0, 2 * cs);
  const block = start.subarray(2 * cs, 3 * cs);
  for (let i = 0; i < 3; i++) setRefcount(block, i, refcountOrder, 1);
  await meta.resize(0);
  await meta.write(0, start);
  await meta.flush();

  const image = await Qcow2Image.open(keepOpen(meta), {
    readOnly: false,
    backing: null,
    ...(ctx.dataStore ? { dataFile: keepOpen(ctx.dataStore) } : {}),
    filename: meta.name,
  });
  try {
    await growToSize(image, o.size, o.preallocation);
    if (o.backingFile !== undefined) {
      const { backingFile, backingFormat } = o;
      await image.metadata.updateHeader((hdr) => {
        hdr.backingFile = backingFile;
        if (backingFormat !== undefined) hdr.extensions.backingFormat = backingFormat;
      });
    }
    if (o.encrypt) await setUpImageEncryption(image, o.encrypt);
    await image.flush();
  } finally {
    // Flushes both files; the stores themselves stay open.
    await image.close();
  }
}

/** Where a new image's tables are, for its header. */
export interface NewImageLayout {
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
}

/**
 * The header of a new image made with `o` (validated by `validateCreateOptions`): feature bits, widths and the
 * data file name from the options, the tables where `layout` puts them. With `withBacking`, the backing file
 * name and format too (createQcow2 adds them once the image has its size; a stream writes them at once).
 */
export function newImageHeader(o: ReturnType<typeof validateCreateOptions>, layout: NewImageLayout, withBacking = false): ImageHeader {
  let incompatible = 0n;
  if (o.dataFile !== undefined) incompatible |= INCOMPAT_DATA_FILE;
  if (o.extendedL2) incompatible |= INCOMPAT_EXTL2;
  if (o.compressionType !== "zlib") incompatible |= INCOMPAT_COMPRESSION;
  const backing = withBacking && o.backingFile !== undefined;
  return {
    header: {
      version: o.version,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: Math.log2(o.clusterSize),
      size: layout.size,
      cryptMethod: 0,
      l1Size: layout.l1Size,
      l1TableOffset: layout.l1TableOffset,
      refcountTableOffset: layout.refcountTableOffset,
      refcountTableClusters: layout.refcountTableClusters,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatibleFeatures: incompatible,
      compatibleFeatures: o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
      autoclearFeatures: o.dataFileRaw ? AUTOCLEAR_DATA_FILE_RAW : 0n,
      refcountOrder: Math.log2(o.refcountBits),
      headerLength: o.version >= 3 ? 112 : 72,
      compressionType: o.compressionType === "zstd" ? 1 : 0,
      unknownHeaderFields: new Uint8Array(0),
    },
    extensions: {
      unknown: [],
      ...(o.dataFile !== undefined ? { dataFile: o.dataFile } : {}),
      ...(backing && o.backingFormat !== undefined ? { backingFormat: o.backingFormat } : {}),
    },
    ...(backing ? { backingFile: o.backingFile } : {}),
  };
}

/**
 * Give a freshly created image its size (QEMU's qcow2_co_truncate from 0): grow the L1 table, size the data
 * file, then preallocate.
 */
async function growToSize(image: Qcow2Image, size: number, preallocation: Preallocation): Promise<void> {
  const needed = l1EntriesForSize(size, image.clusterBits, image.extendedL2);
  if (needed > 0) await image.metadata.growL1(needed);
  if (image.hasDataFile) {
    await image.metadata.data.resize(size, preallocation === "metadata" ? "off" : preallocation);
  }
  await image.metadata.setVirtualSize(size);
  if (preallocation === "off" || size === 0) return;
  if (preallocation === "metadata" || image.hasDataFile) {
    await image.preallocate(0, size, "metadata");
    return;
  }
  await preallocateHostSpace(image, 0, size, preallocation);
}

export type { BlockImage };
