/**
 * qemu-img commit: copy what the upper layers of a backing chain hold into a lower image (the base), then
 * empty the top image (QEMU's bdrv_make_empty) unless asked not to.
 *
 */
import { L1Table } from "@qcowkit/cluster";
import { Refcounts } from "@qcowkit/refcount";
import { CRYPT_LUKS, INCOMPAT_DIRTY, setRefcount, setReftableEntry, setU64, viewOf } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { throwIfAborted, type OperationOptions } from "./operation";
import { Qcow2Image } from "./qcow2-image";

const COPY_CHUNK = 2 * 1024 * 1024;

export interface CommitOptions extends OperationOptions {
  /** Guest bytes examined of all the layers' (each layer counts its size), after each 2 MiB chunk. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Copy the allocated ranges of `layers` (highest first, each opened without its backing file, so block
 * status at depth 0 is what the layer itself holds) into `base`, lowest layer first so that the highest
 * layer's data wins, as reading through the chain would give. Zeroed ranges are zeroed in the base.
 */
export async function commitLayers(layers: readonly BlockImage[], base: BlockImage, opts: CommitOptions = {}): Promise<void> {
  const size = layers.length > 0 ? layers[0]!.virtualSize : 0;
  if (base.virtualSize < size) await base.resize(size);
  const total = layers.reduce((n, l) => n + Math.min(size, l.virtualSize), 0);
  let done = 0;
  const buf = new Uint8Array(COPY_CHUNK);
  for (const layer of [...layers].reverse()) {
    const end = Math.min(size, layer.virtualSize);
    for (let pos = 0; pos < end; pos += COPY_CHUNK) {
      throwIfAborted(opts.signal);
      const n = Math.min(COPY_CHUNK, end - pos);
      for (const e of await layer.blockStatus(pos, n)) {
        if (!e.present || e.depth !== 0) continue;
        if (e.zero && !e.data) {
          await base.writeZeroes(e.offset, e.length, { unmap: true });
        } else {
          const chunk = buf.subarray(0, e.length);
          await layer.read(e.offset, chunk);
          await base.write(e.offset, chunk);
        }
      }
      done += n;
      opts.onProgress?.(done, total);
    }
  }
  await base.flush();
}

/**
 * Drop every guest cluster of a qcow2 image (qcow2_make_empty): when nothing but the active tables uses
 * the file (v3, no snapshots, no bitmaps, no data file), the file is rebuilt as header, refcount table, one
 * refcount block and an empty L1 table; otherwise every cluster is discarded. Close the image afterwards.
 */
export async function makeEmpty(image: Qcow2Image): Promise<void> {
  const cs = image.clusterSize;
  const l1Bytes = image.l1.size * 8;
  const l1Clusters = Math.ceil(l1Bytes / cs);
  const bitmaps = image.hdr.extensions.bitmaps?.nbBitmaps ?? 0;
  const blockEntries = (cs * 8) / 2 ** image.header.refcountOrder;
  if (image.version >= 3 && image.snapshots.length === 0 && bitmaps === 0 && 3 + l1Clusters <= blockEntries && !image.hasDataFile && image.header.cryptMethod !== CRYPT_LUKS) {
    await makeCompletelyEmpty(image, l1Clusters);
    return;
  }
  await image.lock.write(async () => {
    const step = 1024 * 1024 * 1024;
    for (let pos = 0; pos < image.virtualSize; pos += step) {
      await image.discardUnlocked(pos, Math.min(step, image.virtualSize - pos), true);
    }
    await image.flushUnlocked();
  });
}

async function makeCompletelyEmpty(image: Qcow2Image, l1Clusters: number): Promise<void> {
  const meta = image.meta;
  await image.flush();
  await image.lock.write(async () => {
    // Refcounts are about to be broken utterly: mark the image dirty first.
    const h = image.header;
    h.incompatibleFeatures |= INCOMPAT_DIRTY;
    const flags = new Uint8Array(8);
    viewOf(flags).setBigUint64(0, h.incompatibleFeatures);
    await meta.write(72, flags);
    await meta.flush();
    try {
      await rebuildEmpty(image, l1Clusters);
    } catch (e) {
      // The structures on disk and in memory no longer agree: the image is unusable (QEMU ejects it).
      image.eject();
      throw e;
    }
  });
}

/** The part of makeCompletelyEmpty that breaks the refcounts on its way (the image is marked dirty). */
async function rebuildEmpty(image: Qcow2Image, l1Clusters: number): Promise<void> {
  const cs = image.clusterSize;
  const meta = image.meta;
  const h = image.header;
  const flags = new Uint8Array(8);
  // QEMU's debug events of make_completely_empty mark each step (blkdebug rules fail them in 098).
  meta.debugEvent?.("l1_update");
  if (l1Clusters > 0) await meta.writeZeroes(image.l1.hostOffset, l1Clusters * cs);
  meta.debugEvent?.("empty_image_prepare");
  await meta.writeZeroes(cs, (2 + l1Clusters) * cs);
  // L1 table at cluster 3, refcount table (one cluster) at cluster 1: 20 bytes at offset 40.
  const loc = new Uint8Array(20);
  const lv = viewOf(loc);
  setU64(lv, 0, 3 * cs);
  setU64(lv, 8, cs);
  lv.setUint32(16, 1);
  meta.debugEvent?.("l1_update");
  meta.debugEvent?.("reftable_update");
  await meta.write(40, loc);
  await meta.flush();
  const entry = new Uint8Array(8);
  setReftableEntry(viewOf(entry), 0, 2 * cs);
  meta.debugEvent?.("refblock_alloc");
  await meta.write(cs, entry);
  await meta.flush();
  const block = new Uint8Array(cs);
  for (let c = 0; c < 3 + l1Clusters; c++) setRefcount(block, c, h.refcountOrder, 1);
  await meta.write(2 * cs, block);
  await meta.flush();
  h.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  viewOf(flags).setBigUint64(0, h.incompatibleFeatures);
  await meta.write(72, flags);
  await meta.flush();
  await meta.resize((3 + l1Clusters) * cs);
  h.l1TableOffset = 3 * cs;
  h.refcountTableOffset = cs;
  h.refcountTableClusters = 1;
  const l1 = new L1Table(3 * cs, image.l1.size);
  image.l1 = l1;
  image.map.l1 = l1;
  image.l2Cache.clear();
  image.refcounts = await Refcounts.load(meta, {
    clusterBits: image.clusterBits,
    refcountOrder: h.refcountOrder,
    reftableOffset: cs,
    reftableClusters: 1,
    readOnly: false,
    updateHeader: (offset, clusters) => image.writeReftableLocation(offset, clusters),
  });
  image.metadataChanged();
}
