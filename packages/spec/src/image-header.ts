/**
 * Cluster 0 as a whole: the fixed header, the header extensions and the backing file name.
 * `encodeImageHeader` lays it out as QEMU's qcow2_update_header does: header, extensions (backing format,
 * data file, crypto, feature table, bitmaps, preserved unknown ones), end marker, then the backing file name.
 */
import { decodeText, encodeText } from "./bytes";
import { MAX_BACKING_FILE_NAME } from "./constants";
import { Qcow2Error } from "./errors";
import {
  decodeExtensions,
  encodeExtensions,
  readRawExtensions,
  type HeaderExtensions,
} from "./extensions";
import { QEMU_FEATURE_TABLE } from "./feature-table";
import { decodeHeader, encodedHeaderLength, encodeHeader, type Qcow2Header } from "./header";

export interface ImageHeader {
  header: Qcow2Header;
  extensions: HeaderExtensions;
  /** The backing file name as stored (not resolved), when the image has one. */
  backingFile?: string;
}

/**
 * Decode cluster 0. `cluster0` holds the first cluster of the file (zero-padded if the file is shorter);
 * its length bounds the extension scan.
 */
export function decodeImageHeader(cluster0: Uint8Array): ImageHeader {
  const header = decodeHeader(cluster0);
  const clusterSize = 2 ** header.clusterBits;
  const extEnd = header.backingFileOffset !== 0 ? header.backingFileOffset : clusterSize;
  const raw = readRawExtensions(cluster0, header.headerLength, Math.min(extEnd, cluster0.byteLength));
  const extensions = decodeExtensions(raw);
  const img: ImageHeader = { header, extensions };
  if (header.backingFileOffset !== 0) {
    const len = header.backingFileSize;
    if (len > Math.min(MAX_BACKING_FILE_NAME, clusterSize - header.backingFileOffset)) {
      throw new Qcow2Error("INVALID_IMAGE", "Backing file name too long");
    }
    const start = header.backingFileOffset;
    img.backingFile = decodeText(cluster0.subarray(start, start + len));
  }
  return img;
}

/** The feature table QEMU writes: only for v3 images with clusters larger than 4 KiB. */
export function qemuWritesFeatureTable(header: Pick<Qcow2Header, "version" | "clusterBits">): boolean {
  return header.version >= 3 && header.clusterBits > 12;
}

/**
 * Encode cluster 0 (returns exactly one cluster). Sets backing_file_offset/size from `img.backingFile`,
 * and replaces the feature table with QEMU's own where QEMU would write one (`standardFeatureTable`,
 * default true). Throws NO_SPACE when everything does not fit in one cluster.
 */
export function encodeImageHeader(img: ImageHeader, options: { standardFeatureTable?: boolean } = {}): Uint8Array {
  const h = { ...img.header };
  const clusterSize = 2 ** h.clusterBits;
  const ext: HeaderExtensions = { ...img.extensions };
  if (options.standardFeatureTable ?? true) {
    if (qemuWritesFeatureTable(h)) ext.featureTable = [...QEMU_FEATURE_TABLE];
    else delete ext.featureTable;
  }
  if (h.version < 3) {
    // v2 has no room for extension-borne features beyond the backing format and unknown ones.
    delete ext.featureTable;
  }
  const headerLength = encodedHeaderLength(h);
  const extBytes = encodeExtensions(ext);
  const name = img.backingFile !== undefined ? encodeText(img.backingFile) : undefined;
  if (name && name.byteLength > MAX_BACKING_FILE_NAME) {
    throw new Qcow2Error("INVALID_ARGUMENT", "Backing file name too long");
  }
  const total = headerLength + extBytes.byteLength + (name?.byteLength ?? 0);
  if (total > clusterSize) {
    throw new Qcow2Error("NO_SPACE", "Header and extensions do not fit in the first cluster");
  }
  h.backingFileOffset = name ? headerLength + extBytes.byteLength : 0;
  h.backingFileSize = name ? name.byteLength : 0;
  const out = new Uint8Array(clusterSize);
  encodeHeader(h, out);
  out.set(extBytes, headerLength);
  if (name) out.set(name, h.backingFileOffset);
  return out;
}
