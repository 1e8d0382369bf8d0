/**
 * Consistency check of a qcow2 image, as QEMU 7.2's qcow2_check_refcounts does it: every reference to a
 * host cluster (header, L1/L2 tables, data and compressed clusters, snapshot tables, refcount structures,
 * bitmaps) is counted in an in-memory refcount table and compared with the image's own refcounts; then the
 * COPIED flags are checked against the refcounts. The result is a report (counts and QEMU's message lines),
 * never an exception for a damaged image. Repair (`-r leaks|all`) builds on the same passes (repair.ts).
 */
import {
  INCOMPAT_DATA_FILE,
  Qcow2Error,
  bitmapTableEntryOffset,
  classifyCluster,
  decodeBitmapDirectory,
  decodeCompressedDescriptor,
  l1EntryCopied,
  l1EntryHasReservedBits,
  l1EntryL2Offset,
  l1EntryRaw,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2EntryRaw,
  l2HasReservedBits,
  l2HostOffset,
  l2IsCompressed,
  l2IsCopied,
  reftableEntryHasReservedBits,
  reftableEntryOffset,
  viewOf,
} from "@qcowkit/spec";
import type { Qcow2Image } from "./qcow2-image";

export interface CheckReport {
  /** QEMU's message lines, in order (what qemu-img prints on stderr). */
  messages: string[];
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** (highest used cluster + 1) * cluster size, 0 when unknown. */
  imageEndOffset: number;
  /** Guest clusters (virtual size / cluster size, rounded up). */
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** The refcount structures need a rebuild (only `-r all` can fix this). */
  rebuildNeeded: boolean;
}

const hex = (n: number | bigint) => n.toString(16);

/** The in-memory refcount table: one counter per host cluster of the qcow2 file, grown on demand. */
export class ReferenceCounts {
  counts: Uint32Array;

  constructor(clusters: number) {
    this.counts = new Uint32Array(Math.max(16, clusters));
  }

  get(cluster: number): number {
    return cluster < this.counts.length ? this.counts[cluster]! : 0;
  }

  increment(cluster: number): number {
    if (cluster >= this.counts.length) {
      const grown = new Uint32Array(Math.max(cluster + 1, this.counts.length * 2));
      grown.set(this.counts);
      this.counts = grown;
    }
    return ++this.counts[cluster]!;
  }

  /** Highest cluster with a reference, or -1. */
  highest(): number {
    for (let i = this.counts.length - 1; i >= 0; i--) if (this.counts[i]) return i;
    return -1;
  }
}

export interface CheckContext {
  image: Qcow2Image;
  report: CheckReport;
  refs: ReferenceCounts;
  fileLength: number;
  /** Next guest... host offset expected for contiguity (fragmentation statistics). */
  nextContiguous: number;
}

export function emptyReport(): CheckReport {
  return {
    messages: [],
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
    rebuildNeeded: false,
  };
}

