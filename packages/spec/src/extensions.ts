/**
 * Header extensions (docs/interop/qcow2.txt, "Header extensions"): after the header, each extension is
 *   u32 type, u32 length, `length` bytes of data, zero padding to a multiple of 8.
 * Type 0 ends the list. The scan area ends at backing_file_offset when set, else at the end of cluster 0.
 */
import { decodeText, encodeText, getU64, setU64, viewOf } from "./bytes";
import {
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  MAX_BACKING_FORMAT_NAME,
} from "./constants";
import { Qcow2Error } from "./errors";
import { decodeFeatureTable, encodeFeatureTable, type FeatureName } from "./feature-table";

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

/** Every extension of an image, decoded where known; unknown ones kept byte for byte, in order. */
export interface HeaderExtensions {
  backingFormat?: string;
  dataFile?: string;
  featureTable?: FeatureName[];
  bitmaps?: BitmapsExtension;
  cryptoHeader?: CryptoHeaderExtension;
  unknown: RawExtension[];
}

export function alignExtension(length: number): number {
  return (length + 7) & ~7;
}

/** Split the extension area into raw (type, data) records, with QEMU's errors for malformed ones. */
export function readRawExtensions(cluster0: Uint8Array, start: number, end: number): RawExtension[] {
  const v = viewOf(cluster0);
  const out: RawExtension[] = [];
  let at = start;
  const limit = Math.min(end, cluster0.byteLength);
  while (at < limit) {
    if (at + 8 > limit) throw new Qcow2Error("INVALID_IMAGE", "Header extension too large");
    const type = v.getUint32(at);
    const length = v.getUint32(at + 4);
    at += 8;
    if (type === EXT_END) break;
    if (length > limit - at) throw new Qcow2Error("INVALID_IMAGE", "Header extension too large");
    out.push({ type, data: cluster0.slice(at, at + length) });
    at += alignExtension(length);
  }
  return out;
}

export function decodeExtensions(raw: readonly RawExtension[]): HeaderExtensions {
  const ext: HeaderExtensions = { unknown: [] };
  for (const { type, data } of raw) {
    switch (type) {
      case EXT_BACKING_FORMAT:
        if (data.byteLength > MAX_BACKING_FORMAT_NAME) {
          throw new Qcow2Error(
            "INVALID_IMAGE",
            `ERROR: ext_backing_format: len=${data.byteLength} too large (>=${MAX_BACKING_FORMAT_NAME + 1})`,
          );
        }
        ext.backingFormat = decodeText(data);
        break;
      case EXT_FEATURE_TABLE:
        ext.featureTable = decodeFeatureTable(data);
        break;
      case EXT_BITMAPS: {
        if (data.byteLength !== 24) throw new Qcow2Error("INVALID_IMAGE", "bitmaps_ext: Invalid extension length");
        const v = viewOf(data);
        ext.bitmaps = {
          nbBitmaps: v.getUint32(0),
          reserved: v.getUint32(4),
          bitmapDirectorySize: getU64(v, 8),
          bitmapDirectoryOffset: getU64(v, 16),
        };
        break;
      }
      case EXT_CRYPTO_HEADER: {
        if (data.byteLength !== 16) {
          throw new Qcow2Error(
            "INVALID_IMAGE",
            `CRYPTO header extension size ${data.byteLength}, but expected size 16`,
          );
        }
        const v = viewOf(data);
        ext.cryptoHeader = { offset: getU64(v, 0), length: getU64(v, 8) };
        break;
      }
      case EXT_DATA_FILE:
        ext.dataFile = decodeText(data);
        break;
      default:
        ext.unknown.push({ type, data });
    }
  }
  return ext;
}

/** Encode extensions in QEMU's order, with the end marker. `featureTable` is written as given. */
export function encodeExtensions(ext: HeaderExtensions): Uint8Array {
  const records: RawExtension[] = [];
  if (ext.backingFormat !== undefined) records.push({ type: EXT_BACKING_FORMAT, data: encodeText(ext.backingFormat) });
  if (ext.dataFile !== undefined) records.push({ type: EXT_DATA_FILE, data: encodeText(ext.dataFile) });
  if (ext.cryptoHeader) {
    const data = new Uint8Array(16);
    const v = viewOf(data);
    setU64(v, 0, ext.cryptoHeader.offset);
    setU64(v, 8, ext.cryptoHeader.length);
    records.push({ type: EXT_CRYPTO_HEADER, data });
  }
  if (ext.featureTable) records.push({ type: EXT_FEATURE_TABLE, data: encodeFeatureTable(ext.featureTable) });
  if (ext.bitmaps) {
    const data = new Uint8Array(24);
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
