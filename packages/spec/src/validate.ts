/**
 * Open-time validation of cluster 0, in the order QEMU 7.2 checks (qcow2_do_open), with its messages.
 * Checks that need I/O (reading the L1 table, the snapshot table, the data file) are the engine's.
 */
import {
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  CRYPT_LUKS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN_MASK,
  MAX_L1_TABLE_BYTES,
  MAX_REFCOUNT_ORDER,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  MAX_BITMAPS,
  MAX_BITMAP_DIRECTORY_BYTES,
} from "./constants";
import { Qcow2Error } from "./errors";
import { QEMU_FEATURE_TABLE, unsupportedFeaturesMessage } from "./feature-table";
import { l1EntriesForSize } from "./geometry";
import type { ImageHeader } from "./image-header";
import { SNAPSHOT_HEADER_BYTES } from "./snapshot";

export interface HeaderValidationOptions {
  /** The image is opened for writing. */
  readWrite: boolean;
  /** Opened by check/repair: a corrupt image may be opened read-write and a missing refcount table is allowed. */
  checkMode?: boolean;
  /** Skip the checks that only matter for I/O (qemu-img info opens with no I/O). */
  noIo?: boolean;
}

export interface HeaderValidationResult {
  /** Warnings QEMU prints but opens anyway (for example bitmaps left by a program without bitmap support). */
  warnings: string[];
  /** The bitmaps extension is to be ignored (autoclear bit 0 clear). */
  ignoreBitmaps: boolean;
}

const INT64_MAX = 2 ** 63 - 1;

/** qcow2_validate_table: a table of `entries` x `entryBytes` at `offset`, limited to `maxBytes`. */
export function validateTable(
  offset: number,
  entries: number,
  entryBytes: number,
  maxBytes: number,
  clusterSize: number,
  tableName: string,
): void {
  if (entries > Math.floor(maxBytes / entryBytes)) {
    throw new Qcow2Error("INVALID_IMAGE", `${tableName} too large`, { errno: "EFBIG" });
  }
  if (INT64_MAX - entries * entryBytes < offset || offset % clusterSize !== 0 || !Number.isSafeInteger(offset)) {
    throw new Qcow2Error("INVALID_IMAGE", `${tableName} offset invalid`);
  }
}

export function validateImageHeader(img: ImageHeader, opts: HeaderValidationOptions): HeaderValidationResult {
  const h = img.header;
  const clusterSize = 2 ** h.clusterBits;
  const warnings: string[] = [];

  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN_MASK;
  if (unknown) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      unsupportedFeaturesMessage(unknown, img.extensions.featureTable ?? QEMU_FEATURE_TABLE),
    );
  }
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && opts.readWrite && !opts.checkMode) {
    throw new Qcow2Error("CORRUPT", "qcow2: Image is corrupt; cannot be opened read/write", { errno: "EACCES" });
  }
  const extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  if (extendedL2 && clusterSize / 32 < 512) {
    throw new Qcow2Error("INVALID_IMAGE", `Unsupported subcluster size: ${clusterSize / 32}`);
  }
  if (h.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw new Qcow2Error("INVALID_IMAGE", "Reference count entry width too large; may not exceed 64 bits");
  }
  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new Qcow2Error("INVALID_IMAGE", `qcow2: unknown compression type: ${h.compressionType}`);
  }
  if (h.compressionType === COMPRESSION_ZLIB && h.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    throw new Qcow2Error("INVALID_IMAGE", "qcow2: Compression type incompatible feature bit must not be set");
  }
  if (h.compressionType !== COMPRESSION_ZLIB && !(h.incompatibleFeatures & INCOMPAT_COMPRESSION)) {
    throw new Qcow2Error("INVALID_IMAGE", "qcow2: Compression type incompatible feature bit must be set");
  }
  if (h.cryptMethod > CRYPT_LUKS) {
    throw new Qcow2Error("INVALID_IMAGE", `Unsupported encryption method ${h.cryptMethod}`);
  }
  if (h.refcountTableClusters === 0 && !opts.checkMode) {
    throw new Qcow2Error("INVALID_IMAGE", "Image does not contain a reference count table");
  }
  validateTable(
    h.refcountTableOffset,
    h.refcountTableClusters,
    clusterSize,
    MAX_REFTABLE_BYTES,
    clusterSize,
    "Reference count table",
  );
  if (!opts.checkMode) {
    validateTable(
      h.snapshotsOffset,
      h.nbSnapshots,
      SNAPSHOT_HEADER_BYTES,
      SNAPSHOT_HEADER_BYTES * MAX_SNAPSHOTS,
      clusterSize,
      "Snapshot table",
    );
  }
  validateTable(h.l1TableOffset, h.l1Size, 8, MAX_L1_TABLE_BYTES, clusterSize, "Active L1 table");
  if (!Number.isSafeInteger(h.size)) {
    throw new Qcow2Error("INVALID_IMAGE", "Image is too big", { errno: "EFBIG" });
  }
  const l1Needed = l1EntriesForSize(h.size, h.clusterBits, extendedL2);
  if (l1Needed > 2 ** 31 - 1) throw new Qcow2Error("INVALID_IMAGE", "Image is too big", { errno: "EFBIG" });
  if (h.l1Size < l1Needed) throw new Qcow2Error("INVALID_IMAGE", "L1 table is too small");

  // Header extensions.
  let ignoreBitmaps = false;
  const bm = img.extensions.bitmaps;
  if (bm) {
    if (!(h.autoclearFeatures & AUTOCLEAR_BITMAPS)) {
      ignoreBitmaps = true;
      warnings.push(
        "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent",
      );
    } else {
      if (bm.nbBitmaps > MAX_BITMAPS) {
        throw new Qcow2Error(
          "INVALID_IMAGE",
          `bitmaps_ext: Image has ${bm.nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`,
        );
      }
      if (bm.nbBitmaps === 0) throw new Qcow2Error("INVALID_IMAGE", "found bitmaps extension with zero bitmaps");
      if (bm.reserved !== 0) throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: Reserved field is not zero");
      if (bm.bitmapDirectoryOffset % clusterSize !== 0) {
        throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: invalid bitmap directory offset");
      }
      if (bm.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_BYTES) {
        throw new Qcow2Error(
          "INVALID_IMAGE",
          `bitmaps_ext: bitmap directory size (${bm.bitmapDirectorySize}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_BYTES})`,
        );
      }
    }
  }
  if (img.extensions.cryptoHeader && h.cryptMethod !== CRYPT_LUKS) {
    throw new Qcow2Error("INVALID_IMAGE", "CRYPTO header extension only expected with LUKS encryption method");
  }
  if (!opts.noIo) {
    const hasDataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    if (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW && !hasDataFile) {
      throw new Qcow2Error("INVALID_IMAGE", "data-file-raw requires a data file");
    }
  }
  return { warnings, ignoreBitmaps };
}
