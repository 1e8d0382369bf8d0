/**
 * The check's vocabulary and bookkeeping, shared by check.ts and repair.ts: the report, the fix flags, the
 * in-memory reference counts, the context one check run carries, and the message and counting helpers.
 */
import {
  errnoText,
  type Errno,
} from "@qcowkit/spec";
import type { EngineImage } from "./engine-image";
import type { OperationOptions, OperationSteps } from "./operation";
import type { SparseL2Tables } from "./check-sparse-l2";
import { type SnapshotInfo } from "./snapshots";

/** QEMU's BDRV_FIX_LEAKS: lower refcounts that are too high. */
export const FIX_LEAKS = 1;
/** QEMU's BDRV_FIX_ERRORS: raise refcounts that are too low, rebuild, fix entries and COPIED flags. */
export const FIX_ERRORS = 2;

/** How a message line is printed: "plain" as is (QEMU's fprintf), "report" after "PROG: " (error_report). */
export type CheckMessageKind = "plain" | "report";

export interface CheckReport {
  /** QEMU's message lines, in order (what qemu-img prints on stderr, without the "PROG: " of "report" lines). */
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
  /** The check could not complete (QEMU's negative return): qemu-img prints "Check failed: <errno text>". */
  failure?: CheckFailure;
}

/**
 * Why a check could not complete: an errno, or ENOMEDIUM when the image was marked corrupt during a repair
 * (QEMU then makes the image unusable and the second checking pass fails with "No medium found").
 */
export type CheckFailure = Errno | "ENOMEDIUM";

/** strerror() of a check failure. */
export function checkFailureText(f: CheckFailure): string {
  return f === "ENOMEDIUM" ? "No medium found" : errnoText[f];
}

export interface CheckOptions extends OperationOptions {
  /** L1 entries counted, of those of the active table and of the snapshots' tables. */
  onProgress?: (done: number, total: number) => void;
  /** FIX_LEAKS | FIX_ERRORS, 0 (default) to only check. The image must be writable to fix. */
  fix?: number;
  /** Receives every message line as it is produced. */
  onMessage?: (line: string, kind: CheckMessageKind) => void;
  /**
   * Receives every reference the check counts, with what holds it (the cluster map draws from these), and
   * every data-file cluster an L2 entry maps ("data-file": an offset in the external data file).
   */
  onReference?: (kind: ClusterUse, offset: number, size: number) => void;
  /** Receives each cluster of the qcow2 file with a refcount but no reference (a leak). */
  onLeak?: (cluster: number) => void;
}

/** What a counted reference is: the structure that uses those bytes. */
export type ClusterUse =
  | "header"
  | "l1"
  | "l2"
  | "data"
  | "compressed"
  | "snapshot-table"
  | "snapshot-l1"
  | "refcount-table"
  | "refcount-block"
  | "encryption"
  | "bitmap-directory"
  | "bitmap-table"
  | "bitmap-data"
  | "data-file";

export const hex = (n: number | bigint) => n.toString(16);

/** C's "%#" PRIx64: "0x" before non-zero values only. */
export const altHex = (n: number | bigint): string => (n === 0 || n === 0n ? "0" : `0x${n.toString(16)}`);

/** A failure that ends the check (QEMU returns a negative errno), after its message was printed. */
export class CheckAbort extends Error {
  constructor(readonly errno: Errno) {
    super(errno);
  }
}

const CHUNK_BITS = 16;
const CHUNK = 1 << CHUNK_BITS;

/**
 * The in-memory refcount table (QEMU's IMRT): one counter per host cluster of the qcow2 file, stored in
 * chunks allocated on first use, so memory follows the clusters actually referenced. `size` is QEMU's
 * nb_clusters: the clusters the comparison covers (the file's, or more when references lie past its end).
 */
export class ReferenceCounts {
  private chunks: Array<Uint32Array | undefined> = [];
  size: number;

  constructor(clusters: number) {
    this.size = clusters;
  }

  get(cluster: number): number {
    const chunk = this.chunks[cluster >>> CHUNK_BITS];
    return chunk ? chunk[cluster & (CHUNK - 1)]! : 0;
  }

  set(cluster: number, value: number): void {
    const index = Math.floor(cluster / CHUNK);
    let chunk = this.chunks[index];
    if (!chunk) {
      if (value === 0) return;
      chunk = this.chunks[index] = new Uint32Array(CHUNK);
    }
    chunk[cluster % CHUNK] = value;
    if (cluster >= this.size) this.size = cluster + 1;
  }

  increment(cluster: number): number {
    const value = this.get(cluster) + 1;
    this.set(cluster, value);
    return value;
  }

