/**
 * Turning extents into NBD block status descriptors for each metadata context: base:allocation (HOLE = no
 * data, ZERO = reads as zeros), qemu:allocation-depth (0 absent, 1 this image, 2 first backing file, ...)
 * and qemu:dirty-bitmap (bit 0 dirty).
 */
import { NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO } from "./constants";
import type { StatusRun } from "./reply";

/** What block status needs to know of a run of the export. */
export interface ExtentState {
  /** Whether the run holds data (else it is a hole). */
  data: boolean;
  /** Whether it reads as zeros. */
  zero: boolean;
  /** Whether some image of the chain holds it. */
  present: boolean;
  /** 0 for the top image, 1 for its backing file, ... (meaningful when present). */
  depth: number;
}

/** Most descriptors put in one chunk (the spec asks for no more than 2^20; the client asks again for the rest). */
export const MAX_STATUS_RUNS = 1 << 16;

export function allocationFlags(e: Pick<ExtentState, "data" | "zero">): number {
  return (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
}

export function allocationDepthFlags(e: Pick<ExtentState, "present" | "depth">): number {
  return e.present ? e.depth + 1 : 0;
}

export function dirtyFlags(r: { dirty: boolean }): number {
  return r.dirty ? NBD_STATE_DIRTY : 0;
}

/**
 * Descriptors for [offset, offset+length) from ranges in guest order: clipped to the request, merged where
 * the flags are equal, cut at the first gap, at most one with `reqOne`. Never empty: a range the device
 * said nothing about is reported with status 0 (always a safe answer).
 */
export function statusRuns<T extends { offset: number; length: number }>(
  ranges: readonly T[],
  flagsOf: (range: T) => number,
  offset: number,
  length: number,
  opts: { reqOne?: boolean; maxRuns?: number } = {},
): StatusRun[] {
  const maxRuns = opts.reqOne ? 1 : (opts.maxRuns ?? MAX_STATUS_RUNS);
  const end = offset + length;
  const runs: StatusRun[] = [];
  let at = offset;
  for (const range of ranges) {
    if (at >= end) break;
    const rangeEnd = range.offset + range.length;
    if (rangeEnd <= at) continue;
    if (range.offset > at) break;
    const runEnd = Math.min(rangeEnd, end);
    const flags = flagsOf(range);
    const last = runs[runs.length - 1];
    if (last !== undefined && last.flags === flags) {
      last.length += runEnd - at;
    } else {
      if (runs.length === maxRuns) break;
      runs.push({ length: runEnd - at, flags });
    }
    at = runEnd;
  }
  if (runs.length === 0) runs.push({ length, flags: 0 });
  return runs;
}
