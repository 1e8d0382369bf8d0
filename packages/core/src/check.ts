/**
 * Consistency check of a qcow2 image, as QEMU 7.2's qcow2_check_refcounts does it: every reference to a
 * host cluster (header, L1/L2 tables, data and compressed clusters, snapshot tables, refcount structures,
 * bitmaps) is counted in an in-memory refcount table and compared with the image's own refcounts; then the
 * COPIED flags are checked against the refcounts. The result is a report (counts and QEMU's message lines),
 * never an exception for a damaged image.
 *
 * The passes take QEMU's fix flags: with FIX_LEAKS too-high refcounts are lowered, with FIX_ERRORS too-low
 * ones are raised, refcount blocks past the end of the file are made to exist, preallocated zero clusters
 * with an unaligned offset become plain zero clusters, and COPIED flags are set from the refcounts. The
 * rebuild of broken refcount structures and the rest of `qemu-img check -r` are in repair.ts.
 *
 * What is checked is what is on disk: a writable image is flushed first.
 */
import {
  INCOMPAT_DATA_FILE,
  MAX_SNAPSHOTS,
  MAX_SNAPSHOT_EXTRA_DATA,
  MAX_SNAPSHOT_TABLE_BYTES,
  Qcow2Error,
  SNAPSHOT_HEADER_BYTES,
  bitmapTableEntryHasReservedBits,
  bitmapTableEntryOffset,
  decodeBitmapDirectory,
  decodeSnapshotEntry,
  l1EntryCopied,
  l1EntryHasReservedBits,
  l1EntryL2Offset,
  l1EntryRaw,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2EntryRaw,
  viewOf,
  errnoText,
  getRefcount,
  refcountDecimal,
  isAllZero,
  firstNonZeroByte,
  type Errno,
} from "@qcowkit/spec";
import { classifyL2Entry, readL2Entry, setL2Copied, writeL2Entry } from "@qcowkit/cluster";
import { metadataOverlap, OVERLAP_ACTIVE_L2, OVERLAP_INACTIVE_L2 } from "./metadata-overlap";
import type { EngineImage } from "./engine-image";
import { OperationSteps } from "./operation";
import { SequentialReader, type SnapshotInfo } from "./snapshots";
import { SPARSE_L2_BUDGET_BYTES, SPARSE_L2_SHARE, SparseL2Tables } from "./check-sparse-l2";

export {
  CheckAbort,
  FIX_ERRORS,
  FIX_LEAKS,
  MAX_REPORT_MESSAGES,
  ReferenceCounts,
  altHex,
  checkFailureText,
  countReference,
  emptyReport,
  say,
  type CheckContext,
  type CheckFailure,
  type CheckMessageKind,
  type CheckOptions,
  type CheckReport,
  type ClusterUse,
} from "./check-context";
import {
  CheckAbort,
  MAX_REFCOUNT_FAILURE_LINES,
  hex,
  FIX_ERRORS,
  FIX_LEAKS,
  ReferenceCounts,
  altHex,
  countReference,
  emptyReport,
  say,
  type CheckContext,
  type CheckOptions,
  type CheckReport,
} from "./check-context";

/** Read from the qcow2 file, turning a failure into QEMU's check error. */
async function readMeta(ctx: CheckContext, offset: number, into: Uint8Array, what: string): Promise<void> {
  // Past the end of the file everything reads as zeros, as in QEMU, even where no store could address it
  // (offsets of 2^53 and more, from damaged entries).
  if (!Number.isSafeInteger(offset + into.byteLength) || offset >= ctx.fileLength) {
    into.fill(0);
    return;
  }
  try {
    await ctx.image.metadata.meta.read(offset, into);
  } catch (e) {
    say(ctx, what);
    ctx.report.checkErrors++;
    throw new CheckAbort(e instanceof Qcow2Error ? e.errno : "EIO");
  }
}

