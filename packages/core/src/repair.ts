/**
 * Repair of a qcow2 image, as QEMU 7.2 does it for `qemu-img check -r leaks|all` and for a dirty image
 * (lazy refcounts after a crash) opened read-write:
 *
 * - the passes of check.ts run with the fix flags: leaked clusters get their refcount lowered (and are
 *   discarded when it drops to 0), too-low refcounts are raised, refcount blocks past the end of the file
 *   are created, unaligned preallocated zero clusters become plain zero clusters, COPIED flags are set from
 *   the refcounts;
 * - a refcount of 0 on a used cluster, or a broken refcount table entry or block, needs the refcount
 *   structures rebuilt (`-r all` only; QEMU's rebuild_refcount_structure): new refcount blocks, slices of
 *   the in-memory refcount table, are written to free clusters, then a new refcount table, and the header is
 *   switched to it; the old structures are then leaked and the recount frees them;
 * - when nothing is left (no corruption, no check error), the dirty and corrupt bits are cleared.
 *
 * `checkAndRepairImage` is the whole of qemu-img check: the run with fixes, then when something was fixed a
 * second checking pass ("Double checking the fixed image now..."), and the exit code.
 */
import { Qcow2Error, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, errnoText, setRefcount, setU64, viewOf, type Errno } from "@qcowkit/spec";
import {
  CheckAbort,
  checkFailureText,
  emptyReport,
  FIX_ERRORS,
  FIX_LEAKS,
  newCheckContext,
  runCheck,
  say,
  signalOverlap,
  type CheckContext,
  type CheckMessageKind,
  type CheckReport,
} from "./check";
import { metadataOverlap } from "./metadata-overlap";
import { writeSnapshotTable } from "./snapshot-ops";
import type { EngineImage } from "./engine-image";

export type RepairMode = "leaks" | "all";

export interface RepairOptions {
  /** Receives every message line as it is produced ("report" lines get the program name in front). */
  onMessage?: (line: string, kind: CheckMessageKind) => void;
  /** Called between the run that fixed something and the second checking pass (qemu-img's summary). */
  onFixed?: (fixRun: CheckReport) => void;
}

/** The fix flags of `qemu-img check -r MODE`. */
export function fixFlags(mode: RepairMode | undefined): number {
  if (mode === "all") return FIX_LEAKS | FIX_ERRORS;
  if (mode === "leaks") return FIX_LEAKS;
  return 0;
}

/**
 * One check with fixes (QEMU's qcow2_co_check_locked): the image must be open read-write in check mode.
 * Clears the dirty and corrupt bits when no corruption and no check error is left.
 */
export async function repairImage(image: EngineImage, mode: RepairMode, opts: RepairOptions = {}): Promise<CheckReport> {
  return checkWithFix(image, fixFlags(mode), opts);
}

