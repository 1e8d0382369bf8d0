/**
 * Internal snapshots (qemu-img snapshot -c/-a/-d/-l) as QEMU 7.2's qcow2-snapshot.c does them:
 * - create: copy the active L1 table, add one reference to every L2 table and data cluster it reaches,
 *   recompute the COPIED flags of the active tables, then publish the new snapshot table;
 * - apply (goto): reference the snapshot's tables, overwrite the active L1 table with the snapshot's,
 *   drop the references of the old active tables, recompute COPIED;
 * - delete: publish the table without the entry, drop the references of the snapshot's tables and L1 copy,
 *   recompute COPIED.
 * Crash safety: reference increases and the COPIED changes are durable before anything points to the new
 * tables (snapshot table before the header that names it; the header switch is one 12-byte write), and
 * references are dropped only after what referenced them is gone on disk.
 * Images with an external data file have no internal snapshots: every operation is refused with ENOTSUP.
 */
import { L1Table, readL2Entry, referencedClusters, setL2Copied } from "@qcowkit/cluster";
import {
  Qcow2Error,
  isQcow2Error,
  encodeSnapshotTable,
  l1EntryL2Offset,
  MAX_SNAPSHOTS,
  MAX_SNAPSHOT_TABLE_BYTES,
  snapshotEntryBytes,
  viewOf,
  type SnapshotEntry,
} from "@qcowkit/spec";
import type { EngineImage } from "./engine-image";
import type { SnapshotInfo } from "./snapshots";

export interface NewSnapshotOptions {
  /** Seconds since the epoch (default: now). */
  dateSeconds?: number;
  /** Nanoseconds of the date (default: the current microseconds x 1000, as qemu-img). */
  dateNanoseconds?: number;
  vmClockNanoseconds?: number;
  /** qemu-img stores 0. */
  icount?: bigint;
}

const MAX_L1_ENTRIES = (32 * 1024 * 1024) / 8;

function notSupported(): Qcow2Error {
  return new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
}

function refuseDataFile(image: EngineImage): void {
  if (image.hasDataFile) throw notSupported();
}

/** The snapshots of an image (none for data-file images, whose list QEMU refuses). */
export function listSnapshots(image: EngineImage): SnapshotInfo[] {
  return image.hasDataFile ? [] : [...image.metadata.snapshots];
}

/** Index of the snapshot whose id is `idOrName`, else the first whose name is (QEMU's goto lookup); -1. */
export function findSnapshot(image: EngineImage, idOrName: string): number {
  const byId = image.metadata.snapshots.findIndex((s) => s.id === idOrName);
  return byId >= 0 ? byId : image.metadata.snapshots.findIndex((s) => s.name === idOrName);
}

/** The first snapshot matching both given fields (find_snapshot_by_id_and_name); -1. */
export function findSnapshotByIdAndName(image: EngineImage, id: string | undefined, name: string | undefined): number {
  return image.metadata.snapshots.findIndex((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name));
}

/** QEMU's qcow2_validate_table for a snapshot's L1 table (size, then offset). */
export function validateSnapshotL1(image: EngineImage, sn: SnapshotEntry): void {
  if (sn.l1Size > MAX_L1_ENTRIES) {
    throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table too large", { errno: "EFBIG" });
  }
  if (sn.l1TableOffset % image.clusterSize !== 0) {
    throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table offset invalid", { errno: "EINVAL" });
  }
}

async function readL1(image: EngineImage, offset: number, entries: number, padTo = entries): Promise<Uint8Array> {
  const bytes = new Uint8Array(Math.max(entries, padTo) * 8);
  if (entries > 0) await image.metadata.meta.read(offset, bytes.subarray(0, entries * 8));
  return bytes;
}