  /** True when no cluster of [from, to) has a reference (whole chunks without storage are skipped). */
  noneIn(from: number, to: number): boolean {
    for (let c = from; c < to; ) {
      const chunk = this.chunks[Math.floor(c / CHUNK)];
      const chunkEnd = Math.min(to, (Math.floor(c / CHUNK) + 1) * CHUNK);
      if (chunk) {
        for (; c < chunkEnd; c++) if (chunk[c % CHUNK]) return false;
      }
      c = chunkEnd;
    }
    return true;
  }

  /** Forget every reference, keep `size` (QEMU's memset of the IMRT before a recount). */
  clear(): void {
    this.chunks = [];
  }

  /** Highest cluster with a reference, or -1. */
  highest(): number {
    for (let i = this.chunks.length - 1; i >= 0; i--) {
      const chunk = this.chunks[i];
      if (!chunk) continue;
      for (let j = CHUNK - 1; j >= 0; j--) if (chunk[j]) return i * CHUNK + j;
    }
    return -1;
  }
}

export interface CheckContext {
  image: EngineImage;
  report: CheckReport;
  refs: ReferenceCounts;
  /** Current length of the qcow2 file. */
  fileLength: number;
  fix: number;
  /** The refcount structures must be rebuilt (QEMU's `rebuild`). */
  rebuild: boolean;
  /** Next host offset expected for contiguity (fragmentation statistics). */
  nextContiguous: number;
  /** Snapshots as read by the check (qcow2_check_read_snapshot_table). */
  snapshots: SnapshotInfo[];
  /** Bytes of the snapshot table as read. */
  snapshotsSize: number;
  /** Problems of the snapshot table itself (incomplete entries), fixed by rewriting the table. */
  snapshotCorruptions: number;
  /** Snapshots past QEMU's limits dropped by -r all (counted in snapshotCorruptions too). */
  snapshotsDropped: number;
  /**
   * L2 tables read by the check, by offset, least recently used first: damaged L1 tables name the same
   * cluster many times. Fixes change the cached bytes as they change the disk.
   */
  l2Tables: Map<number, Uint8Array>;
  /** Cancelling and progress: one step per L1 entry. */
  steps: OperationSteps;
  /** A table buffer evicted from `l2Tables`, reused by the next read (the check runs one table at a time). */
  spareL2Table?: Uint8Array | undefined;
  /** Used entries of sparse L2 tables, kept by a check that fixes nothing for its COPIED-flag pass. */
  sparseL2?: SparseL2Tables;
  onMessage: ((line: string, kind: CheckMessageKind) => void) | undefined;
  onReference?: CheckOptions["onReference"];
  onLeak?: CheckOptions["onLeak"];
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

/** Print one message line (QEMU's fprintf to stderr, or error_report with `kind` "report"). */
export function say(ctx: CheckContext, line: string, kind: CheckMessageKind = "plain"): void {
  // Hostile images can make a check find billions of problems: the report keeps the first lines only
  // (every line still reaches onMessage).
  if (ctx.report.messages.length < MAX_REPORT_MESSAGES) ctx.report.messages.push(line);
  ctx.onMessage?.(line, kind);
}

/** Lines a CheckReport keeps. */
export const MAX_REPORT_MESSAGES = 100_000;
/**
 * "Can't get refcount" lines printed per check (QEMU prints one per cluster of each unreadable refcount
 * block, which for a file grown to terabytes by a repair is billions); the errors are counted all the same.
 */
export const MAX_REFCOUNT_FAILURE_LINES = 10_000;

/** Count a reference to every cluster of [offset, offset+size) (QEMU's qcow2_inc_refcounts_imrt). */
export function countReference(ctx: CheckContext, offset: number, size: number, kind: ClusterUse = "data"): void {
  if (size <= 0) return;
  ctx.onReference?.(kind, offset, size);
  const cs = ctx.image.clusterSize;
  if (offset + size - ctx.fileLength >= cs) {
    say(
      ctx,
      `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${hex(offset)} size 0x${hex(size)}`,
    );
    ctx.report.corruptions++;
    return;
  }
  const max = Math.min(ctx.image.metadata.refcounts.maxValue, 0xffffffff);
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + size - 1) / cs);
  for (let c = first; c <= last; c++) {
    if (ctx.refs.get(c) >= max) {
      say(ctx, `ERROR: overflow cluster offset=0x${hex(c * cs)}`);
      say(
        ctx,
        "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
      );
      ctx.report.corruptions++;
      continue;
    }
    ctx.refs.increment(c);
  }
}