/** Walk one L1 table and its L2 tables (QEMU's check_refcounts_l1). */
export async function countL1(ctx: CheckContext, l1Offset: number, l1Size: number, active: boolean): Promise<void> {
  if (l1Size === 0) return;
  const cs = ctx.image.clusterSize;
  countReference(ctx, l1Offset, l1Size * 8, active ? "l1" : "snapshot-l1");
  const l1 = new Uint8Array(l1Size * 8);
  await readMeta(ctx, l1Offset, l1, "ERROR: I/O error in check_refcounts_l1");
  const v = viewOf(l1);
  for (let i = 0; i < l1Size; i++, ctx.steps.advance(1)) {
    ctx.steps.check();
    if (v.getUint32(i * 8) === 0 && v.getUint32(i * 8 + 4) === 0) continue;
    if (l1EntryHasReservedBits(v, i)) {
      say(ctx, `ERROR found L1 entry with reserved bits set: ${hex(l1EntryRaw(v, i))}`);
      ctx.report.corruptions++;
    }
    const l2Offset = l1EntryL2Offset(v, i);
    countReference(ctx, l2Offset, cs, "l2");
    if (l2Offset % cs !== 0) {
      say(ctx, `ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      ctx.report.corruptions++;
    }
    await countL2(ctx, l2Offset, active);
  }
}

/** Bytes of L2 tables the check keeps (see CheckContext.l2Tables). */
const L2_TABLE_CACHE_BYTES = 8 * 1024 * 1024;

/** The L2 table at `l2Offset`, from the check's cache or the file. */
async function readL2Table(ctx: CheckContext, l2Offset: number, what: string): Promise<Uint8Array> {
  const cached = ctx.l2Tables.get(l2Offset);
  if (cached) {
    ctx.l2Tables.delete(l2Offset);
    ctx.l2Tables.set(l2Offset, cached);
    return cached;
  }
  // The table dropped last time is read into again: a check of an image with thousands of L2 tables
  // keeps the cache's bytes, not a fresh buffer per table waiting for the garbage collector.
  const table = ctx.spareL2Table ?? new Uint8Array(l2TableBytes(ctx.image));
  ctx.spareL2Table = undefined;
  if (!ctx.sparseL2?.fill(l2Offset, table)) await readMeta(ctx, l2Offset, table, what);
  ctx.l2Tables.set(l2Offset, table);
  if (ctx.l2Tables.size * table.byteLength > L2_TABLE_CACHE_BYTES) {
    const [oldest, dropped] = ctx.l2Tables.entries().next().value!;
    ctx.l2Tables.delete(oldest);
    tableChanged(dropped);
    ctx.spareL2Table = dropped;
  }
  return table;
}

/** L2 tables known to be all zeros (damaged L1 tables name the same empty cluster many times). */
const zeroTables = new WeakMap<Uint8Array, boolean>();

function isZeroTable(table: Uint8Array): boolean {
  let zero = zeroTables.get(table);
  if (zero === undefined) zeroTables.set(table, (zero = isAllZero(table)));
  return zero;
}

/** The table's bytes were changed: forget what was known about them. */
function tableChanged(table: Uint8Array): void {
  zeroTables.delete(table);
}

/**
 * The first entry at or after `from` with a non-zero byte (the table's length when none): an all-zero entry
 * is unallocated with an empty bitmap, which neither pass counts or reports, so sparse tables are skipped
 * a word at a time instead of decoded entry by entry.
 */
function nextUsedEntry(table: Uint8Array, from: number, ext: boolean): number {
  const entryBytes = ext ? 16 : 8;
  const at = firstNonZeroByte(table, from * entryBytes);
  return at < 0 ? table.byteLength / entryBytes : Math.floor(at / entryBytes);
}

/** The compact L2 tables of a check that fixes nothing. */
function newSparseL2Tables(image: EngineImage): SparseL2Tables {
  const entries = image.metadata.map.l2Entries;
  return new SparseL2Tables(image.extendedL2 ? 16 : 8, Math.floor(entries / SPARSE_L2_SHARE), SPARSE_L2_BUDGET_BYTES);
}

/** Bytes of one L2 table. */
function l2TableBytes(image: EngineImage): number {
  return image.metadata.map.l2Entries * (image.extendedL2 ? 16 : 8);
}

/** QEMU's check_refcounts_l2. */
async function countL2(ctx: CheckContext, l2Offset: number, active: boolean): Promise<void> {
  const table = await readL2Table(ctx, l2Offset, "ERROR: I/O error in check_refcounts_l2");
  ctx.nextContiguous = 0; // contiguity is judged within one L2 table
  // The used entries, for ctx.sparseL2 (counting stops past what it keeps).
  const used: number[] | undefined = ctx.sparseL2 ? [] : undefined;
  const complete = isZeroTable(table) || (await countL2Entries(ctx, l2Offset, table, active, used));
  if (used && complete && ctx.sparseL2!.keep(l2Offset, table, used)) {
    // Kept compactly: the whole table's buffer is read into next (see check-sparse-l2.ts).
    ctx.l2Tables.delete(l2Offset);
    tableChanged(table);
    ctx.spareL2Table = table;
  }
}

/**
 * The entries of countL2's table, `used` receiving the indices of those not all zero. False when the table
 * was left part way (a repair found it overlapping metadata).
 */
async function countL2Entries(ctx: CheckContext, l2Offset: number, table: Uint8Array, active: boolean, used: number[] | undefined): Promise<boolean> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const ext = image.extendedL2;
  const dataFile = image.hasDataFile;
  const geometry = image.metadata.map;
  const v = viewOf(table);
  const entries = image.metadata.map.l2Entries;
  for (let i = nextUsedEntry(table, 0, ext); i < entries; i = nextUsedEntry(table, i + 1, ext)) {
    if (used && used.length <= ctx.sparseL2!.maxUsed) used.push(i);
    const at = l2EntryPosition(i, ext);
    let hi = v.getUint32(at);
    const lo = v.getUint32(at + 4);
    const alloc = ext ? l2BitmapAlloc(v, i) : 0;
    const zero = ext ? l2BitmapZero(v, i) : 0;
    const e = classifyL2Entry(hi, lo, geometry, alloc, zero);
    if (e.kind !== "compressed" && e.reservedBits) {
      say(ctx, `ERROR found l2 entry with reserved bits set: ${hex(l2EntryRaw(v, i, ext))}`);
      ctx.report.corruptions++;
    }
    switch (e.kind) {
      case "compressed": {
        const d = e.compressed!;
        if (e.copied) {
          say(ctx, `ERROR: coffset=0x${hex(d.hostOffset)}: copied flag must never be set for compressed clusters`);
          hi = (hi & 0x7fffffff) >>> 0;
          ctx.report.corruptions++;
        }
        if (dataFile) {
          say(ctx, `ERROR compressed cluster ${i} with data file, entry=0x${hex(entryRaw(hi, lo))}`);
          ctx.report.corruptions++;
          break;
        }
        if (ext && (alloc !== 0 || zero !== 0)) {
          say(ctx, `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex(entryRaw(hi, lo))}`);
          ctx.report.corruptions++;
          break;
        }
        countReference(ctx, d.hostOffset, d.byteLength, "compressed");
        if (active) {
          // Compressed clusters count as fragmented by nature (QEMU re-reads shared sectors).
          ctx.report.allocatedClusters++;
          ctx.report.compressedClusters++;
          ctx.report.fragmentedClusters++;
        }
        break;
      }
      case "normal":
      case "zero": {
        if (e.kind === "zero" && e.hostOffset === 0) break; // a plain zero cluster: no host cluster to count
        const offset = e.hostOffset;
        if (ext && (alloc & zero) !== 0) {
          ctx.report.corruptions++;
          say(ctx, `ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % cs !== 0) {
          ctx.report.corruptions++;
          const containsData = ext ? alloc !== 0 : (lo & 1) === 0;
          if (!containsData) {
            const repair = (ctx.fix & FIX_ERRORS) !== 0;
            say(ctx, `${repair ? "Repairing" : "ERROR"} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            if (repair) {
              const fixed = await fixL2EntryByZero(ctx, l2Offset, table, i, active);
              if (fixed === "overlap") return false; // something is seriously wrong: stop checking this table
              if (fixed === "fixed") continue; // the cluster is unused now
            }
          } else {
            say(ctx, `ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        }
        if (active) {
          ctx.report.allocatedClusters++;
          if (ctx.nextContiguous !== 0 && offset !== ctx.nextContiguous) ctx.report.fragmentedClusters++;
          ctx.nextContiguous = offset + cs;
        }
        if (!dataFile) countReference(ctx, offset, cs);
        else ctx.onReference?.("data-file", offset, cs);
        break;
      }
      case "unallocated":
        if (ext && alloc !== 0) {
          ctx.report.corruptions++;
          say(ctx, "ERROR: Unallocated cluster has non-zero subcluster allocation map");
        }
        break;
    }
  }
  return true;
}