/** The host clusters L2 entry `index` of `view` references: [first cluster, count], or undefined. */
function entryClusters(image: EngineImage, view: DataView, index: number, qemuCompressed: boolean): [number, number] | undefined {
  const e = readL2Entry(view, index, image.metadata.map);
  const clusters = referencedClusters(e, image.clusterSize);
  // QEMU's snapshot refcount update counts the first host cluster of a compressed cluster only.
  if (clusters && e.kind === "compressed" && qemuCompressed) return [clusters[0], 1];
  return clusters;
}

/**
 * Add one reference (or queue the removal of one) to every L2 table an L1 table reaches and to every host
 * cluster those tables map (qcow2_update_snapshot_refcount with addend +1/-1). Increases are applied at
 * once and recorded in `applied` (for rollback); decreases are deferred until the caller's write-back.
 */
async function referenceTree(
  image: EngineImage,
  l1: Uint8Array,
  l1Entries: number,
  addend: 1 | -1,
  applied: Array<[number, number]>,
): Promise<void> {
  const cs = image.clusterSize;
  const v = viewOf(l1);
  const entries = image.metadata.map.l2Entries;
  for (let i = 0; i < l1Entries; i++) {
    const l2Offset = l1EntryL2Offset(v, i);
    if (l2Offset === 0) continue;
    if (l2Offset % cs !== 0) throw new Qcow2Error("CORRUPT", `L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index: 0x${i.toString(16)})`);
    if (!image.hasDataFile) {
      const t = await image.metadata.l2Cache.get(l2Offset);
      for (let j = 0; j < entries; j++) {
        const c = entryClusters(image, t.view, j, true);
        if (!c) continue;
        await change(image, c[0], c[1], addend, applied);
      }
    }
    await change(image, l2Offset / cs, 1, addend, applied);
  }
}

async function change(image: EngineImage, cluster: number, count: number, addend: 1 | -1, applied: Array<[number, number]>): Promise<void> {
  if (addend < 0) {
    image.metadata.refcounts.deferFree(cluster, count, true);
    return;
  }
  // A referenced cluster no refcount block covers (a damaged L2 entry): QEMU's update_refcount creates the
  // block and then fails with the EAGAIN meant for allocations; we fail the same, writing nothing.
  // (A table that would have to grow past QEMU's 8 MiB limit fails with EFBIG first.)
  const missing = image.metadata.refcounts.firstMissingBlock(cluster, count);
  if (missing >= 0) {
    const blocksUsed = Math.ceil(cluster / image.metadata.refcounts.blockEntries);
    if (missing >= image.metadata.refcounts.reftableEntries && blocksUsed > (8 * 1024 * 1024) / 8) throw tooLarge();
    throw new Qcow2Error("IO_ERROR", "Resource temporarily unavailable", { errno: "EAGAIN" });
  }
  try {
    await image.metadata.refcounts.update(cluster, count, 1);
  } catch (e) {
    // QEMU's update_refcount answers EINVAL when a refcount would exceed the width.
    if (e instanceof Qcow2Error && e.errno === "ERANGE") throw new Qcow2Error("INVALID_ARGUMENT", "Invalid argument", { errno: "EINVAL", cause: e });
    throw e;
  }
  applied.push([cluster, count]);
}

async function rollback(image: EngineImage, applied: Array<[number, number]>): Promise<void> {
  for (const [c, n] of applied.reverse()) await image.metadata.refcounts.update(c, n, -1);
}

/**
 * Set COPIED on the active L1 and L2 entries exactly where the referenced cluster's refcount is 1
 * (qcow2_update_snapshot_refcount with addend 0). Changes stay in the caches for the caller's write-back.
 */