/** Count a reference to every cluster of [offset, offset+size) (QEMU's qcow2_inc_refcounts_imrt). */
export function countReference(ctx: CheckContext, offset: number, size: number): void {
  if (size <= 0) return;
  const cs = ctx.image.clusterSize;
  if (offset + size - ctx.fileLength >= cs) {
    ctx.report.messages.push(
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${hex(size)}`,
    );
    ctx.report.corruptions++;
    return;
  }
  const max = Math.min(ctx.image.refcounts.maxValue, 0xffffffff);
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  for (let c = first; c <= last; c++) {
    if (ctx.refs.get(c) >= max) {
      ctx.report.messages.push(`ERROR: overflow cluster offset=0x${hex(c * cs)}`);
      ctx.report.messages.push(
        "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
      );
      ctx.report.corruptions++;
      continue;
    }
    ctx.refs.increment(c);
  }
}

/** Walk one L1 table and its L2 tables (QEMU's check_refcounts_l1 / check_refcounts_l2). */
export async function countL1(
  ctx: CheckContext,
  l1Offset: number,
  l1Size: number,
  active: boolean,
): Promise<void> {
  const image = ctx.image;
  const cs = image.clusterSize;
  countReference(ctx, l1Offset, l1Size * 8);
  if (l1Size === 0) return;
  const l1 = active ? image.l1.bytes.subarray(0, l1Size * 8) : new Uint8Array(l1Size * 8);
  if (!active) await image.meta.read(l1Offset, l1);
  const v = viewOf(l1);
  for (let i = 0; i < l1Size; i++) {
    if (l1EntryHasReservedBits(v, i)) {
      ctx.report.messages.push(`ERROR found L1 entry with reserved bits set: ${hex(l1EntryRaw(v, i))}`);
      ctx.report.corruptions++;
    }
    const l2Offset = l1EntryL2Offset(v, i);
    if (l2Offset === 0) continue;
    countReference(ctx, l2Offset, cs);
    if (l2Offset % cs !== 0) {
      ctx.report.messages.push(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      ctx.report.corruptions++;
      continue;
    }
    await countL2(ctx, l2Offset, active);
  }
}

async function readL2(image: Qcow2Image, l2Offset: number): Promise<DataView> {
  const cached = image.l2Cache.peek(l2Offset);
  if (cached) return cached.view;
  const bytes = new Uint8Array(image.clusterSize);
  await image.meta.read(l2Offset, bytes);
  return viewOf(bytes);
}

async function countL2(ctx: CheckContext, l2Offset: number, active: boolean): Promise<void> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const ext = image.extendedL2;
  const dataFile = image.hasDataFile;
  const fmt = image.map.format;
  const v = await readL2(image, l2Offset);
  const entries = image.map.l2Entries;
  ctx.nextContiguous = 0; // contiguity is judged within one L2 table
  for (let i = 0; i < entries; i++) {
    const at = l2EntryPosition(i, ext);
    const hi = v.getUint32(at);
    const lo = v.getUint32(at + 4);
    const alloc = ext ? l2BitmapAlloc(v, i) : 0;
    const zero = ext ? l2BitmapZero(v, i) : 0;
    const kind = classifyCluster(hi, lo, fmt);
    if (kind !== "compressed" && l2HasReservedBits(hi, lo)) {
      ctx.report.messages.push(`ERROR found l2 entry with reserved bits set: ${hex(l2EntryRaw(v, i, ext))}`);
      ctx.report.corruptions++;
    }
    switch (kind) {
      case "compressed": {
        if (dataFile) {
          ctx.report.messages.push(`ERROR compressed cluster ${i} with data file, entry=0x${hex(l2EntryRaw(v, i, ext))}`);
          ctx.report.corruptions++;
          break;
        }
        const d = decodeCompressedDescriptor(hi, lo, image.clusterBits);
        if (l2IsCopied(hi)) {
          ctx.report.messages.push(`ERROR: coffset=0x${hex(d.hostOffset)}: copied flag must never be set for compressed clusters`);
          ctx.report.corruptions++;
        }
        if (ext && (alloc !== 0 || zero !== 0)) {
          ctx.report.messages.push(
            `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex(l2EntryRaw(v, i, ext))}`,
          );
          ctx.report.corruptions++;
        }
        if (active) {
          // Compressed clusters count as fragmented by nature (QEMU re-reads shared sectors).
          ctx.report.allocatedClusters++;
          ctx.report.compressedClusters++;
          ctx.report.fragmentedClusters++;
        }
        countReference(ctx, d.hostOffset, d.byteLength);
        break;
      }
      case "normal":
      case "zero-alloc": {
        const offset = l2HostOffset(hi, lo);
        if (ext && (alloc & zero) !== 0) {
          ctx.report.messages.push(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
          ctx.report.corruptions++;
        }
        if (offset % cs !== 0) {
          ctx.report.messages.push(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          ctx.report.corruptions++;
          break;
        }
        if (active) {
          ctx.report.allocatedClusters++;
          if (ctx.nextContiguous !== 0 && offset !== ctx.nextContiguous) ctx.report.fragmentedClusters++;
          ctx.nextContiguous = offset + cs;
        }
        if (!dataFile) countReference(ctx, offset, cs);
        break;
      }
      case "zero-plain":
      case "unallocated":
        if (ext && alloc !== 0) {
          ctx.report.messages.push("ERROR: Unallocated cluster has non-zero subcluster allocation map");
          ctx.report.corruptions++;
        }
        break;
    }
  }
}

/** Count the references QEMU's calculate_refcounts counts, in its order. */
async function countAll(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const h = image.header;
  const cs = image.clusterSize;
  countReference(ctx, 0, cs);
  await countL1(ctx, h.l1TableOffset, h.l1Size, true);
  if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n && h.nbSnapshots > 0) {
    ctx.report.messages.push(`ERROR ${h.nbSnapshots} snapshots in image with data file`);
    ctx.report.corruptions++;
  }
  for (const sn of image.snapshots) {
    if (sn.l1TableOffset % cs !== 0) {
      ctx.report.messages.push(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${hex(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      ctx.report.corruptions++;
      continue;
    }
    if (sn.l1Size * 8 > 32 * 1024 * 1024) {
      ctx.report.messages.push(
        `ERROR snapshot ${sn.id} (${sn.name}) l1_size=0x${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`,
      );
      ctx.report.corruptions++;
      continue;
    }
    await countL1(ctx, sn.l1TableOffset, sn.l1Size, false);
  }
  if (h.nbSnapshots > 0) {
    const tableBytes = image.snapshots.reduce((n, s) => n + s.entryBytes, 0);
    countReference(ctx, h.snapshotsOffset, tableBytes);
  }
  countReference(ctx, h.refcountTableOffset, h.refcountTableClusters * cs);
  const crypto = image.hdr.extensions.cryptoHeader;
  if (crypto) countReference(ctx, crypto.offset, crypto.length);
  await countBitmaps(ctx);
  // Refcount blocks.
  const reftable = viewOf(image.refcounts.reftable);
  const fileClusters = Math.ceil(ctx.fileLength / cs);
  for (let i = 0; i < image.refcounts.reftableEntries; i++) {
    const offset = reftableEntryOffset(reftable, i);
    if (reftableEntryHasReservedBits(reftable, i)) {
      ctx.report.messages.push(`ERROR refcount table entry ${i} has reserved bits set`);
      ctx.report.corruptions++;
      ctx.report.rebuildNeeded = true;
      continue;
    }
    if (offset === 0) continue;
    if (offset % cs !== 0) {
      ctx.report.messages.push(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      ctx.report.corruptions++;
      ctx.report.rebuildNeeded = true;
      continue;
    }
    if (offset / cs >= fileClusters) {
      ctx.report.messages.push(`ERROR refcount block ${i} is outside image`);
      ctx.report.corruptions++;
      ctx.report.rebuildNeeded = true;
      continue;
    }
    countReference(ctx, offset, cs);
    const n = ctx.refs.get(offset / cs);
    if (n !== 1) {
      ctx.report.messages.push(`ERROR refcount block ${i} refcount=${n}`);
      ctx.report.corruptions++;
      ctx.report.rebuildNeeded = true;
    }
  }
}

async function countBitmaps(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const bm = image.hdr.extensions.bitmaps;
  if (!bm || !(image.header.autoclearFeatures & 1n)) return;
  const cs = image.clusterSize;
  countReference(ctx, bm.bitmapDirectoryOffset, bm.bitmapDirectorySize);
  if (bm.bitmapDirectorySize > 64 * 1024 * 1024) return;
  const dir = new Uint8Array(bm.bitmapDirectorySize);
  await image.meta.read(bm.bitmapDirectoryOffset, dir);
  let entries;
  try {
    entries = decodeBitmapDirectory(dir, bm.nbBitmaps);
  } catch (e) {
    ctx.report.messages.push(`ERROR bitmap directory: ${(e as Error).message}`);
    ctx.report.corruptions++;
    return;
  }
  for (const e of entries) {
    countReference(ctx, e.bitmapTableOffset, e.bitmapTableSize * 8);
    if (e.bitmapTableSize * 8 > 64 * 1024 * 1024) continue;
    const table = new Uint8Array(e.bitmapTableSize * 8);
    await image.meta.read(e.bitmapTableOffset, table);
    const tv = viewOf(table);
    for (let i = 0; i < e.bitmapTableSize; i++) {
      const off = bitmapTableEntryOffset(tv, i);
      if (off !== 0) countReference(ctx, off, cs);
    }
  }
}

/** Compare the counted references with the image's refcounts (QEMU's compare_refcounts, without fixing). */
async function compareRefcounts(ctx: CheckContext): Promise<number> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const clusters = Math.max(Math.ceil(ctx.fileLength / cs), ctx.refs.highest() + 1);
  let highest = -1;
  for (let i = 0; i < clusters; i++) {
    let refcount: number;
    try {
      refcount = await image.refcounts.get(i);
    } catch (e) {
      ctx.report.messages.push(`Can't get refcount for cluster ${i}: ${(e as Error).message}`);
      ctx.report.checkErrors++;
      continue;
    }
    const reference = ctx.refs.get(i);
    if (refcount > 0 || reference > 0) highest = i;
    if (refcount !== reference) {
      if (refcount < reference) {
        ctx.report.messages.push(`ERROR cluster ${i} refcount=${refcount} reference=${reference}`);
        ctx.report.corruptions++;
      } else {
        ctx.report.messages.push(`Leaked cluster ${i} refcount=${refcount} reference=${reference}`);
        ctx.report.leaks++;
      }
    }
  }
  return highest;
}

