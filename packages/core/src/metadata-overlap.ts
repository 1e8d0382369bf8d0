/**
 * QEMU's qcow2_check_metadata_overlap with the default "cached" checks, for the writes check and repair make
 * outside the engine's write path: does [offset, offset+size) (widened to whole clusters) overlap the header,
 * the active L1 table, the refcount table, the snapshot table, a snapshot's L1 table, an active L2 table, a
 * refcount block or the bitmap directory? Metadata ranges are taken as they are recorded, not aligned.
 */
import { Qcow2Error, l1EntryL2Offset, viewOf, type ByteStore } from "@qcowkit/spec";
import type { EngineImage } from "./engine-image";
import type { SnapshotInfo } from "./snapshots";

export const OVERLAP_MAIN_HEADER = 0x01;
export const OVERLAP_ACTIVE_L1 = 0x02;
export const OVERLAP_ACTIVE_L2 = 0x04;
export const OVERLAP_REFCOUNT_TABLE = 0x08;
export const OVERLAP_REFCOUNT_BLOCK = 0x10;
export const OVERLAP_SNAPSHOT_TABLE = 0x20;
export const OVERLAP_INACTIVE_L1 = 0x40;
export const OVERLAP_INACTIVE_L2 = 0x80;
export const OVERLAP_BITMAP_DIRECTORY = 0x100;

/** QEMU's metadata_ol_names, by bit. */
const NAMES = [
  "qcow2_header",
  "active L1 table",
  "active L2 table",
  "refcount table",
  "refcount block",
  "snapshot table",
  "inactive L1 table",
  "inactive L2 table",
  "bitmap directory",
];

/**
 * The name of the first kind of metadata the range overlaps (QEMU's order), or undefined. `ignore` holds
 * OVERLAP_* bits not to test (for example the table being rewritten).
 */
export function metadataOverlap(
  image: EngineImage,
  ignore: number,
  offset: number,
  size: number,
  snapshots: readonly SnapshotInfo[] = image.metadata.snapshots,
  snapshotsSize = 0,
): string | undefined {
  if (size <= 0) return undefined;
  const check = ~ignore & ~OVERLAP_INACTIVE_L2;
  const cs = image.clusterSize;
  const h = image.header;
  if (check & OVERLAP_MAIN_HEADER && offset < cs) return NAMES[0];
  const start = Math.floor(offset / cs) * cs;
  const end = Math.ceil((offset + size) / cs) * cs;
  const overlaps = (o: number, n: number) => n > 0 && o < end && start < o + n;
  if (check & OVERLAP_ACTIVE_L1 && h.l1Size > 0 && overlaps(image.metadata.l1.hostOffset, image.metadata.l1.size * 8)) return NAMES[1];
  const rc = image.metadata.refcounts;
  if (check & OVERLAP_REFCOUNT_TABLE && overlaps(rc.reftableOffset, rc.reftableEntries * 8)) return NAMES[3];
  if (check & OVERLAP_SNAPSHOT_TABLE && overlaps(h.snapshotsOffset, snapshotsSize)) return NAMES[5];
  if (check & OVERLAP_INACTIVE_L1) {
    for (const s of snapshots) if (s.l1Size && overlaps(s.l1TableOffset, s.l1Size * 8)) return NAMES[6];
  }
  if (check & OVERLAP_ACTIVE_L2) {
    const l1 = viewOf(image.metadata.l1.bytes);
    for (let i = 0; i < image.metadata.l1.size; i++) {
      const l2 = l1EntryL2Offset(l1, i);
      if (l2 && overlaps(l2, cs)) return NAMES[2];
    }
  }
  if (check & OVERLAP_REFCOUNT_BLOCK) {
    const table = viewOf(rc.reftable);
    for (let i = 0; i < rc.reftableEntries; i++) {
      const block = table.getUint32(i * 8) * 2 ** 32 + ((table.getUint32(i * 8 + 4) & ~0x1ff) >>> 0);
      if (block && overlaps(block, cs)) return NAMES[4];
    }
  }
  const bm = image.metadata.hdr.extensions.bitmaps;
  if (check & OVERLAP_BITMAP_DIRECTORY && bm && h.autoclearFeatures & 1n) {
    if (overlaps(bm.bitmapDirectoryOffset, bm.bitmapDirectorySize)) return NAMES[8];
  }
  return undefined;
}