async function checkWithFix(image: EngineImage, fix: number, opts: RepairOptions): Promise<CheckReport> {
  if (fix && image.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  if (!image.readOnly) await image.flush();
  const ctx = await newCheckContext(image, { fix, ...(opts.onMessage ? { onMessage: opts.onMessage } : {}) });
  await runCheck(ctx, { rebuildRefcounts: rebuildRefcountStructure, rewriteSnapshotTable });
  const report = ctx.report;
  if (fix && report.failure === undefined && report.checkErrors === 0 && report.corruptions === 0) {
    for (const bit of [INCOMPAT_DIRTY, INCOMPAT_CORRUPT]) {
      if (!(image.metadata.header.incompatibleFeatures & bit)) continue;
      // Everything the repair changed is on disk before the bit goes (QEMU's qcow2_mark_clean/_consistent).
      await image.metadata.meta.flush();
      await image.metadata.updateHeader(({ header }) => {
        header.incompatibleFeatures &= ~bit;
      });
    }
  }
  return report;
}

export interface CheckResult {
  /** What the last checking pass found (the second pass after a repair). */
  report: CheckReport;
  /** The run that fixed something, when there was one (its counts are in `report` too). */
  fixRun?: CheckReport;
  /** qemu-img check's exit code: 0 clean, 1 check failed, 2 corruptions, 3 leaks only. */
  exitCode: 0 | 1 | 2 | 3;
}

/** qemu-img check [-r leaks|all] on an open image (read-write in check mode to repair, else read-only). */
export async function checkAndRepairImage(
  image: EngineImage,
  mode: RepairMode | undefined,
  opts: RepairOptions = {},
): Promise<CheckResult> {
  const corruptionMarks = () => image.warnings.filter((w) => w.startsWith("qcow2: Marking image as corrupt")).length;
  const marksBefore = corruptionMarks();
  let report = await checkWithFix(image, fixFlags(mode), opts);
  let fixRun: CheckReport | undefined;
  if (report.failure === undefined && (report.corruptionsFixed || report.leaksFixed)) {
    fixRun = report;
    opts.onFixed?.(fixRun);
    if (corruptionMarks() > marksBefore) {
      // QEMU makes an image unusable when it marks it corrupt: its second checking pass cannot run.
      return { report: { ...emptyReport(), failure: "ENOMEDIUM" }, fixRun, exitCode: 1 };
    }
    report = await checkWithFix(image, 0, opts);
    report.leaksFixed = fixRun.leaksFixed;
    report.corruptionsFixed = fixRun.corruptionsFixed;
  }
  return { report, ...(fixRun ? { fixRun } : {}), exitCode: checkExitCode(report) };
}

/** qemu-img check's exit code for a report. */
export function checkExitCode(report: CheckReport): 0 | 1 | 2 | 3 {
  if (report.failure !== undefined || report.checkErrors) return 1;
  if (report.corruptions) return 2;
  if (report.leaks) return 3;
  return 0;
}

/**
 * The repair QEMU runs when a dirty image (lazy refcounts, not closed cleanly) is opened read-write: a full
 * `-r all`. Pass it as Qcow2OpenOptions.repairDirty. Throws "Could not repair dirty image" when it fails.
 */
export function dirtyImageRepair(opts: RepairOptions = {}): (image: EngineImage) => Promise<void> {
  return async (image) => {
    const report = await checkWithFix(image, FIX_LEAKS | FIX_ERRORS, opts);
    if (report.failure !== undefined || report.checkErrors) {
      const failure = report.failure ?? "EIO";
      const errno: Errno = failure === "ENOMEDIUM" ? "EIO" : failure;
      throw new Qcow2Error("CORRUPT", `Could not repair dirty image: ${checkFailureText(failure)}`, { errno });
    }
  };
}

interface OnDiskReftable {
  /** Refcount block offsets by index (0: none). */
  entries: number[];
  /** Entries of the table as it will be written (whole clusters). */
  size: number;
}

/**
 * QEMU's alloc_clusters_imrt: find `count` clusters free in the in-memory refcount table from
 * `hint.firstFree` on (growing the table past its end when needed), count them as used, return the first.
 */
function allocClustersImrt(ctx: CheckContext, count: number, hint: { firstFree: number }): number {
  const refs = ctx.refs;
  let cluster = hint.firstFree;
  let firstGap = true;
  let contiguous = 0;
  for (; cluster < refs.size && contiguous < count; cluster++) {
    if (!refs.get(cluster)) {
      contiguous++;
      if (firstGap) {
        hint.firstFree = cluster;
        firstGap = false;
      }
    } else {
      contiguous = 0;
    }
  }
  if (contiguous < count) refs.size = Math.max(refs.size, cluster + count - contiguous);
  cluster -= contiguous;
  for (let i = 0; i < count; i++) refs.set(cluster + i, 1);
  return cluster;
}

/**
 * QEMU's rebuild_refcounts_write_refblocks: for every refcount block range of [first, end) holding a used
 * cluster, allocate the block (once) and write it as a slice of the in-memory table. Returns true when the
 * refcount table had to grow.
 */
async function writeRefblocks(ctx: CheckContext, table: OnDiskReftable, first: number, end: number): Promise<boolean> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const perBlock = image.metadata.refcounts.blockEntries;
  const order = image.header.refcountOrder;
  const hint = { firstFree: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (!ctx.refs.get(cluster)) {
      // Skip runs without references quickly.
      const blockEnd = Math.min(end, (Math.floor(cluster / perBlock) + 1) * perBlock);
      if (ctx.refs.noneIn(cluster, blockEnd)) cluster = blockEnd - 1;
      continue;
    }
    const index = Math.floor(cluster / perBlock);
    const start = index * perBlock;
    let offset: number;
    if (table.size > index && table.entries[index]) {
      offset = table.entries[index]!;
    } else {
      // Never put a refcount block into a range whose block was already written.
      if (hint.firstFree < start) hint.firstFree = start;
      const at = allocClustersImrt(ctx, 1, hint);
      offset = at * cs;
      if (at >= end) end = at + 1; // the block holding this block's refcount must be written too
      if (table.size <= index) {
        table.size = Math.ceil(((index + 1) * 8) / cs) * (cs / 8);
        if (table.size * 8 > 8 * 1024 * 1024) {
          say(ctx, "ERROR allocating reftable memory: Cannot allocate memory", "report");
          ctx.report.checkErrors++;
          throw new CheckAbort("ENOSPC");
        }
        grown = true;
      }
      table.entries[index] = offset;
    }
    await writeChecked(ctx, offset, refblockSlice(ctx, start, perBlock, order, cs), "ERROR writing refblock");
    cluster = start + perBlock - 1;
  }
  return grown;
}