export async function recomputeCopiedFlags(image: EngineImage): Promise<void> {
  const cs = image.clusterSize;
  const l1 = image.metadata.l1;
  const entries = image.metadata.map.l2Entries;
  for (let i = 0; i < l1.size; i++) {
    const l2Offset = l1.l2Offset(i);
    if (l2Offset === 0) continue;
    if (!image.hasDataFile) {
      const t = await image.metadata.l2Cache.get(l2Offset);
      let dirty = false;
      for (let j = 0; j < entries; j++) {
        const e = readL2Entry(t.view, j, image.metadata.map);
        if ((e.kind !== "normal" && e.kind !== "zero") || e.hostOffset === 0) continue;
        const want = (await image.metadata.refcounts.get(Math.floor(e.hostOffset / cs))) === 1;
        if (want === e.copied) continue;
        setL2Copied(t.view, j, image.metadata.map, want);
        dirty = true;
      }
      if (dirty) image.metadata.l2Cache.markDirty(t);
    }
    const want = (await image.metadata.refcounts.get(l2Offset / cs)) === 1;
    if (want !== l1.copied(i)) l1.set(i, l2Offset, want);
  }
}

/** Write everything cached (refcounts included, lazy or not) and flush. */
async function persist(image: EngineImage): Promise<void> {
  await image.metadata.commitRefcounts("before-reference");
  await image.metadata.writeback();
  await image.metadata.commitRefcounts("settle");
}

/**
 * Publish a new snapshot table (qcow2_write_snapshots): the table is written to new clusters and made
 * durable, the header switches to it in one write, then the old table's clusters are released.
 */
export async function writeSnapshotTable(
  image: EngineImage,
  entries: readonly SnapshotEntry[],
  /** Called with the new table's place before it is written (a check that may throw, e.g. for overlaps). */
  beforeWrite?: (offset: number, byteLength: number) => Promise<void>,
): Promise<void> {
  const cs = image.clusterSize;
  const normalized = entries.map((e) => ({ ...e, diskSize: e.diskSize ?? image.virtualSize, icount: e.icount ?? -1n }));
  if (normalized.length > MAX_SNAPSHOTS) throw tooLarge();
  const bytes = encodeSnapshotTable(normalized);
  if (bytes.byteLength > MAX_SNAPSHOT_TABLE_BYTES) throw tooLarge();
  let offset = 0;
  if (normalized.length > 0) {
    offset = (await image.metadata.refcounts.allocate(Math.ceil(bytes.byteLength / cs))) * cs;
    await beforeWrite?.(offset, bytes.byteLength);
    await image.metadata.meta.write(offset, bytes);
  }
  await image.metadata.commitRefcounts("before-reference");
  const oldOffset = image.header.snapshotsOffset;
  const oldBytes = image.metadata.snapshots.reduce((n, s) => n + s.entryBytes, 0);
  await image.metadata.setHeaderFields({ nbSnapshots: normalized.length, snapshotsOffset: offset });
  image.metadata.replaceSnapshots(normalized.map((e) => ({ ...e, entryBytes: snapshotEntryBytes(e) })));
  const freesOld = oldOffset !== 0 && oldBytes > 0;
  if (freesOld) {
    image.metadata.refcounts.deferFree(oldOffset / cs, Math.ceil(oldBytes / cs), true);
    image.metadata.meta.debugEvent?.("cluster_free");
  }
  try {
    await image.metadata.writeback();
  } catch (e) {
    // QEMU's qcow2_free_clusters reports a failed release and goes on: the old table's clusters leak.
    if (!freesOld || !isQcow2Error(e) || (e.code !== "IO_ERROR" && e.code !== "NO_SPACE")) throw e;
    image.warn(`qcow2_free_clusters failed: ${e.message}`);
  }
  await image.metadata.commitRefcounts("after-reference-removal");
}

/** QEMU's find_new_snapshot_id: one more than the largest numeric id. */
function newSnapshotId(image: EngineImage): string {
  let max = 0;
  for (const s of image.metadata.snapshots) {
    const m = /^\s*\+?(\d+)/.exec(s.id);
    const n = m ? Number(m[1]) : 0;
    if (n > max) max = n;
  }
  return String(max + 1);
}

const tooLarge = () => new Qcow2Error("INVALID_ARGUMENT", "File too large", { errno: "EFBIG" });

