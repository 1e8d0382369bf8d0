/**
 * The allocation map as qemu-img map (QEMU 7.2) reports it: for each run of guest bytes, the first layer of
 * the backing chain that allocates it (`depth`), whether it is allocated at all (`present`), reads as zeros,
 * holds data, and where (host `offset` in `filename`).
 *
 * On top of the engine's block status this adds what QEMU's generic block layer adds from the files
 * themselves (when the store can tell holes from data):
 * - a raw image reports holes of its file as zero (not data) extents;
 * - a qcow2 image whose clusters were preallocated without being written ("metadata" preallocation, detected
 *   as QEMU detects it: many more clusters referenced than the file has allocated) reports data clusters
 *   that lie in holes of their file as zero too.
 */
import type { BlockImage, BlockStatusExtent } from "./block-image";
import { Qcow2Image } from "./qcow2-image";
import { RawImage } from "./raw-image";
import type { ByteStore } from "@qcowkit/spec";

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset, when QEMU knows one. */
  offset?: number;
  /** The file holding the data at `offset`. */
  filename?: string;
  /** Compressed clusters (no offset; qemu-img map's human output refuses them). */
  compressed?: boolean;
}

/** The layers of a chain: the image, its backing image, ... */
export function chainLayers(image: BlockImage): BlockImage[] {
  const out: BlockImage[] = [];
  let cur: BlockImage | null = image;
  while (cur) {
    out.push(cur);
    cur = cur instanceof Qcow2Image ? cur.backing : null;
  }
  return out;
}

const preallocationDetected = new WeakMap<Qcow2Image, boolean>();

/**
 * QEMU's qcow2_detect_metadata_preallocation: true when the qcow2 file has many more clusters with a
 * non-zero refcount than clusters actually allocated on disk.
 */
export async function detectMetadataPreallocation(image: Qcow2Image): Promise<boolean> {
  const known = preallocationDetected.get(image);
  if (known !== undefined) return known;
  let result = false;
  const allocated = image.meta.allocatedSize ? await image.meta.allocatedSize().catch(() => undefined) : undefined;
  if (allocated !== undefined && image.meta.allocationStatus) {
    const cs = image.clusterSize;
    const fileLength = await image.meta.size();
    const realClusters = Math.floor(allocated / cs);
    const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
    const endCluster = Math.ceil(fileLength / cs);
    let count = 0;
    for (let i = 0; i < endCluster && count < threshold; i++) {
      if ((await image.refcounts.get(i)) !== 0) count++;
    }
    result = count >= threshold;
  }
  preallocationDetected.set(image, result);
  return result;
}

function storeOf(layer: BlockImage): ByteStore | undefined {
  if (layer instanceof RawImage) return layer.store;
  if (layer instanceof Qcow2Image) return layer.data;
  return undefined;
}

/** Split `e` (which has a host offset) by the allocation of `store`: holes become zero. */
async function refineByAllocation(e: MapEntry, store: ByteStore, holeIsData: boolean): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  let guest = e.start;
  let host = e.offset!;
  const end = e.start + e.length;
  while (guest < end) {
    const status = await store.allocationStatus!(host, end - guest);
    if (status.length === 0) break;
    for (const s of status) {
      const len = Math.min(s.length, end - guest);
      if (len <= 0) break;
      out.push({ ...e, start: guest, length: len, offset: host, zero: !s.data, data: s.data || holeIsData });
      guest += len;
      host += len;
    }
  }
  if (guest < end) out.push({ ...e, start: guest, length: end - guest, offset: host });
  return out;
}

function toEntry(x: BlockStatusExtent): MapEntry {
  const e: MapEntry = {
    start: x.offset,
    length: x.length,
    depth: x.depth,
    present: x.present,
    zero: x.zero,
    data: x.data,
  };
  if (x.hostOffset !== undefined) e.offset = x.hostOffset;
  if (x.hostOffset !== undefined && x.hostFile !== undefined) e.filename = x.hostFile;
  if (x.compressed) e.compressed = true;
  return e;
}

/** The map entries of [start, start + length), not merged across calls (see `entryMergeable`). */
export async function mapExtents(image: BlockImage, start: number, length: number): Promise<MapEntry[]> {
  if (length <= 0) return [];
  const layers = chainLayers(image);
  const out: MapEntry[] = [];
  for (const x of await image.blockStatus(start, length)) {
    const e = toEntry(x);
    const layer = layers[e.depth];
    const store = layer ? storeOf(layer) : undefined;
    if (!store?.allocationStatus || e.offset === undefined || !e.data || e.zero) {
      out.push(e);
      continue;
    }
    if (layer instanceof RawImage) {
      out.push(...(await refineByAllocation(e, store, false)));
    } else if (layer instanceof Qcow2Image && (await detectMetadataPreallocation(layer))) {
      out.push(...(await refineByAllocation(e, store, true)));
    } else {
      out.push(e);
    }
  }
  return out;
}

/** qemu-img map's merge rule for two consecutive entries. */
export function entryMergeable(cur: MapEntry, next: MapEntry): boolean {
  if (cur.length === 0) return false;
  if (
    cur.zero !== next.zero ||
    cur.data !== next.data ||
    cur.depth !== next.depth ||
    cur.present !== next.present ||
    (cur.filename === undefined) !== (next.filename === undefined) ||
    (cur.offset === undefined) !== (next.offset === undefined)
  ) {
    return false;
  }
  if (cur.filename !== undefined && cur.filename !== next.filename) return false;
  if (cur.offset !== undefined && cur.offset + cur.length !== next.offset) return false;
  return true;
}
