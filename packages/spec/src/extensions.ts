/**
 * Header extensions (docs/interop/qcow2.txt, "Header extensions"): after the header, each extension is
 *   u32 type, u32 length, `length` bytes of data, zero padding to a multiple of 8.
 * Type 0 ends the list. The scan area ends at backing_file_offset when set, else at the end of cluster 0.
 *
 * QEMU 7.2 (qcow2_read_extensions) checks each extension as it reaches it: first that its length fits the
 * scan area (also for the end marker), then the per-type checks. Decoding here does the same, in the same
 * order, so the first bad extension gives QEMU's message.
 */
import { decodePaddedText, encodeText, getU64, setU64, viewOf } from "./bytes";
import {
  AUTOCLEAR_BITMAPS,
  CRYPT_LUKS,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  MAX_BACKING_FORMAT_NAME,
  MAX_BITMAPS,
  MAX_BITMAP_DIRECTORY_BYTES,
} from "./constants";
import { Qcow2Error } from "./errors";
import { decodeFeatureTable, encodeFeatureTable, type FeatureName } from "./feature-table";
import type { Qcow2Header } from "./header";

/** Bitmaps extension (0x23852875), exactly 24 bytes. */
export interface BitmapsExtension {
  nbBitmaps: number;
  /** Must be 0. */
  reserved: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

/** Full disk encryption header pointer (0x0537be77), exactly 16 bytes. */
export interface CryptoHeaderExtension {
  offset: number;
  length: number;
}

export interface RawExtension {
  type: number;
  data: Uint8Array;
}

/** Every extension of an image, decoded where known; unknown ones kept byte for byte, in file order. */
export interface HeaderExtensions {
  backingFormat?: string;
  dataFile?: string;
  featureTable?: FeatureName[];
  bitmaps?: BitmapsExtension;
  cryptoHeader?: CryptoHeaderExtension;
  unknown: RawExtension[];
}

/** The header fields the per-extension checks depend on. */
export type ExtensionContext = Pick<Qcow2Header, "version" | "clusterBits" | "cryptMethod" | "autoclearFeatures">;

const BITMAPS_EXT_BYTES = 24;
const CRYPTO_EXT_BYTES = 16;

export function alignExtension(length: number): number {
  return (length + 7) & ~7;
}

/**
 * Walk the extension records of [start, end) of `cluster0` in order, handing each to `visit`; stops at the
 * end marker. Throws "Header extension too large" for a record (end marker included) that overruns the area.
 */
function walkExtensions(cluster0: Uint8Array, start: number, end: number, visit: (r: RawExtension) => void): void {
  const v = viewOf(cluster0);
  const limit = Math.min(end, cluster0.byteLength);
  let at = start;
  while (at < limit) {
    if (at + 8 > limit) throw new Qcow2Error("INVALID_IMAGE", "Header extension too large");
    const type = v.getUint32(at);
    const length = v.getUint32(at + 4);
    at += 8;
    if (length > limit - at) throw new Qcow2Error("INVALID_IMAGE", "Header extension too large");
    if (type === EXT_END) return;
    visit({ type, data: cluster0.slice(at, at + length) });
    at += alignExtension(length);
  }
}

/** Split the extension area into raw (type, data) records, with QEMU's errors for malformed ones. */
export function readRawExtensions(cluster0: Uint8Array, start: number, end: number): RawExtension[] {
  const out: RawExtension[] = [];
  walkExtensions(cluster0, start, end, (r) => out.push(r));
  return out;
}

function checkBitmapsExtension(bm: BitmapsExtension, clusterBits: number): void {
  if (bm.reserved !== 0) throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: Reserved field is not zero");
  if (bm.nbBitmaps > MAX_BITMAPS) {
    throw new Qcow2Error(
      "INVALID_IMAGE",
      `bitmaps_ext: Image has ${bm.nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`,
    );
  }
  if (bm.nbBitmaps === 0) throw new Qcow2Error("INVALID_IMAGE", "found bitmaps extension with zero bitmaps");
  if (bm.bitmapDirectoryOffset % 2 ** clusterBits !== 0) {
    throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: invalid bitmap directory offset");
  }
  if (bm.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_BYTES) {
    throw new Qcow2Error(
      "INVALID_IMAGE",
      `bitmaps_ext: bitmap directory size (${bm.bitmapDirectorySize}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_BYTES})`,
    );
  }
}

function checkCryptoExtension(crypto: CryptoHeaderExtension, clusterBits: number): void {
  const clusterSize = 2 ** clusterBits;
  if (crypto.offset % clusterSize !== 0) {
    throw new Qcow2Error(
      "INVALID_IMAGE",
      `Encryption header offset '${crypto.offset}' is not a multiple of cluster size '${clusterSize}'`,
    );
  }
}

/**
 * The checks QEMU makes on already-decoded extensions (bitmaps fields when autoclear bit 0 is set, crypto
 * pointer only with LUKS and cluster aligned). `decodeExtensions` with a context already made them; this
 * is for extensions built by hand.
 */
export function checkExtensions(ext: HeaderExtensions, ctx: ExtensionContext): void {
  if (ext.bitmaps && ctx.autoclearFeatures & AUTOCLEAR_BITMAPS) checkBitmapsExtension(ext.bitmaps, ctx.clusterBits);
  if (ext.cryptoHeader) {
    if (ctx.cryptMethod !== CRYPT_LUKS) throw cryptoOnlyWithLuks();
    checkCryptoExtension(ext.cryptoHeader, ctx.clusterBits);
  }
}

function cryptoOnlyWithLuks(): Qcow2Error {
  return new Qcow2Error("INVALID_IMAGE", "CRYPTO header extension only expected with LUKS encryption method");
}

/** Decode one record into `ext`, with QEMU's per-type checks (those needing header fields only with `ctx`). */
function decodeExtension(ext: HeaderExtensions, { type, data }: RawExtension, ctx?: ExtensionContext): void {
  switch (type) {
    case EXT_BACKING_FORMAT:
      if (data.byteLength > MAX_BACKING_FORMAT_NAME) {
        throw new Qcow2Error(
          "INVALID_IMAGE",
          `ERROR: ext_backing_format: len=${data.byteLength} too large (>=${MAX_BACKING_FORMAT_NAME + 1})`,
        );
      }
      ext.backingFormat = decodePaddedText(data);
      return;
    case EXT_FEATURE_TABLE:
      ext.featureTable = decodeFeatureTable(data);
      return;
    case EXT_BITMAPS: {
      if (data.byteLength !== BITMAPS_EXT_BYTES) {
        throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: Invalid extension length");
      }
      const v = viewOf(data);
      const bm: BitmapsExtension = {
        nbBitmaps: v.getUint32(0),
        reserved: v.getUint32(4),
        bitmapDirectorySize: getU64(v, 8),
        bitmapDirectoryOffset: getU64(v, 16),
      };
      // Without autoclear bit 0 QEMU does not look inside: the bitmaps are stale and get dropped.
      if (ctx && ctx.autoclearFeatures & AUTOCLEAR_BITMAPS) checkBitmapsExtension(bm, ctx.clusterBits);
      ext.bitmaps = bm;
      return;
    }
    case EXT_CRYPTO_HEADER: {
      if (ctx && ctx.cryptMethod !== CRYPT_LUKS) throw cryptoOnlyWithLuks();
      if (data.byteLength !== CRYPTO_EXT_BYTES) {
        throw new Qcow2Error(
          "INVALID_IMAGE",
          `CRYPTO header extension size ${data.byteLength}, but expected size ${CRYPTO_EXT_BYTES}`,
        );
      }
      const v = viewOf(data);
      const crypto = { offset: getU64(v, 0), length: getU64(v, 8) };
      if (ctx) checkCryptoExtension(crypto, ctx.clusterBits);
      ext.cryptoHeader = crypto;
      return;
    }
    case EXT_DATA_FILE:
      ext.dataFile = decodePaddedText(data);
      return;
    default:
      ext.unknown.push({ type, data });
  }
}

/**
 * Decode raw records. With `ctx` (the image's header) the checks that depend on header fields are made
 * too, exactly as QEMU makes them while reading the extensions. Names (backing format, data file) end at
 * the first NUL byte, as QEMU reads them.
 */
export function decodeExtensions(raw: readonly RawExtension[], ctx?: ExtensionContext): HeaderExtensions {
  const ext: HeaderExtensions = { unknown: [] };
  for (const r of raw) decodeExtension(ext, r, ctx);
  return ext;
}

/**
 * Read and decode the extension area of cluster 0 the way QEMU walks it: record by record, stopping at the
 * first bad one. Returns what was decoded before the failure together with the error (QEMU uses the feature
 * table found up to that point to name unknown incompatible bits).
 */
export function scanExtensionArea(
  cluster0: Uint8Array,
  start: number,
  end: number,
  ctx: ExtensionContext,
): { extensions: HeaderExtensions; error?: Qcow2Error } {
  const extensions: HeaderExtensions = { unknown: [] };
  try {
    walkExtensions(cluster0, start, end, (r) => decodeExtension(extensions, r, ctx));
  } catch (e) {
    if (!(e instanceof Qcow2Error)) throw e;
    return { extensions, error: e };
  }
  return { extensions };
}

/**
 * Encode extensions in QEMU's order (backing format, data file, crypto, feature table, bitmaps, then the
 * unknown ones), with the end marker. `featureTable` is written as given. Unknown extensions keep the order
 * of `ext.unknown` (QEMU 7.2 itself writes them back in reverse order of reading).
 */
export function encodeExtensions(ext: HeaderExtensions): Uint8Array {
  const records: RawExtension[] = [];
  if (ext.backingFormat !== undefined) records.push({ type: EXT_BACKING_FORMAT, data: encodeText(ext.backingFormat) });
  if (ext.dataFile !== undefined) records.push({ type: EXT_DATA_FILE, data: encodeText(ext.dataFile) });
  if (ext.cryptoHeader) {
    const data = new Uint8Array(CRYPTO_EXT_BYTES);
    const v = viewOf(data);
    setU64(v, 0, ext.cryptoHeader.offset);
    setU64(v, 8, ext.cryptoHeader.length);
    records.push({ type: EXT_CRYPTO_HEADER, data });
  }
  if (ext.featureTable) records.push({ type: EXT_FEATURE_TABLE, data: encodeFeatureTable(ext.featureTable) });
  if (ext.bitmaps) {
    const data = new Uint8Array(BITMAPS_EXT_BYTES);
    const v = viewOf(data);
    v.setUint32(0, ext.bitmaps.nbBitmaps);
    v.setUint32(4, ext.bitmaps.reserved);
    setU64(v, 8, ext.bitmaps.bitmapDirectorySize);
    setU64(v, 16, ext.bitmaps.bitmapDirectoryOffset);
    records.push({ type: EXT_BITMAPS, data });
  }
  records.push(...ext.unknown);
  const total = records.reduce((n, r) => n + 8 + alignExtension(r.data.byteLength), 0) + 8;
  const out = new Uint8Array(total);
  const v = viewOf(out);
  let at = 0;
  for (const r of records) {
    v.setUint32(at, r.type);
    v.setUint32(at + 4, r.data.byteLength);
    out.set(r.data, at + 8);
    at += 8 + alignExtension(r.data.byteLength);
  }
  return out; // the trailing 8 zero bytes are the end marker
}
