/**
 * Open-time validation of cluster 0, with QEMU 7.2's messages (qcow2_do_open). The checks QEMU makes
 * while decoding (header fields, extensions, backing file name) are in `decodeImageHeader`; the others are
 * here. Checks that need I/O (reading the L1 table, the snapshot table, the data file) are the engine's.
 *
 * QEMU's order: decodeHeader's checks, compression type, unknown incompatible bits, corrupt bit, subcluster
 * size, refcount order, refcount table, snapshot table, L1 table, image size, encryption method; then the
 * extensions one by one; then data file; then the LUKS header; then the backing file name; then the size
 * limit of the block layer. `openImageHeader` follows it exactly.
 */
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
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
  MIN_CLUSTER_BITS,
} from "./constants";
import { Qcow2Error } from "./errors";
import { checkExtensions } from "./extensions";
import { unsupportedFeaturesMessage, type FeatureName } from "./feature-table";
import type { Qcow2Header } from "./header";
import type { ImageHeader } from "./image-header";
import { SNAPSHOT_HEADER_BYTES } from "./snapshot";

export interface HeaderValidationOptions {
  /** The image is opened for writing. */
  readWrite: boolean;
  /** Opened by check/repair: a corrupt image may be opened read-write and a missing refcount table is allowed. */
  checkMode?: boolean;
  /** Skip the checks that only matter for I/O (qemu-img info opens with no I/O). */
  noIo?: boolean;
  /** The caller supplies the external data file itself (QEMU's `data-file` open option). */
  dataFileGiven?: boolean;
}

export interface HeaderValidationResult {
  /** Warnings QEMU prints but opens anyway (for example bitmaps left by a program without bitmap support). */
  warnings: string[];
  /** Lines QEMU prints after the warnings without a "warning:" prefix. */
  notices: string[];
  /** The bitmaps extension is to be ignored (autoclear bit 0 clear). */
  ignoreBitmaps: boolean;
}

const INT64_MAX = 2 ** 63 - 1;
const INT_MAX = 2 ** 31 - 1;
const U64_MASK = (1n << 64n) - 1n;

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
  // Offsets of 2^53 and above cannot be addressed here; QEMU would fail reading them.
  if (!Number.isSafeInteger(offset) || INT64_MAX - entries * entryBytes < offset || offset % clusterSize !== 0) {
    throw new Qcow2Error("INVALID_IMAGE", `${tableName} offset invalid`);
  }
}

/**
 * L1 entries QEMU needs for `size` (size_to_l1), with its unsigned 64-bit wrap-around: sizes within one
 * L2 table's reach of 2^64 need 0 entries there (and fail later, see `validateImageSize`).
 */
function qemuL1EntriesForSize(size: number, clusterBits: number, extendedL2: boolean): bigint {
  const shift = BigInt(clusterBits + clusterBits - (extendedL2 ? 4 : 3));
  return ((BigInt(size) + (1n << shift) - 1n) & U64_MASK) >> shift;
}

/**
 * The checks QEMU makes on the fixed header fields before it reads the extensions. `featureTable` gives
 * the image's feature names (only asked for when there are unknown incompatible bits).
 */
