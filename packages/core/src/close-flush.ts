/**
 * The final flush of a qcow2 image being closed, reported as QEMU's qcow2 reports it: QEMU flushes its L2
 * table cache and then its refcount block cache (each: write the dirty tables, flush the file) and reports
 * each failure on its own line ("Failed to flush the L2 table cache: Input/output error"); the close goes on.
 * Here the first step is the whole crash-safe writeback, the second the refcount blocks alone. The first
 * failure is thrown afterwards (callers that close quietly, as qemu-io does, ignore it).
 */
import { errnoText, isQcow2Error } from "@qcowkit/spec";
import type { MetadataOwner } from "./metadata/owner";

function reason(e: unknown): string {
  if (isQcow2Error(e)) return errnoText[e.errno];
  return e instanceof Error ? e.message : String(e);
}

export async function flushForClose(md: MetadataOwner, report: (line: string) => void): Promise<void> {
  // QEMU's cache flushes reach the qcow2 file only; the data file's flush fails quietly. Metadata pointing at
  // data that did not reach the data file is not written (data before the L2 entry that maps it).
  if (md.data !== md.meta) await md.data.flush();
  let first: unknown;
  // With no L2 or L1 table to write, QEMU's L2 cache flush writes nothing, so a refusal by the snapshot-table
  // validation of the overlap check (INVALID_IMAGE, EFBIG/EINVAL: iotest 080) is the refcounts' alone. I/O errors
  // are reported for both caches, as QEMU does after a failed allocation (whose L2 table QEMU keeps dirty, where
  // qcowkit gives it back: iotest 026's blkdebug cases).
  const tablesDirty = md.l2Cache.hasDirty || md.l1.dirty;
  try {
    await md.flush();
    return;
  } catch (e) {
    first = e;
    if (tablesDirty || !(isQcow2Error(e) && e.code === "INVALID_IMAGE")) report(`error: Failed to flush the L2 table cache: ${reason(e)}`);
  }
  try {
    await md.commitRefcounts("settle");
  } catch (e) {
    report(`error: Failed to flush the refcount block cache: ${reason(e)}`);
  }
  throw first;
}