/** COPIED flags against the refcounts (QEMU's check_oflag_copied, without fixing). */
async function checkCopiedFlags(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const h = image.header;
  const cs = image.clusterSize;
  const ext = image.extendedL2;
  const l1 = viewOf(image.l1.bytes);
  for (let i = 0; i < h.l1Size; i++) {
    const l2Offset = l1EntryL2Offset(l1, i);
    if (l2Offset === 0 || l2Offset % cs !== 0) continue;
    const refcount = await image.refcounts.get(l2Offset / cs);
    if ((refcount === 1) !== l1EntryCopied(l1, i)) {
      ctx.report.messages.push(
        `ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(l1EntryRaw(l1, i))} refcount=${refcount}`,
      );
      ctx.report.corruptions++;
    }
    const v = await readL2(image, l2Offset);
    for (let j = 0; j < image.map.l2Entries; j++) {
      const at = l2EntryPosition(j, ext);
      const hi = v.getUint32(at);
      const lo = v.getUint32(at + 4);
      if (l2IsCompressed(hi)) continue;
      const kind = classifyCluster(hi, lo, image.map.format);
      if (kind !== "normal" && kind !== "zero-alloc") continue;
      const data = l2HostOffset(hi, lo);
      if (data % cs !== 0) continue;
      const rc = image.hasDataFile ? 1 : await image.refcounts.get(data / cs);
      if ((rc === 1) !== l2IsCopied(hi)) {
        ctx.report.messages.push(`ERROR OFLAG_COPIED data cluster: l2_entry=${hex(l2EntryRaw(v, j, ext))} refcount=${rc}`);
        ctx.report.corruptions++;
      }
    }
  }
}

/** Check an image opened read-only (or in check mode). */
export async function checkImage(image: Qcow2Image): Promise<CheckReport> {
  const report = emptyReport();
  const cs = image.clusterSize;
  report.totalClusters = Math.ceil(image.virtualSize / cs);
  const fileLength = await image.meta.size();
  const ctx: CheckContext = {
    image,
    report,
    refs: new ReferenceCounts(Math.ceil(fileLength / cs)),
    fileLength,
    nextContiguous: 0,
  };
  try {
    await countAll(ctx);
    const highest = await compareRefcounts(ctx);
    await checkCopiedFlags(ctx);
    report.imageEndOffset = (highest + 1) * cs;
  } catch (e) {
    if (!(e instanceof Qcow2Error)) throw e;
    report.messages.push(`Check failed: ${e.message}`);
    report.checkErrors++;
  }
  return report;
}