/** A new refcount block written over other metadata: QEMU refuses the write and marks the image corrupt. */
export function refblockOverlapCheck(image: EngineImage, hostOffset: number): void {
  const what = metadataOverlap(image, OVERLAP_REFCOUNT_BLOCK, hostOffset, image.clusterSize);
  if (what) throw new Qcow2Error("CORRUPT", `Preventing invalid write on metadata (overlaps with ${what})`);
}

/** QEMU's QCOW_MAX_L1_SIZE: a snapshot L1 table larger than this fails qcow2_validate_table with EFBIG. */
const MAX_L1_BYTES = 32 * 1024 * 1024;

/**
 * QEMU's inactive-L2 overlap check (`overlap-check.inactive-l2=on`, part of `overlap-check=all`) for a write
 * of [offset, offset+size) to the qcow2 file: every snapshot's L1 table is validated and read from `store`
 * (as QEMU reads it, on every write), and the write is refused when it covers a cluster one of them names.
 * A snapshot L1 table that fails validation fails the write itself (EFBIG or EINVAL, the image is not marked
 * corrupt); an overlap is a CORRUPT error (the engine marks the image corrupt).
 */
export async function inactiveL2Check(image: EngineImage, store: ByteStore, offset: number, size: number): Promise<void> {
  if (size <= 0) return;
  const cs = image.clusterSize;
  const start = Math.floor(offset / cs) * cs;
  const end = Math.ceil((offset + size) / cs) * cs;
  for (const s of image.metadata.snapshots) {
    if (s.l1Size > MAX_L1_BYTES / 8) throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table too large", { errno: "EFBIG" });
    if (s.l1TableOffset % cs !== 0) throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table offset not aligned", { errno: "EINVAL" });
    if (s.l1Size === 0) continue;
    const l1 = new Uint8Array(s.l1Size * 8);
    await store.read(s.l1TableOffset, l1);
    const view = viewOf(l1);
    for (let i = 0; i < s.l1Size; i++) {
      const l2 = l1EntryL2Offset(view, i);
      if (l2 && l2 < end && start < l2 + cs) {
        throw new Qcow2Error("CORRUPT", `Preventing invalid write on metadata (overlaps with ${NAMES[7]})`);
      }
    }
  }
}

/**
 * The qcow2 file seen through the inactive-L2 overlap check: writes (copies and zeroing included) are checked
 * first, except those within cluster 0 (QEMU writes the header unchecked). `image` is set once it is open.
 */
export function inactiveL2CheckedStore(inner: ByteStore): { store: ByteStore; bind(image: EngineImage): void } {
  let image: EngineImage | undefined;
  const check = (offset: number, size: number) =>
    image && !(offset + size <= image.clusterSize) ? inactiveL2Check(image, inner, offset, size) : Promise.resolve();
  const checked: Partial<ByteStore> = {
    write: async (offset, data) => {
      await check(offset, data.byteLength);
      await inner.write(offset, data);
    },
    writeZeroes: async (offset, length, unmap) => {
      await check(offset, length);
      await inner.writeZeroes(offset, length, unmap);
    },
    ...(inner.copyFrom
      ? {
          copyFrom: async (source: ByteStore, sourceOffset: number, offset: number, length: number, scan?: Uint8Array) => {
            await check(offset, length);
            await inner.copyFrom!(source, sourceOffset, offset, length, scan);
          },
        }
      : {}),
  };
  const store = new Proxy(inner, {
    get(target, prop) {
      if (Object.hasOwn(checked, prop)) return checked[prop as keyof ByteStore];
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return {
    store,
    bind(i) {
      image = i;
    },
  };
}
