/**
 * QEMU's ImageInfo (qemu-img info, QAPI `ImageInfo` of QEMU 7.2) for an open image: the fields QEMU
 * reports and when it reports them. Keys are QAPI's names and objects are filled in QAPI schema order, so
 * a frontend can print them as QEMU does. Works on images opened with `noIo` (no data file, no backing).
 */
import { imageDisplayName, resolveBackingFileName } from "@qcowkit/datafile";
import {
  AUTOCLEAR_BITMAPS,
  BITMAP_FLAG_AUTO,
  BITMAP_FLAG_IN_USE,
  decodeBitmapDirectory,
  type ByteStore,
} from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import type { EncryptionInfo } from "./crypto/image-encryption";
import { NbdImage } from "./nbd/nbd-image";
import { isNbdFilename } from "./nbd/uri";
import { RemoteStore } from "@qcowkit/datafile";
import { Qcow2Image } from "./qcow2-image";
import { RawImage } from "./raw-image";
import { LuksImage } from "./luks-image";
import type { LuksInfo } from "./crypto/luks";

export interface Qcow2BitmapInfo {
  name: string;
  granularity: number;
  /** "in-use", "auto" (in that order, when set). */
  flags: string[];
}

export interface ImageInfoSpecificQcow2 {
  compat: "0.10" | "1.1";
  /** The data file name stored in the image (absent when none is stored). */
  "data-file"?: string;
  /** Present only for images with an external data file. */
  "data-file-raw"?: boolean;
  "extended-l2"?: boolean;
  "lazy-refcounts"?: boolean;
  corrupt?: boolean;
  "refcount-bits": number;
  /** Encrypted images: the format, and for LUKS the volume's details. */
  encrypt?: EncryptionInfo;
  bitmaps?: Qcow2BitmapInfo[];
  "compression-type"?: "zlib" | "zstd";
}

export interface SnapshotInfoQapi {
  id: string;
  name: string;
  "vm-state-size": number;
  "date-sec": number;
  "date-nsec": number;
  "vm-clock-sec": number;
  "vm-clock-nsec": number;
  /** Absent when not recorded. */
  icount?: number;
}

export interface ImageInfo {
  filename: string;
  format: string;
  "dirty-flag"?: boolean;
  /** Bytes allocated for the image file (the qcow2 file only, never the data file). */
  "actual-size"?: number;
  "virtual-size": number;
  "cluster-size"?: number;
  encrypted?: boolean;
  "backing-filename"?: string;
  /** The backing file name resolved against the image's directory. */
  "full-backing-filename"?: string;
  "backing-filename-format"?: string;
  snapshots?: SnapshotInfoQapi[];
  "backing-image"?: ImageInfo;
  "format-specific"?: { type: "qcow2"; data: ImageInfoSpecificQcow2 } | { type: "luks"; data: LuksInfo };
}

/** Name `image` was opened as (defaults to its own filename). */
export interface ImageInfoOptions {
  filename?: string;
}

async function allocatedBytes(store: ByteStore): Promise<number | undefined> {
  if (!store.allocatedSize) return undefined;
  try {
    return await store.allocatedSize();
  } catch {
    return undefined;
  }
}