function entryRaw(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** QEMU's fix_l2_entry_by_zero: an unaligned preallocated zero cluster becomes a plain zero cluster. */
async function fixL2EntryByZero(
  ctx: CheckContext,
  l2Offset: number,
  table: Uint8Array,
  index: number,
  active: boolean,
): Promise<"fixed" | "failed" | "overlap"> {
  const image = ctx.image;
  const ext = image.extendedL2;
  const v = viewOf(table);
  const g = image.metadata.map;
  if (ext) {
    // No host cluster; the allocated subclusters become zero.
    const cur = readL2Entry(v, index, g);
    writeL2Entry(v, index, { kind: "unallocated", allocBits: 0, zeroBits: (cur.zeroBits | cur.allocBits) >>> 0 }, g);
  } else {
    writeL2Entry(v, index, { kind: "zero" }, g);
  }
  tableChanged(table);
  const entryBytes = ext ? 16 : 8;
  const at = l2EntryPosition(index, ext);
  const entryOffset = l2Offset + index * entryBytes;
  const overlap = metadataOverlap(image, active ? OVERLAP_ACTIVE_L2 : OVERLAP_INACTIVE_L2, entryOffset, entryBytes, ctx.snapshots, ctx.snapshotsSize);
  if (overlap) {
    await signalOverlap(ctx, overlap);
    say(ctx, "ERROR: Overlap check failed");
    ctx.report.checkErrors++;
    return "overlap";
  }
  try {
    await image.metadata.meta.write(entryOffset, table.subarray(at, at + entryBytes));
    await image.metadata.meta.flush();
  } catch (e) {
    say(ctx, `ERROR: Failed to overwrite L2 table entry: ${errnoMessage(e)}`);
    ctx.report.checkErrors++;
    return "failed";
  }
  image.metadata.l2Cache.delete(l2Offset);
  ctx.report.corruptions--;
  ctx.report.corruptionsFixed++;
  return "fixed";
}

/** QEMU's "Preventing invalid write on metadata" corruption signal (marks a writable image corrupt). */
export async function signalOverlap(ctx: CheckContext, what: string): Promise<void> {
  await ctx.image.signalCorruption(`Preventing invalid write on metadata (overlaps with ${what})`);
}

/** strerror() of a failure, as QEMU prints it after a colon. */
export function errnoMessage(e: unknown): string {
  return e instanceof Qcow2Error ? errnoText[e.errno] : "Input/output error";
}

/** A snapshot as check reads it: the L1 table offset also exactly (above 2^53 a number is not). */
interface CheckSnapshot extends SnapshotInfo {
  l1OffsetExact?: bigint;
}

/** Count the references QEMU's calculate_refcounts counts, in its order. */
export async function calculateRefcounts(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const h = image.header;
  const cs = image.clusterSize;
  countReference(ctx, 0, cs, "header");
  ctx.steps.total = ctx.snapshots.reduce((n, sn) => n + sn.l1Size, h.l1Size);
  await countL1(ctx, h.l1TableOffset, h.l1Size, true);
  if ((h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n && ctx.snapshots.length > 0) {
    say(ctx, `ERROR ${ctx.snapshots.length} snapshots in image with data file`);
    ctx.report.corruptions++;
  }
  for (const sn of ctx.snapshots) {
    if (sn.l1TableOffset % cs !== 0) {
      const exact = (sn as CheckSnapshot).l1OffsetExact ?? sn.l1TableOffset;
      say(ctx, `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${altHex(exact)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      ctx.report.corruptions++;
      continue;
    }
    if (sn.l1Size > (32 * 1024 * 1024) / 8) {
      say(ctx, `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${altHex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      ctx.report.corruptions++;
      continue;
    }
    await countL1(ctx, sn.l1TableOffset, sn.l1Size, false);
  }
  countReference(ctx, ctx.snapshots.length > 0 ? h.snapshotsOffset : 0, ctx.snapshotsSize, "snapshot-table");
  countReference(ctx, image.metadata.refcounts.reftableOffset, image.metadata.refcounts.reftableEntries * 8, "refcount-table");
  const crypto = image.metadata.hdr.extensions.cryptoHeader;
  if (crypto && crypto.length > 0) countReference(ctx, crypto.offset, crypto.length, "encryption");
  await countBitmaps(ctx);
  await checkRefblocks(ctx);
}

/** QEMU's check_refblocks: count the refcount blocks, create the ones past the end of the file when fixing. */
async function checkRefblocks(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const reftable = viewOf(image.metadata.refcounts.reftable);
  for (let i = 0; i < image.metadata.refcounts.reftableEntries; i++) {
    // An empty entry (most of them): nothing to count, nothing wrong while the file has a cluster.
    if (reftable.getUint32(i * 8) === 0 && reftable.getUint32(i * 8 + 4) === 0 && ctx.refs.size > 0) continue;
    if (reftable.getUint32(i * 8 + 4) & 0x1ff) {
      say(ctx, `ERROR refcount table entry ${i} has reserved bits set`);
      ctx.report.corruptions++;
      ctx.rebuild = true;
      continue;
    }
    const offset = reftable.getUint32(i * 8) * 2 ** 32 + reftable.getUint32(i * 8 + 4);
    const cluster = Math.floor(offset / cs);
    if (offset % cs !== 0) {
      say(ctx, `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      ctx.report.corruptions++;
      ctx.rebuild = true;
      continue;
    }
    if (cluster >= ctx.refs.size) {
      ctx.report.corruptions++;
      const repair = (ctx.fix & FIX_ERRORS) !== 0;
      say(ctx, `${repair ? "Repairing" : "ERROR"} refcount block ${i} is outside image`);
      if (repair) {
        // The block is made to exist (zero-filled) by growing the file.
        let failure: string | undefined;
        if (offset > 2 ** 63 - 1 - cs) {
          failure = "Invalid argument";
        } else {
          try {
            // The file system's "File too large" where QEMU would get it (2^53 bytes and more), and also past
            // 2^31 clusters: a file grown that far makes the check itself unbounded (QEMU runs out of memory).
            if (!Number.isSafeInteger(offset + cs) || (offset + cs) / cs > 2 ** 31 - 1) {
              throw new Qcow2Error("NO_SPACE", "File too large", { errno: "EFBIG" });
            }
            await image.metadata.meta.resize(offset + cs);
            ctx.fileLength = await image.metadata.meta.size();
          } catch (e) {
            failure = e instanceof Qcow2Error && e.errno === "EFBIG" ? "File too large" : errnoMessage(e);
            say(ctx, `Could not resize file: ${failure}`, "report");
          }
        }
        if (failure === undefined) {
          const clusters = Math.ceil(ctx.fileLength / cs);
          if (clusters > ctx.refs.size) ctx.refs.size = clusters;
          ctx.report.corruptions--;
          ctx.report.corruptionsFixed++;
          countReference(ctx, offset, cs, "refcount-block");
          continue;
        }
        ctx.rebuild = true;
        say(ctx, `ERROR could not resize image: ${failure}`);
      }
      continue;
    }
    if (offset !== 0) {
      countReference(ctx, offset, cs, "refcount-block");
      const n = ctx.refs.get(cluster);
      if (n !== 1) {
        say(ctx, `ERROR refcount block ${i} refcount=${n}`);
        ctx.report.corruptions++;
        ctx.rebuild = true;
      }
    }
  }
}

/** QEMU's qcow2_check_bitmaps_refcounts. */
async function countBitmaps(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const bm = image.metadata.hdr.extensions.bitmaps;
  if (!bm || !(image.header.autoclearFeatures & 1n) || bm.nbBitmaps === 0) return;
  const cs = image.clusterSize;
  countReference(ctx, bm.bitmapDirectoryOffset, bm.bitmapDirectorySize, "bitmap-directory");
  let entries;
  try {
    if (bm.bitmapDirectorySize > 64 * 1024 * 1024) throw new Error("too large");
    const dir = new Uint8Array(bm.bitmapDirectorySize);
    await image.metadata.meta.read(bm.bitmapDirectoryOffset, dir);
    entries = decodeBitmapDirectory(dir, bm.nbBitmaps);
  } catch {
    ctx.report.corruptions++;
    throw new CheckAbort("EINVAL");
  }
  for (const e of entries) {
    countReference(ctx, e.bitmapTableOffset, e.bitmapTableSize * 8, "bitmap-table");
    if (e.bitmapTableSize * 8 > 64 * 1024 * 1024) {
      ctx.report.corruptions++;
      throw new CheckAbort("EINVAL");
    }
    const table = new Uint8Array(e.bitmapTableSize * 8);
    try {
      await image.metadata.meta.read(e.bitmapTableOffset, table);
    } catch {
      ctx.report.corruptions++;
      throw new CheckAbort("EIO");
    }
    const tv = viewOf(table);
    for (let i = 0; i < e.bitmapTableSize; i++) {
      const off = bitmapTableEntryOffset(tv, i);
      if (bitmapTableEntryHasReservedBits(tv, i) || off % cs !== 0) {
        ctx.report.corruptions++;
        continue;
      }
      if (off !== 0) countReference(ctx, off, cs, "bitmap-data");
    }
  }
}

/**
 * Compare the counted references with the image's refcounts, fixing what `fix` allows (QEMU's
 * compare_refcounts). Returns the highest cluster with a refcount or a reference (0 when none). Works a
 * refcount block at a time: blocks that are missing or all zeros, over clusters without references, are
 * skipped (a repair can grow a file to terabytes of holes).
 */
export async function compareRefcounts(ctx: CheckContext, fix: number): Promise<number> {
  const image = ctx.image;
  const rc = image.metadata.refcounts;
  const perBlock = rc.blockEntries;
  const order = image.header.refcountOrder;
  let highest = 0;
  let refcountFailureLines = 0;
  const freed: Array<[start: number, count: number]> = [];
  for (let start = 0; start < ctx.refs.size; start += perBlock) {
    const blockIndex = start / perBlock;
    const end = Math.min(ctx.refs.size, start + perBlock);
    let bytes: Uint8Array | undefined;
    let failure: Qcow2Error | undefined;
    try {
      bytes = await rc.blockBytes(blockIndex);
    } catch (e) {
      if (!(e instanceof Qcow2Error)) throw e;
      if (e.code === "CORRUPT") await image.signalCorruption(e.message);
      failure = e;
    }
    if (failure) {
      for (let i = start; i < end && refcountFailureLines < MAX_REFCOUNT_FAILURE_LINES; i++, refcountFailureLines++) {
        say(ctx, `Can't get refcount for cluster ${i}: ${errnoMessage(failure)}`);
      }
      ctx.report.checkErrors += end - start;
      continue;
    }
    if ((!bytes || isAllZero(bytes)) && ctx.refs.noneIn(start, end)) continue;
    for (let i = start; i < end; i++) {
      const refcount1 = bytes ? getRefcount(bytes, i - start, order) : 0;
      const refcount2 = ctx.refs.get(i);
      if (refcount1 > 0 || refcount2 > 0) highest = i;
      if (refcount1 === refcount2) continue;
      let fixes: "leaksFixed" | "corruptionsFixed" | undefined;
      if (refcount1 === 0) ctx.rebuild = true;
      else if (refcount1 > refcount2 && fix & FIX_LEAKS) fixes = "leaksFixed";
      else if (refcount1 < refcount2 && fix & FIX_ERRORS) fixes = "corruptionsFixed";
      const label = fixes ? "Repairing" : refcount1 < refcount2 ? "ERROR" : "Leaked";
      if (refcount2 === 0) ctx.onLeak?.(i);
      say(ctx, `${label} cluster ${i} refcount=${bytes ? refcountDecimal(bytes, i - start, order) : 0} reference=${refcount2}`);
      if (fixes) {
        try {
          await rc.update(i, 1, refcount2 - refcount1);
          if (refcount2 === 0) addRun(freed, i);
          ctx.report[fixes]++;
          continue;
        } catch (e) {
          if (!(e instanceof Qcow2Error)) throw e;
        }
      }
      if (refcount1 < refcount2) ctx.report.corruptions++;
      else ctx.report.leaks++;
    }
  }
  if (freed.length > 0 || rc.hasDirty) await writeRefcounts(ctx, freed);
  return highest;
}

/** Add cluster `c` to a list of runs of clusters (ascending). */
function addRun(runs: Array<[number, number]>, c: number): void {
  const last = runs[runs.length - 1];
  if (last && last[0] + last[1] === c) last[1]++;
  else runs.push([c, 1]);
}

/** Write back changed refcounts, then discard clusters whose refcount dropped to 0 (QEMU's DISCARD_ALWAYS). */
async function writeRefcounts(ctx: CheckContext, freed: Array<[number, number]>): Promise<void> {
  const image = ctx.image;
  const cs = image.clusterSize;
  // Marked corrupt during this check: QEMU's node is gone, its cached repairs never reach the file.
  if (image.corruptionSignalled) return;
  await image.metadata.commitRefcounts("settle");
  for (const [first, count] of freed) {
    const start = first * cs;
    const end = Math.min((first + count) * cs, ctx.fileLength);
    if (end > start) await image.metadata.meta.discard(start, end - start).catch(() => undefined);
  }
}

/** COPIED flags against the refcounts, fixed where `fix` allows (QEMU's check_oflag_copied). */
export async function checkCopiedFlags(ctx: CheckContext, fix: number): Promise<void> {
  const image = ctx.image;
  const ext = image.extendedL2;
  const cs = image.clusterSize;
  const report = ctx.report;
  let repair: boolean;
  if (fix & FIX_ERRORS) repair = true;
  else if (fix & FIX_LEAKS) repair = report.checkErrors === 0 && report.corruptions === 0 && report.leaks === 0;
  else repair = false;
  const l1 = viewOf(image.metadata.l1.bytes);
  // Refcount blocks as this pass reads them (it changes no refcount): one lookup per block, not per entry.
  const blocks = new Map<number, Uint8Array | undefined | Qcow2Error>();
  const perBlock = image.metadata.refcounts.blockEntries;
  const order = image.header.refcountOrder;
  const cached = (cluster: number): number | Qcow2Error | undefined => {
    const index = Math.floor(cluster / perBlock);
    const block = blocks.get(index);
    if (block === undefined) return blocks.has(index) ? 0 : undefined;
    return block instanceof Qcow2Error ? block : getRefcount(block, cluster % perBlock, order);
  };
  const refcounts = async (cluster: number): Promise<number | Qcow2Error> => {
    const index = Math.floor(cluster / perBlock);
    try {
      blocks.set(index, await image.metadata.refcounts.blockBytes(index));
    } catch (e) {
      if (!(e instanceof Qcow2Error)) throw e;
      if (e.code === "CORRUPT") await image.signalCorruption(e.message);
      blocks.set(index, e);
    }
    return cached(cluster)!;
  };
  /** The refcount in decimal, exact above 2^53 (read from the block the value came from). */
  const exactRefcount = (cluster: number, value: number): string => {
    const block = blocks.get(Math.floor(cluster / perBlock));
    if (value < 2 ** 53 || !(block instanceof Uint8Array)) return String(value);
    return refcountDecimal(block, cluster % perBlock, order);
  };
  /**
   * The COPIED flag of entry `j` of the entries in `v`: true when it was wrong and `v` now has it fixed; a
   * cluster number when the refcount block of that cluster must be read first (then call again).
   */
  const checkEntry = (v: DataView, j: number): boolean | number => {
    const e = readL2Entry(v, j, image.metadata.map);
    if (e.kind !== "normal" && !(e.kind === "zero" && e.hostOffset !== 0)) return false; // no host cluster of its own
    let rc: number;
    if (image.hasDataFile) rc = 1;
    else {
      const cluster = Math.floor(e.hostOffset / cs);
      const got = cached(cluster);
      if (got === undefined) return cluster;
      if (got instanceof Qcow2Error) return false;
      rc = got;
    }
    if ((rc === 1) === e.copied) return false;
    report.corruptions++;
    const exact = image.hasDataFile ? rc : exactRefcount(Math.floor(e.hostOffset / cs), rc);
    say(ctx, `${repair ? "Repairing" : "ERROR"} OFLAG_COPIED data cluster: l2_entry=${hex(l2EntryRaw(v, j, ext))} refcount=${exact}`);
    if (!repair) return false;
    setL2Copied(v, j, image.metadata.map, rc === 1);
    return true;
  };
  /** checkEntry, reading the refcount block it needs. */
  const checkEntryRead = async (v: DataView, j: number): Promise<boolean> => {
    const result = checkEntry(v, j);
    if (typeof result !== "number") return result;
    await refcounts(result);
    return checkEntry(v, j) === true;
  };
  for (let i = 0; i < image.metadata.l1.size; i++) {
    const l2Offset = l1EntryL2Offset(l1, i);
    if (l2Offset === 0) continue;
    const refcount = cached(Math.floor(l2Offset / cs)) ?? (await refcounts(Math.floor(l2Offset / cs)));
    if (refcount instanceof Qcow2Error) continue;
    if ((refcount === 1) !== l1EntryCopied(l1, i)) {
      report.corruptions++;
      const raw = l1EntryRaw(l1, i);
      say(ctx, `${repair ? "Repairing" : "ERROR"} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex(raw)} refcount=${exactRefcount(Math.floor(l2Offset / cs), refcount)}`);
      if (repair) {
        const hi = l1.getUint32(i * 8);
        l1.setUint32(i * 8, (refcount === 1 ? hi | 0x80000000 : hi & 0x7fffffff) >>> 0);
        await writeL1Entry(ctx, i);
        report.corruptions--;
        report.corruptionsFixed++;
      }
    }
    // The used entries as the first pass kept them (a check that fixes nothing: see check-sparse-l2.ts).
    const sparse = ctx.l2Tables.has(l2Offset) ? undefined : ctx.sparseL2?.get(l2Offset);
    if (sparse) {
      const v = viewOf(sparse.entries);
      for (let k = 0; k < sparse.indices.length; k++) {
        if (typeof checkEntry(v, k) === "number") await checkEntryRead(v, k);
      }
      continue;
    }
    const table = await readL2Table(ctx, l2Offset, "ERROR: Could not read L2 table: Input/output error");
    if (isZeroTable(table)) continue;
    const v = viewOf(table);
    let dirty = 0;
    for (let j = nextUsedEntry(table, 0, ext); j < image.metadata.map.l2Entries; j = nextUsedEntry(table, j + 1, ext)) {
      const result = checkEntry(v, j);
      if (result === true || (typeof result === "number" && (await checkEntryRead(v, j)))) dirty++;
    }
    if (dirty > 0) {
      tableChanged(table);
      const overlap = metadataOverlap(image, OVERLAP_ACTIVE_L2, l2Offset, cs, ctx.snapshots, ctx.snapshotsSize);
      if (overlap) {
        await signalOverlap(ctx, overlap);
        say(ctx, "ERROR: Could not write L2 table; metadata overlap check failed: Input/output error");
        report.checkErrors++;
        throw new CheckAbort("EIO");
      }
      try {
        await image.metadata.meta.write(l2Offset, table);
      } catch (e) {
        say(ctx, `ERROR: Could not write L2 table: ${errnoMessage(e)}`);
        report.checkErrors++;
        throw new CheckAbort(e instanceof Qcow2Error ? e.errno : "EIO");
      }
      image.metadata.l2Cache.delete(l2Offset);
      report.corruptions -= dirty;
      report.corruptionsFixed += dirty;
    }
  }
  if (fix) await image.metadata.meta.flush();
}

/** Write the 512-byte sector of the active L1 table holding entry `index` (QEMU's qcow2_write_l1_entry). */
async function writeL1Entry(ctx: CheckContext, index: number): Promise<void> {
  const image = ctx.image;
  const start = Math.floor((index * 8) / 512) * 512;
  const end = Math.min(image.metadata.l1.bytes.byteLength, start + 512);
  const offset = image.metadata.l1.hostOffset + start;
  const overlap = metadataOverlap(image, 0b10 /* active L1 */, offset, end - start, ctx.snapshots, ctx.snapshotsSize);
  try {
    if (overlap) {
      await signalOverlap(ctx, overlap);
      throw new Qcow2Error("IO_ERROR", "overlap", { errno: "EIO" });
    }
    await image.metadata.meta.write(offset, image.metadata.l1.bytes.subarray(start, end));
    await image.metadata.meta.flush();
  } catch (e) {
    ctx.report.checkErrors++;
    throw new CheckAbort(e instanceof Qcow2Error ? e.errno : "EIO");
  }
}

/**
 * Read the snapshot table for the check (QEMU's qcow2_check_read_snapshot_table: the open in check mode does
 * not read it). A table that cannot be read ends the check.
 */
async function readSnapshotsForCheck(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const h = image.header;
  // With -r all, snapshots past QEMU's limits (count, table size) are dropped and the table is rewritten.
  let count = h.nbSnapshots;
  const offset = h.snapshotsOffset;
  const fail = (message: string, errno: Errno, hint?: string): never => {
    ctx.report.checkErrors++;
    say(ctx, message, "report");
    if (hint) say(ctx, hint);
    throw new CheckAbort(errno);
  };
  if (count > MAX_SNAPSHOTS && ctx.fix & FIX_ERRORS) {
    say(ctx, `Discarding ${count - MAX_SNAPSHOTS} overhanging snapshots`);
    ctx.snapshotCorruptions += count - MAX_SNAPSHOTS;
    ctx.snapshotsDropped += count - MAX_SNAPSHOTS;
    count = MAX_SNAPSHOTS;
  } else if (count > MAX_SNAPSHOTS) {
    fail("ERROR snapshot table too large", "EFBIG", `You can force-remove all ${count - MAX_SNAPSHOTS} overhanging snapshots with qemu-img check -r all`);
  }
  if (!Number.isSafeInteger(offset) || 2 ** 63 - count * SNAPSHOT_HEADER_BYTES < offset || offset % image.clusterSize !== 0) {
    fail("ERROR snapshot table offset invalid", "EINVAL");
  }
  const snapshots: SnapshotInfo[] = [];
  const incomplete: number[] = [];
  const reader = new SequentialReader(image.metadata.meta, offset);
  // QEMU's table length counts the kept extra data only (1024 bytes of an entry whose excess is dropped).
  let tableLength = 0;
  for (let i = 0; i < count; i++) {
    const entryStart = reader.position;
    reader.position = Math.ceil(reader.position / 8) * 8;
    tableLength = Math.ceil(tableLength / 8) * 8;
    const hv = viewOf(await reader.peek(SNAPSHOT_HEADER_BYTES));
    const extraSize = hv.getUint32(36);
    const namesBytes = hv.getUint16(12) + hv.getUint16(14);
    const entryBytes = SNAPSHOT_HEADER_BYTES + extraSize + namesBytes;
    let raw: Uint8Array;
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      if (!(ctx.fix & FIX_ERRORS)) {
        fail(
          `ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry ${i}`,
          "EFBIG",
          "You can force-remove this extra metadata with qemu-img check -r all",
        );
      }
      // Keep the first 1024 bytes of extra data; the table is rewritten without the rest.
      say(ctx, `Discarding too much extra metadata in snapshot table entry ${i} (${extraSize} > ${MAX_SNAPSHOT_EXTRA_DATA})`);
      ctx.snapshotCorruptions++;
      const kept = await reader.take(SNAPSHOT_HEADER_BYTES + MAX_SNAPSHOT_EXTRA_DATA);
      viewOf(kept).setUint32(36, MAX_SNAPSHOT_EXTRA_DATA);
      reader.position += extraSize - MAX_SNAPSHOT_EXTRA_DATA;
      const names = await reader.take(namesBytes);
      raw = new Uint8Array(kept.byteLength + names.byteLength);
      raw.set(kept);
      raw.set(names, kept.byteLength);
    } else {
      raw = await reader.take(entryBytes);
    }
    const { entry } = decodeSnapshotEntry(raw, 0, i);
    if (entry.diskSize === undefined) entry.diskSize = image.virtualSize;
    tableLength += SNAPSHOT_HEADER_BYTES + Math.min(extraSize, MAX_SNAPSHOT_EXTRA_DATA) + namesBytes;
    const tooBig = tableLength > MAX_SNAPSHOT_TABLE_BYTES || reader.position - offset > 2 ** 31 - 1;
    if (tooBig && ctx.fix & FIX_ERRORS) {
      // This entry and the ones after it go.
      say(ctx, `Discarding ${count - i} overhanging snapshots (snapshot table is too big)`);
      ctx.snapshotCorruptions += count - i;
      ctx.snapshotsDropped += count - i;
      reader.position = entryStart;
      count = i;
      break;
    }
    if (tooBig) {
      fail(
        "ERROR failed to read the snapshot table: Snapshot table is too big",
        "EFBIG",
        `You can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`,
      );
    }
    const sn: CheckSnapshot = { ...entry, entryBytes: Math.ceil(entryBytes / 8) * 8 };
    if (!Number.isSafeInteger(entry.l1TableOffset)) sn.l1OffsetExact = viewOf(raw).getBigUint64(0);
    snapshots.push(sn);
    if (extraSize < 16) incomplete.push(i);
  }
  const pos = reader.position;
  ctx.snapshots = snapshots;
  ctx.snapshotsSize = count > 0 ? pos - offset : 0;
  // Version 3 entries carry at least the 64-bit VM state size and the disk size as extra data.
  if (image.version >= 3) {
    for (const i of incomplete) {
      say(ctx, `${ctx.fix & FIX_ERRORS ? "Repairing" : "ERROR"} snapshot table entry ${i} is incomplete`);
      ctx.snapshotCorruptions++;
    }
  }
}

/** Set up a check of `image`. */
export async function newCheckContext(image: EngineImage, opts: CheckOptions): Promise<CheckContext> {
  const report = emptyReport();
  const fix = opts.fix ?? 0;
  const fileLength = await image.metadata.meta.size();
  return {
    image,
    report,
    refs: new ReferenceCounts(Math.ceil(fileLength / image.clusterSize)),
    fileLength,
    fix,
    rebuild: false,
    nextContiguous: 0,
    snapshots: [],
    snapshotsSize: 0,
    snapshotCorruptions: 0,
    snapshotsDropped: 0,
    l2Tables: new Map(),
    ...(fix === 0 ? { sparseL2: newSparseL2Tables(image) } : {}),
    onMessage: opts.onMessage,
    ...(opts.onReference ? { onReference: opts.onReference } : {}),
    ...(opts.onLeak ? { onLeak: opts.onLeak } : {}),
    steps: new OperationSteps(opts),
  };
}

/** What FIX_ERRORS needs from repair.ts. */
export interface RepairSteps {
  /** Rebuild the refcount structures from `ctx.refs`. */
  rebuildRefcounts(ctx: CheckContext): Promise<void>;
  /** Rewrite the snapshot table as read (QEMU's qcow2_check_fix_snapshot_table). */
  rewriteSnapshotTable(ctx: CheckContext): Promise<void>;
}

/** QEMU's qcow2_check_refcounts: count, compare (and fix), rebuild when needed and allowed, COPIED flags. */
export async function checkRefcounts(ctx: CheckContext, repair?: RepairSteps): Promise<void> {
  const image = ctx.image;
  const report = ctx.report;
  const fix = ctx.fix;
  if (ctx.refs.size > 2 ** 31 - 1) {
    report.checkErrors++;
    throw new CheckAbort("EFBIG");
  }
  report.totalClusters = Math.ceil(image.virtualSize / image.clusterSize);
  await calculateRefcounts(ctx);
  // Without a rebuild but with something to fix, the comparison runs again with fixing (QEMU keeps the
  // counters from before the first comparison for that).
  const before = { ...report, messages: [] };
  let highest = await compareRefcounts(ctx, 0);
  if (ctx.rebuild && fix & FIX_ERRORS) {
    if (!repair) throw new Qcow2Error("INTERNAL", "FIX_ERRORS needs the rebuild from repair.ts");
    const old = { corruptions: report.corruptions, leaks: report.leaks };
    say(ctx, "Rebuilding refcount structure");
    await repair.rebuildRefcounts(ctx);
    report.corruptions = 0;
    report.leaks = 0;
    // The old structures were exchanged: count everything again.
    ctx.rebuild = false;
    ctx.refs.clear();
    ctx.fix = 0;
    await calculateRefcounts(ctx);
    ctx.fix = fix;
    let freshLeaks = 0;
    if (fix & FIX_LEAKS) {
      // The old refcount structures are leaked now: fix that; leaks left over are new ones.
      const saved = { ...report };
      Object.assign(report, { corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0 });
      highest = await compareRefcounts(ctx, FIX_LEAKS);
      if (ctx.rebuild) say(ctx, "ERROR rebuilt refcount structure is still broken");
      freshLeaks = report.leaks;
      Object.assign(report, { ...saved, messages: report.messages });
    }
    if (report.corruptions < old.corruptions) report.corruptionsFixed += old.corruptions - report.corruptions;
    if (report.leaks < old.leaks) report.leaksFixed += old.leaks - report.leaks;
    report.leaks += freshLeaks;
  } else if (fix) {
    if (ctx.rebuild) {
      say(ctx, "ERROR need to rebuild refcount structures");
      report.checkErrors++;
      throw new CheckAbort("EIO");
    }
    if (report.leaks || report.corruptions) {
      Object.assign(report, { ...before, messages: report.messages });
      highest = await compareRefcounts(ctx, fix);
    }
  }
  await checkCopiedFlags(ctx, fix);
  report.imageEndOffset = (highest + 1) * image.clusterSize;
}

/**
 * Check an image (qemu-img check without -r; QEMU's qcow2_co_check_locked with fix 0): open it read-only
 * in check mode (`checkMode: true`). For repairs see repair.ts.
 */
export async function checkImage(image: EngineImage, opts: Omit<CheckOptions, "fix"> = {}): Promise<CheckReport> {
  if (!image.readOnly) await image.flush();
  const ctx = await newCheckContext(image, opts);
  await runCheck(ctx);
  return ctx.report;
}

/** Snapshot table, then refcounts; a failure ends up in `report.failure`. */
export async function runCheck(ctx: CheckContext, repair?: RepairSteps): Promise<void> {
  try {
    await readSnapshotsForCheck(ctx);
    await checkRefcounts(ctx, repair);
    if (ctx.snapshotCorruptions) {
      if (ctx.fix & FIX_ERRORS && repair) {
        await repair.rewriteSnapshotTable(ctx);
        ctx.report.corruptionsFixed += ctx.snapshotCorruptions;
      } else {
        ctx.report.corruptions += ctx.snapshotCorruptions;
      }
    }
    ctx.report.rebuildNeeded = ctx.rebuild;
  } catch (e) {
    ctx.report.rebuildNeeded = ctx.rebuild;
    if (e instanceof CheckAbort) {
      ctx.report.failure = e.errno;
      return;
    }
    if (!(e instanceof Qcow2Error) || e.code === "ABORTED") throw e;
    ctx.report.checkErrors++;
    ctx.report.failure = e.errno;
  }
}
