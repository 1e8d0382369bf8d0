/** Constants of the qcow2 format (docs/interop/qcow2.txt) and QEMU 7.2's implementation limits. */

/** "QFI\xfb" */
export const QCOW2_MAGIC = 0x514649fb;

export const HEADER_V2_LENGTH = 72;
/** Minimum v3 header_length. */
export const HEADER_V3_MIN_LENGTH = 104;
/** The v3 header length QEMU writes (through the compression_type byte and its padding). */
export const HEADER_V3_LENGTH = 112;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_BITS = 16;
/** Extended L2 entries need clusters of at least 16 KiB. */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;
export const SUBCLUSTERS_PER_CLUSTER = 32;

export const MAX_REFCOUNT_ORDER = 6;
export const DEFAULT_REFCOUNT_ORDER = 4;

/** QEMU limits (qcow2.h). */
export const MAX_L1_TABLE_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;
export const MAX_BACKING_FILE_NAME = 1023;
/** Limit on the backing format extension (sizeof(bs->backing_format) - 1 in QEMU). */
export const MAX_BACKING_FORMAT_NAME = 15;
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_NAME = 1023;
export const MAX_BITMAP_DIRECTORY_BYTES = 1024 * MAX_BITMAPS;

/** Incompatible feature bits (offset 72). */
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN_MASK = 0x1fn;

/** Compatible feature bits (offset 80). */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const COMPAT_KNOWN_MASK = 0x1n;

/** Autoclear feature bits (offset 88). */
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const AUTOCLEAR_KNOWN_MASK = 0x3n;

/** Header extension types. */
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO_HEADER = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** crypt_method values. */
export const CRYPT_NONE = 0;
export const CRYPT_AES = 1;
export const CRYPT_LUKS = 2;

/** compression_type values. */
export const COMPRESSION_ZLIB = 0;
export const COMPRESSION_ZSTD = 1;
export type CompressionType = "zlib" | "zstd";

/** L1 entry masks, as two 32-bit halves (hi = bits 32..63, lo = bits 0..31). */
export const L1E_OFFSET_MASK_HI = 0x00ffffff;
export const L1E_OFFSET_MASK_LO = 0xfffffe00;
export const L1E_RESERVED_MASK_HI = 0x7f000000;
export const L1E_RESERVED_MASK_LO = 0x000001ff;

/** Standard L2 entry masks. */
export const L2E_OFFSET_MASK_HI = 0x00ffffff;
export const L2E_OFFSET_MASK_LO = 0xfffffe00;
export const L2E_STD_RESERVED_MASK_HI = 0x3f000000;
export const L2E_STD_RESERVED_MASK_LO = 0x000001fe;

/** Flag bits in the high half of L1/L2 entries. */
export const OFLAG_COPIED_HI = 0x80000000;
export const OFLAG_COMPRESSED_HI = 0x40000000;
/** Zero flag in the low half of standard L2 entries. */
export const OFLAG_ZERO_LO = 0x1;

/** Refcount table entry masks. */
export const REFT_RESERVED_MASK_LO = 0x1ff;

