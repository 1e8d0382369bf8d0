/**
 * qemu-img commit: copy what the upper layers of a backing chain hold into a lower image (the base), then
 * empty the top image (QEMU's bdrv_make_empty) unless asked not to.
 *
 */
import { CRYPT_LUKS } from "@qcowkit/spec";
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
  const l1Bytes = image.metadata.l1.size * 8;
  const l1Clusters = Math.ceil(l1Bytes / cs);
  const bitmaps = image.metadata.hdr.extensions.bitmaps?.nbBitmaps ?? 0;
  const blockEntries = (cs * 8) / 2 ** image.header.refcountOrder;
  if (image.version >= 3 && image.metadata.snapshots.length === 0 && bitmaps === 0 && 3 + l1Clusters <= blockEntries && !image.hasDataFile && image.header.cryptMethod !== CRYPT_LUKS) {
    await makeCompletelyEmpty(image, l1Clusters);
    return;
  }
  await image.lock.write(async () => {
    const step = 1024 * 1024 * 1024;
    for (let pos = 0; pos < image.virtualSize; pos += step) {
      await image.discardUnlocked(pos, Math.min(step, image.virtualSize - pos), true);
    }
    await image.metadata.flush();
  });
}

async function makeCompletelyEmpty(image: Qcow2Image, l1Clusters: number): Promise<void> {
  await image.flush();
  await image.lock.write(() => image.metadata.resetToEmpty(l1Clusters));
}