/** The refcount block for clusters [start, start+perBlock) from the in-memory refcount table. */
function refblockSlice(ctx: CheckContext, start: number, perBlock: number, order: number, cs: number): Uint8Array {
  const bytes = new Uint8Array(cs);
  for (let j = 0; j < perBlock; j++) {
    const n = ctx.refs.get(start + j);
    if (n) setRefcount(bytes, j, order, n);
  }
  return bytes;
}

/** Write metadata after QEMU's overlap check (against the old structures); failures end the check. */
async function writeChecked(ctx: CheckContext, offset: number, bytes: Uint8Array, what: string): Promise<void> {
  const overlap = metadataOverlap(ctx.image, 0, offset, bytes.byteLength, ctx.snapshots, ctx.snapshotsSize);
  if (overlap) {
    await signalOverlap(ctx, overlap);
    say(ctx, `${what}: Input/output error`, "report");
    ctx.report.checkErrors++;
    throw new CheckAbort("EIO");
  }
  try {
    await ctx.image.metadata.meta.write(offset, bytes);
  } catch (e) {
    const errno: Errno = e instanceof Qcow2Error ? e.errno : "EIO";
    say(ctx, `${what}: ${errnoText[errno]}`, "report");
    ctx.report.checkErrors++;
    throw new CheckAbort(errno);
  }
}

/**
 * QEMU's rebuild_refcount_structure: new refcount blocks and table from the in-memory refcount table (which
 * gets their clusters counted), the header switched to the new table with one write. The old structures are
 * leaked afterwards; the caller's recount frees them.
 */
export async function rebuildRefcountStructure(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  const cs = image.clusterSize;
  const rc = image.metadata.refcounts;
  const table: OnDiskReftable = { entries: [], size: 0 };
  await writeRefblocks(ctx, table, 0, ctx.refs.size);
  let reftableOffset: number;
  let reftableClusters: number;
  let grown: boolean;
  do {
    reftableClusters = Math.ceil((table.size * 8) / cs);
    reftableOffset = allocClustersImrt(ctx, reftableClusters, { firstFree: 0 }) * cs;
    const first = reftableOffset / cs;
    // The blocks describing the new table's clusters change: write them again.
    grown = await writeRefblocks(ctx, table, first, first + reftableClusters);
  } while (grown);
  const bytes = new Uint8Array(table.size * 8);
  const v = viewOf(bytes);
  for (let i = 0; i < table.size; i++) if (table.entries[i]) setU64(v, i * 8, table.entries[i]!);
  await writeChecked(ctx, reftableOffset, bytes, "ERROR checking reftable");
  // The blocks and the table are durable before the header points to them.
  await image.metadata.meta.flush();
  try {
    await image.metadata.setHeaderFields({ refcountTableOffset: reftableOffset, refcountTableClusters: reftableClusters });
  } catch (e) {
    const errno: Errno = e instanceof Qcow2Error ? e.errno : "EIO";
    say(ctx, `ERROR setting reftable: ${errnoText[errno]}`, "report");
    throw new CheckAbort(errno);
  }
  rc.adoptTable(reftableOffset, reftableClusters, bytes);
  image.metadata.metadataChanged();
  ctx.fileLength = await image.metadata.meta.size(); // the new structures may lie past the old end
}

/**
 * QEMU's qcow2_check_fix_snapshot_table: write the snapshot table as the check read it (incomplete entries
 * get the extra data version 3 requires), through a newly allocated table; the old one is freed.
 */
async function rewriteSnapshotTable(ctx: CheckContext): Promise<void> {
  const image = ctx.image;
  image.metadata.replaceSnapshots(ctx.snapshots);
  try {
    if (ctx.snapshotCorruptions === ctx.snapshotsDropped) {
      // Only snapshots dropped from the end: the table stays where it is, the header's count shrinks.
      await image.metadata.setHeaderFields({ nbSnapshots: ctx.snapshots.length });
      return;
    }
    // QEMU's overlap check of the new table's place, against the table as it was read.
    await writeSnapshotTable(image, ctx.snapshots, async (offset, size) => {
      const overlap = metadataOverlap(image, 0, offset, size, ctx.snapshots, ctx.snapshotsSize);
      if (!overlap) return;
      await signalOverlap(ctx, overlap);
      throw new Qcow2Error("IO_ERROR", "Overlap with metadata", { errno: "EIO" });
    });
  } catch (e) {
    const errno: Errno = e instanceof Qcow2Error ? e.errno : "EIO";
    say(ctx, `ERROR failed to update snapshot table: ${errnoText[errno]}`);
    ctx.report.checkErrors++;
    throw new CheckAbort(errno);
  }
}