function newEntry(image: EngineImage, id: string, name: string, l1Offset: number, opts: NewSnapshotOptions, now: number): SnapshotEntry {
  return {
    l1TableOffset: l1Offset,
    l1Size: image.metadata.l1.size,
    id,
    name,
    dateSeconds: opts.dateSeconds ?? Math.floor(now / 1000),
    dateNanoseconds: opts.dateNanoseconds ?? (now % 1000) * 1_000_000,
    vmClockNanoseconds: opts.vmClockNanoseconds ?? 0,
    vmStateSize: 0,
    diskSize: image.virtualSize,
    icount: opts.icount ?? 0n,
    unknownExtraData: new Uint8Array(0),
  };
}

/** Take an internal snapshot named `name` of the image's current state. */
export async function createSnapshot(image: EngineImage, name: string, opts: NewSnapshotOptions = {}): Promise<SnapshotInfo> {
  refuseDataFile(image);
  return image.lock.write(async () => {
    await image.metadata.flush();
    return image.metadata.withDirtyBit(() => createSnapshotUnlocked(image, name, opts));
  });
}

async function createSnapshotUnlocked(image: EngineImage, name: string, opts: NewSnapshotOptions): Promise<SnapshotInfo> {
  const id = newSnapshotId(image);
  if (image.metadata.snapshots.some((s) => s.id === id)) throw new Qcow2Error("INVALID_ARGUMENT", "File exists", { errno: "EEXIST" });
  const cs = image.clusterSize;
  const now = Date.now();
  const l1 = image.metadata.l1;
  const l1Bytes = l1.size * 8;
  let l1Offset = 0;
  // QEMU's limits are checked before anything is written: the number of snapshots, then the table's size.
  if (image.metadata.snapshots.length >= MAX_SNAPSHOTS) throw tooLarge();
  const newEntryBytes = snapshotEntryBytes({ ...newEntry(image, id, name, 0, opts, now) });
  if (image.metadata.snapshots.reduce((n, s) => n + s.entryBytes, newEntryBytes) > MAX_SNAPSHOT_TABLE_BYTES) throw tooLarge();
  const applied: Array<[number, number]> = [];
  try {
    if (l1Bytes > 0) {
      const clusters = Math.ceil(l1Bytes / cs);
      l1Offset = (await image.metadata.refcounts.allocate(clusters)) * cs;
      await image.metadata.meta.write(l1Offset, l1.bytes.slice(0, l1Bytes));
    }
    await referenceTree(image, l1.bytes, l1.size, 1, applied);
  } catch (e) {
    // The references taken are dropped again; the L1 copy stays allocated (a leak, as QEMU leaves it).
    await rollback(image, applied);
    await image.metadata.commitRefcounts("rollback");
    throw e;
  }
  await recomputeCopiedFlags(image);
  await persist(image);
  await writeSnapshotTable(image, [...image.metadata.snapshots, newEntry(image, id, name, l1Offset, opts, now)]);
  image.metadata.metadataChanged();
  return image.metadata.snapshots[image.metadata.snapshots.length - 1]!;
}

/**
 * Revert the image to snapshot `idOrName` (an id first, then a name). The snapshot stays. An image of a
 * different size takes the snapshot's size.
 */
export async function applySnapshot(image: EngineImage, idOrName: string): Promise<void> {
  refuseDataFile(image);
  const index = findSnapshot(image, idOrName);
  if (index < 0) throw new Qcow2Error("NOT_FOUND", "No such file or directory", { errno: "ENOENT" });
  const sn = image.metadata.snapshots[index]!;
  validateSnapshotL1(image, sn);
  const diskSize = sn.diskSize ?? image.virtualSize;
  if (diskSize !== image.virtualSize) {
    if (diskSize < image.virtualSize) {
      await image.lock.write(async () => {
        await image.discardUnlocked(diskSize, image.virtualSize - diskSize, true);
        await image.metadata.flush();
      });
    }
    await image.lock.write(() => image.metadata.setVirtualSize(diskSize));
  }
  await image.lock.write(async () => {
    await image.metadata.flush();
    await image.metadata.withDirtyBit(() => applySnapshotTables(image, sn));
  });
}

