/**
 * qemu-img measure for qcow2 and raw targets (QEMU 7.2's qcow2_measure and raw_measure): the file size
 * needed for a new image, either of a given virtual size or converted from a source image. Like QEMU, an
 * external data file is not taken into account (data is counted as if it lived in the qcow2 file).
 */
import { MAX_L1_TABLE_BYTES, Qcow2Error, decodeBitmapDirectory, encodeText, l1EntriesForSize } from "@qcowkit/spec";
import type { BlockImage, Preallocation } from "./block-image";
import { Qcow2Image } from "./qcow2-image";
import { luksAreaBytes, type LuksCreateOptions } from "./crypto/luks";

export interface MeasureTarget {
  format: "qcow2" | "raw";
  /** qcow2 target options (defaults as qemu-img create). */
  clusterSize?: number;
  refcountBits?: number;
  extendedL2?: boolean;
  version?: 2 | 3;
  preallocation?: Preallocation;
  /**
   * The target gets a backing file: QEMU cannot tell what of the source it shares, so every cluster of the
   * source counts as written.
   */
  backingFile?: boolean;
  /** qcow2 with LUKS encryption: the LUKS area (clusters) is added, as QEMU adds it. */
  luks?: LuksCreateOptions;
}

export interface MeasureResult {
  required: number;
  fullyAllocated: number;
  /** Present when both the source and the target keep persistent bitmaps. */
  bitmaps?: number;
}

const roundUp = (n: number, a: number) => Math.ceil(n / a) * a;

/** QEMU's qcow2_calc_prealloc_size: the file size of a fully preallocated image of `size` bytes. */
export function qcow2PreallocatedSize(size: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const aligned = roundUp(size, clusterSize);
  const l2EntrySize = extendedL2 ? 16 : 8;
  let meta = clusterSize;
  let l2Entries = aligned / clusterSize;
  l2Entries = roundUp(l2Entries, clusterSize / l2EntrySize);
  meta += l2Entries * l2EntrySize;
  let l1Entries = (l2Entries * l2EntrySize) / clusterSize;
  l1Entries = roundUp(l1Entries, clusterSize / 8);
  meta += l1Entries * 8;
  return meta + refcountMetadataClusters((meta + aligned) / clusterSize, clusterSize, refcountOrder) * clusterSize + aligned;
}

/** Refcount blocks plus table clusters needed to count `clusters` clusters and themselves. */
function refcountMetadataClusters(clusters: number, clusterSize: number, refcountOrder: number): number {
  const perBlock = (clusterSize * 8) / 2 ** refcountOrder;
  const perTableCluster = clusterSize / 8;
  let blocks = 0;
  let table = 0;
  let last = -1;
  let n = 0;
  while (n !== last) {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
  }
  return blocks + table;
}

/** Bytes of the persistent bitmaps of `source` when copied into an image with `clusterSize` clusters. */
export async function persistentBitmapsSize(source: Qcow2Image, clusterSize: number): Promise<number> {
  const ext = source.metadata.hdr.extensions.bitmaps;
  if (!ext || ext.nbBitmaps === 0 || (source.header.autoclearFeatures & 1n) === 0n) return 0;
  const dir = new Uint8Array(ext.bitmapDirectorySize);
  await source.metadata.meta.read(ext.bitmapDirectoryOffset, dir);
  let total = 0;
  let dirBytes = 0;
  for (const e of decodeBitmapDirectory(dir, ext.nbBitmaps)) {
    const bits = Math.ceil(source.virtualSize / 2 ** e.granularityBits);
    const clusters = Math.ceil(Math.ceil(bits / 8) / clusterSize);
    total += clusters * clusterSize + roundUp(clusters * 8, clusterSize);
    dirBytes += (24 + encodeText(e.name).byteLength + 7) & ~7;
  }
  return total + roundUp(dirBytes, clusterSize);
}

/** Data bytes a conversion of `source` (read through its backing chain) would write, cluster-rounded. */
async function requiredData(source: BlockImage, clusterSize: number): Promise<number> {
  const size = source.virtualSize;
  let required = 0;
  let offset = 0;
  while (offset < size) {
    for (const e of await source.blockStatus(offset, Math.min(1024 * 1024 * 1024, size - offset))) {
      const end = e.offset + e.length;
      if (end <= offset) continue;
      let n = end - offset;
      if (!e.zero && e.present && e.data) {
        n = roundUp(offset + n, clusterSize) - offset;
        required += (offset % clusterSize) + n;
      }
      offset += n;
    }
  }
  return required;
}

/** qemu-img measure: `size` (bytes, for --size) or a `source` image. */
export async function measureImage(target: MeasureTarget, input: { size?: number; source?: BlockImage }): Promise<MeasureResult> {
  if (target.format === "raw") {
    const required = input.source ? input.source.virtualSize : roundUp(input.size ?? 0, 512);
    return { required, fullyAllocated: required };
  }
  const clusterSize = target.clusterSize ?? 65536;
  const refcountBits = target.refcountBits ?? 16;
  const version = target.version ?? 3;
  const extendedL2 = target.extendedL2 ?? false;
  if (!Number.isInteger(Math.log2(refcountBits)) || refcountBits > 64) {
    throw new Qcow2Error("INVALID_ARGUMENT", "Refcount width must be a power of two and may not exceed 64 bits");
  }
  let virtualSize: number;
  let required: number;
  if (input.source) {
    virtualSize = roundUp(input.source.virtualSize, clusterSize);
    required = target.backingFile ? virtualSize : await requiredData(input.source, clusterSize);
  } else {
    virtualSize = roundUp(input.size ?? 0, clusterSize);
    required = 0;
  }
  // QEMU's check of the virtual size: its L1 table must fit QCOW_MAX_L1_SIZE.
  if (l1EntriesForSize(virtualSize, Math.log2(clusterSize), extendedL2) * 8 > MAX_L1_TABLE_BYTES) {
    throw new Qcow2Error("INVALID_ARGUMENT", "The image size is too large (try using a larger cluster size)");
  }
  const prealloc = target.preallocation ?? "off";
  if (prealloc === "full" || prealloc === "falloc") required = virtualSize;
  const luksBytes = target.luks ? roundUp(luksAreaBytes(target.luks), clusterSize) : 0;
  const fullyAllocated = qcow2PreallocatedSize(virtualSize, clusterSize, Math.log2(refcountBits), extendedL2) + luksBytes;
  const result: MeasureResult = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  if (version >= 3 && input.source instanceof Qcow2Image && input.source.version >= 3) {
    result.bitmaps = await persistentBitmapsSize(input.source, clusterSize);
  }
  return result;
}