export function validateHeaderFields(
  h: Qcow2Header,
  featureTable: () => readonly FeatureName[] | undefined,
  opts: HeaderValidationOptions,
): void {
  const clusterSize = 2 ** h.clusterBits;
  if (h.compressionType !== COMPRESSION_ZLIB && h.compressionType !== COMPRESSION_ZSTD) {
    throw new Qcow2Error("UNSUPPORTED_FEATURE", `qcow2: unknown compression type: ${h.compressionType}`);
  }
  if (h.compressionType === COMPRESSION_ZLIB && h.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    throw new Qcow2Error("INVALID_IMAGE", "qcow2: Compression type incompatible feature bit must not be set");
  }
  if (h.compressionType !== COMPRESSION_ZLIB && !(h.incompatibleFeatures & INCOMPAT_COMPRESSION)) {
    throw new Qcow2Error("INVALID_IMAGE", "qcow2: Compression type incompatible feature bit must be set");
  }
  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN_MASK;
  if (unknown) {
    throw new Qcow2Error("UNSUPPORTED_FEATURE", unsupportedFeaturesMessage(unknown, featureTable() ?? []));
  }
  if (h.incompatibleFeatures & INCOMPAT_CORRUPT && opts.readWrite && !opts.checkMode) {
    throw new Qcow2Error("CORRUPT", "qcow2: Image is corrupt; cannot be opened read/write", { errno: "EACCES" });
  }
  const extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const subclusterBytes = extendedL2 ? clusterSize / 32 : clusterSize;
  if (subclusterBytes < 2 ** MIN_CLUSTER_BITS) {
    throw new Qcow2Error("INVALID_IMAGE", `Unsupported subcluster size: ${subclusterBytes}`);
  }
  if (h.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw new Qcow2Error("INVALID_IMAGE", "Reference count entry width too large; may not exceed 64 bits");
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
  const l1Needed = qemuL1EntriesForSize(h.size, h.clusterBits, extendedL2);
  if (l1Needed > BigInt(INT_MAX)) throw new Qcow2Error("INVALID_IMAGE", "Image is too big", { errno: "EFBIG" });
  if (BigInt(h.l1Size) < l1Needed) throw new Qcow2Error("INVALID_IMAGE", "L1 table is too small");
  // QEMU checks the encryption method with the open options, after reading the L1 table.
  if (h.cryptMethod > CRYPT_LUKS) {
    // QEMU prints the field as a signed int.
    throw new Qcow2Error("INVALID_IMAGE", `Unsupported encryption method ${h.cryptMethod | 0}`);
  }
}

/** The checks QEMU makes after reading the extensions: data file presence and the LUKS header pointer. */
export function validateDataFileAndCrypto(img: ImageHeader, opts: HeaderValidationOptions): void {
  const h = img.header;
  // QEMU 7.2.13+ does not look at the data file at all when opening without I/O (qemu-img info).
  if (!opts.noIo) {
    if (h.incompatibleFeatures & INCOMPAT_DATA_FILE) {
      if (!opts.dataFileGiven && img.extensions.dataFile === undefined) {
        throw new Qcow2Error("INVALID_IMAGE", "'data-file' is required for this image");
      }
    } else {
      if (opts.dataFileGiven) {
        throw new Qcow2Error(
          "INVALID_ARGUMENT",
          "'data-file' can only be set for images with an external data file",
        );
      }
      if (h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) {
        throw new Qcow2Error("INVALID_IMAGE", "data-file-raw requires a data file");
      }
    }
    if (h.cryptMethod === CRYPT_LUKS && !img.extensions.cryptoHeader) {
      throw new Qcow2Error("INVALID_IMAGE", `Missing CRYPTO header for crypt method ${h.cryptMethod}`);
    }
  }
}

/**
 * The last size checks: QEMU's block layer refuses sizes of 2^63 and more once the driver has opened the
 * image; this implementation also refuses sizes it cannot represent exactly (2^53 and more).
 */
export function validateImageSize(h: Qcow2Header): void {
  if (h.size >= 2 ** 63) {
    throw new Qcow2Error("INVALID_IMAGE", "Could not refresh total sector count: File too large", { errno: "EFBIG" });
  }
  if (!Number.isSafeInteger(h.size)) {
    throw new Qcow2Error("INVALID_IMAGE", "Image is too big", { errno: "EFBIG" });
  }
}

/** Warnings for a decoded image (bitmaps extension left behind by a program without bitmap support). */
export function headerWarnings(img: ImageHeader): HeaderValidationResult {
  const h = img.header;
  const result: HeaderValidationResult = { warnings: [], notices: [], ignoreBitmaps: false };
  if (img.extensions.bitmaps && !(h.autoclearFeatures & AUTOCLEAR_BITMAPS)) {
    result.ignoreBitmaps = true;
    result.warnings.push(
      h.version < 3
        ? "This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
        : "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent",
    );
    result.notices.push("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
  }
  return result;
}

/**
 * Validate a decoded cluster 0 for opening. Together with `decodeImageHeader` this refuses every image
 * QEMU 7.2 refuses at open from cluster 0 alone, with the same message; when an image has several faults,
 * `openImageHeader` picks the one QEMU reports.
 */
export function validateImageHeader(img: ImageHeader, opts: HeaderValidationOptions): HeaderValidationResult {
  validateHeaderFields(img.header, () => img.extensions.featureTable, opts);
  checkExtensions(img.extensions, img.header);
  validateDataFileAndCrypto(img, opts);
  validateImageSize(img.header);
  return headerWarnings(img);
}