/** The table switch of applySnapshot (exclusive lock held). */
async function applySnapshotTables(image: EngineImage, sn: SnapshotEntry): Promise<void> {
  if (sn.l1Size > image.metadata.l1.size) await image.metadata.growL1(sn.l1Size);
  const cur = image.metadata.l1;
  const newBytes = await readL1(image, sn.l1TableOffset, sn.l1Size, cur.size);
  const applied: Array<[number, number]> = [];
  try {
    await referenceTree(image, newBytes, sn.l1Size, 1, applied);
  } catch (e) {
    await rollback(image, applied);
    throw e;
  }
  await image.metadata.commitRefcounts("before-reference");
  // The new active table is durable before the old tables lose their reference.
  await image.metadata.meta.write(cur.hostOffset, newBytes);
  await image.metadata.meta.flush();
  const old = cur.bytes.slice();
  image.metadata.replaceL1(new L1Table(cur.hostOffset, cur.size, newBytes));
  await referenceTree(image, old, cur.size, -1, []);
  await image.metadata.writeback();
  for (let i = 0; i < cur.size; i++) {
    const off = l1EntryL2Offset(viewOf(old), i);
    if (off !== 0 && (await image.metadata.refcounts.get(off / image.clusterSize)) === 0) image.metadata.l2Cache.delete(off);
  }
  await recomputeCopiedFlags(image);
  await persist(image);
  image.metadata.metadataChanged();
}

/** Delete the first snapshot matching `id` and `name` (either may be omitted). */
export async function deleteSnapshot(image: EngineImage, which: { id?: string; name?: string }): Promise<void> {
  refuseDataFile(image);
  await image.lock.write(async () => {
    await image.metadata.flush();
    const index = findSnapshotByIdAndName(image, which.id, which.name);
    if (index < 0) throw new Qcow2Error("NOT_FOUND", "Can't find the snapshot", { errno: "ENOENT" });
    const sn = image.metadata.snapshots[index]!;
    validateSnapshotL1(image, sn);
    await image.metadata.withDirtyBit(() => deleteSnapshotTables(image, index, sn));
  });
}

/** The table changes of deleteSnapshot (exclusive lock held). */
async function deleteSnapshotTables(image: EngineImage, index: number, sn: SnapshotEntry): Promise<void> {
  const rest = image.metadata.snapshots.filter((_, i) => i !== index);
  await writeSnapshotTable(image, rest);
  let l1: Uint8Array;
  try {
    l1 = await readL1(image, sn.l1TableOffset, sn.l1Size);
    await referenceTree(image, l1, sn.l1Size, -1, []);
  } catch (e) {
    // The snapshot is gone from the table: from here on a failure only leaks its clusters (QEMU's words).
    if (!isQcow2Error(e) || (e.code !== "IO_ERROR" && e.code !== "NO_SPACE")) throw e;
    throw new Qcow2Error(e.code, `Failed to free the cluster and L1 table: ${e.message}`, { errno: e.errno, cause: e });
  }
  if (sn.l1Size > 0) image.metadata.refcounts.deferFree(sn.l1TableOffset / image.clusterSize, Math.ceil((sn.l1Size * 8) / image.clusterSize), true);
  await image.metadata.writeback();
  const v = viewOf(l1);
  for (let i = 0; i < sn.l1Size; i++) {
    const off = l1EntryL2Offset(v, i);
    if (off !== 0 && (await image.metadata.refcounts.get(off / image.clusterSize)) === 0) image.metadata.l2Cache.delete(off);
  }
  await recomputeCopiedFlags(image);
  await persist(image);
  image.metadata.metadataChanged();
}
