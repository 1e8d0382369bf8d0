/**
 * Cluster 0 as a whole: the fixed header, the header extensions and the backing file name.
 * `encodeImageHeader` lays it out as QEMU's qcow2_update_header does: header, extensions (backing format,
 * data file, crypto, feature table, bitmaps, preserved unknown ones), end marker, then the backing file name.
 */
import { decodePaddedText, encodeText, zeroPadded } from "./bytes";
import { MAX_BACKING_FILE_NAME } from "./constants";
import { Qcow2Error } from "./errors";
import { encodeExtensions, scanExtensionArea, type HeaderExtensions } from "./extensions";
import { QEMU_FEATURE_TABLE } from "./feature-table";
import { decodeHeader, encodedHeaderLength, encodeHeader, type Qcow2Header } from "./header";

export interface ImageHeader {
  header: Qcow2Header;
  extensions: HeaderExtensions;
  /** The backing file name as stored (not resolved), when the image has one. */
  backingFile?: string;
}

/** Where the extension scan of cluster 0 ends: at the backing file name when there is one, else the cluster end. */
export function extensionAreaEnd(header: Pick<Qcow2Header, "backingFileOffset" | "clusterBits">): number {
  return header.backingFileOffset !== 0 ? header.backingFileOffset : 2 ** header.clusterBits;
}

/**
 * The backing file name of cluster 0 (undefined when there is none). Like QEMU, the name ends at the first
 * NUL byte and an empty name means no backing file. Throws "Backing file name too long" when the stored
 * length exceeds 1023 bytes or the end of cluster 0.
 */
export function decodeBackingFileName(
  cluster0: Uint8Array,
  header: Pick<Qcow2Header, "backingFileOffset" | "backingFileSize" | "clusterBits">,
): string | undefined {
  if (header.backingFileOffset === 0) return undefined;
  const len = header.backingFileSize;
  if (len > Math.min(MAX_BACKING_FILE_NAME, 2 ** header.clusterBits - header.backingFileOffset)) {
    throw new Qcow2Error("INVALID_IMAGE", "Backing file name too long");
  }
  const start = header.backingFileOffset;
  const bytes = new Uint8Array(len);
  bytes.set(cluster0.subarray(start, start + len));
  const name = decodePaddedText(bytes);
  return name === "" ? undefined : name;
}

/**
 * Decode cluster 0. `bytes` holds the first cluster of the file (bytes past its end read as zeros).
 * Makes every check QEMU makes while decoding (header fields it needs, each extension, the backing file
 * name); `validateImageHeader` makes the rest. `openImageHeader` does both in QEMU's exact order.
 */
export function decodeImageHeader(bytes: Uint8Array): ImageHeader {
  const header = decodeHeader(bytes);
  const cluster0 = zeroPadded(bytes, 2 ** header.clusterBits);
  const { extensions, error } = scanExtensionArea(cluster0, header.headerLength, extensionAreaEnd(header), header);
  if (error) throw error;
  const img: ImageHeader = { header, extensions };
  const backingFile = decodeBackingFileName(cluster0, header);
  if (backingFile !== undefined) img.backingFile = backingFile;
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
  const name = img.backingFile ? encodeText(img.backingFile) : undefined;
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