/** The persistent bitmaps QEMU lists (none when the bitmaps autoclear bit is clear). */
export async function readBitmapInfo(image: Qcow2Image): Promise<Qcow2BitmapInfo[] | undefined> {
  const ext = image.metadata.hdr.extensions.bitmaps;
  if (!ext || ext.nbBitmaps === 0 || (image.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return undefined;
  const dir = new Uint8Array(ext.bitmapDirectorySize);
  await image.metadata.meta.read(ext.bitmapDirectoryOffset, dir);
  return decodeBitmapDirectory(dir, ext.nbBitmaps).map((e) => {
    const flags: string[] = [];
    if (e.flags & BITMAP_FLAG_IN_USE) flags.push("in-use");
    if (e.flags & BITMAP_FLAG_AUTO) flags.push("auto");
    return { name: e.name, granularity: 2 ** e.granularityBits, flags };
  });
}

function snapshotInfo(image: Qcow2Image): SnapshotInfoQapi[] | undefined {
  if (image.metadata.snapshots.length === 0) return undefined;
  return image.metadata.snapshots.map((s) => {
    const icount = s.icount === undefined ? undefined : BigInt.asUintN(64, s.icount);
    const out: SnapshotInfoQapi = {
      id: s.id,
      name: s.name,
      "vm-state-size": s.vmStateSize,
      "date-sec": s.dateSeconds,
      "date-nsec": s.dateNanoseconds,
      "vm-clock-sec": Math.floor(s.vmClockNanoseconds / 1e9),
      "vm-clock-nsec": s.vmClockNanoseconds % 1e9,
    };
    if (icount !== undefined && icount !== (1n << 64n) - 1n) out.icount = Number(BigInt.asIntN(64, icount));
    return out;
  });
}

/** The format-specific part of a qcow2 image's info. */
export async function qcow2SpecificInfo(image: Qcow2Image): Promise<ImageInfoSpecificQcow2> {
  const refcountBits = 2 ** image.header.refcountOrder;
  if (image.version === 2) {
    const v2: ImageInfoSpecificQcow2 = { compat: "0.10", "refcount-bits": refcountBits };
    if (image.encryption) v2.encrypt = image.encryption.info();
    v2["compression-type"] = image.compressionType;
    return v2;
  }
  const data = { compat: "1.1" } as ImageInfoSpecificQcow2;
  if (image.dataFile !== undefined) data["data-file"] = image.dataFile;
  if (image.hasDataFile) data["data-file-raw"] = image.dataFileRaw;
  data["extended-l2"] = image.extendedL2;
  data["lazy-refcounts"] = image.lazyRefcounts;
  data.corrupt = image.isCorrupt;
  data["refcount-bits"] = refcountBits;
  if (image.encryption) data.encrypt = image.encryption.info();
  const bitmaps = await readBitmapInfo(image);
  if (bitmaps) data.bitmaps = bitmaps;
  data["compression-type"] = image.compressionType;
  return data;
}

/** QEMU's ImageInfo of one image (the backing chain is the caller's: see `backing-image`). */
export async function imageInfo(image: BlockImage, opts: ImageInfoOptions = {}): Promise<ImageInfo> {
  // An NBD export is shown by QEMU's canonical name, however it was given.
  const filename = opts.filename !== undefined && !isNbdFilename(opts.filename) ? imageDisplayName(opts.filename) : image.filename;
  const info: ImageInfo = { filename, format: image.format } as ImageInfo;
  if (image instanceof Qcow2Image) {
    info["dirty-flag"] = image.isDirty;
    const actual = await allocatedBytes(image.metadata.meta);
    if (actual !== undefined) info["actual-size"] = actual;
    info["virtual-size"] = image.virtualSize;
    info["cluster-size"] = image.clusterSize;
    if (image.encryption) info.encrypted = true;
    const backing = image.backingFile;
    if (backing !== undefined) {
      info["backing-filename"] = backing;
      let full: string | undefined;
      try {
        // A json: name cannot give the backing file's directory: the image's own file can, unless the image
        // sits on a node with no single file (a quorum), when it is "" (QEMU's bdrv_dirname).
        const resolved = resolveBackingFileName(filename.startsWith("json:") ? image.filename : filename, backing);
        full = resolved?.path !== undefined && resolved.protocol === undefined ? resolved.path : backing;
      } catch {
        full = undefined;
      }
      if (full !== undefined) info["full-backing-filename"] = full;
      if (image.backingFormat !== undefined) info["backing-filename-format"] = image.backingFormat;
    }
    const snaps = snapshotInfo(image);
    if (snaps) info.snapshots = snaps;
    info["format-specific"] = { type: "qcow2", data: await qcow2SpecificInfo(image) };
    return info;
  }
  // QEMU reports no dirty flag for an NBD export or an HTTP(S) object (the protocols have none to give).
  if (!(image instanceof NbdImage) && !(image instanceof RawImage && image.store instanceof RemoteStore)) info["dirty-flag"] = false;
  if (image instanceof RawImage || image instanceof LuksImage) {
    const actual = await allocatedBytes(image.store);
    if (actual !== undefined) info["actual-size"] = actual;
  }
  info["virtual-size"] = image.virtualSize;
  if (image instanceof LuksImage) {
    info.encrypted = true;
    info["format-specific"] = { type: "luks", data: image.info() };
  }
  return info;
}
