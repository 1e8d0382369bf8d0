import { Qcow2Error } from "@qcowkit/spec";
import { printableName } from "../printable-name";
import { fromNativeError, type FallocateMode, type NativeFs } from "./native";

/**
 * Sparse-file primitives over the native addon: the allocation map of a file from lseek
 * SEEK_DATA/SEEK_HOLE, and fallocate with QEMU-style errors. Used by FileStore; every function
 * here needs the addon (callers check `nativeFs()` first).
 */

/** One run of a file with the same allocation: `data` false is a hole (reads as zeros, no storage). */
export interface AllocationExtent {
  /** Byte offset in the file. */
  offset: number;
  /** Bytes. */
  length: number;
  /** True when storage is allocated (the bytes may still be zeros); false for a hole. */
  data: boolean;
}

/** Most extents one `allocationExtents` call returns; the caller continues after the last one. */
export const maxExtentsPerCall = 4096;

/**
 * The allocation map of `[offset, offset + length)` of the file behind `fd`, whose size is
 * `fileSize`: contiguous extents from `offset`, adjacent ones of one kind merged, bytes past end of
 * file reported as a hole. At most `maxExtents` extents are returned, so the map may cover only a
 * prefix of the range. A file system without SEEK_HOLE support reports everything as data (the
 * kernel's generic answer), which is never wrong, only less precise.
 */
export function allocationExtents(
  native: NativeFs,
  fd: number,
  name: string,
  offset: number,
  length: number,
  fileSize: number,
  maxExtents: number = maxExtentsPerCall,
): AllocationExtent[] {
  const end = offset + length;
  const extents: AllocationExtent[] = [];
  const push = (start: number, stop: number, data: boolean): void => {
    const last = extents[extents.length - 1];
    if (last && last.data === data && last.offset + last.length === start) last.length += stop - start;
    else extents.push({ offset: start, length: stop - start, data });
  };
  let position = offset;
  while (position < end && extents.length <= maxExtents) {
    if (position >= fileSize) {
      push(position, end, false);
      break;
    }
    const dataStart = seek(native, fd, name, position, "data");
    if (dataStart < 0) {
      // ENXIO: no data from here to end of file.
      push(position, end, false);
      break;
    }
    if (dataStart > position) {
      const holeEnd = Math.min(dataStart, end);
      push(position, holeEnd, false);
      position = holeEnd;
      continue;
    }
    const holeStart = seek(native, fd, name, position, "hole");
    // A hole at or before `position` cannot happen unless the file changed under us: call it data.
    const dataEnd = holeStart > position ? Math.min(holeStart, end) : Math.min(fileSize, end);
    push(position, dataEnd, true);
    position = dataEnd;
  }
  if (extents.length > maxExtents) extents.length = maxExtents;
  return extents;
}

function seek(native: NativeFs, fd: number, name: string, position: number, what: "data" | "hole"): number {
  assertPosition(name, position);
  try {
    return what === "data" ? native.seekData(fd, position) : native.seekHole(fd, position);
  } catch (error) {
    throw fromNativeError(error, `Could not map '${printableName(name)}' at byte ${position}`);
  }
}

/**
 * fallocate(fd, mode, offset, length). Rejects with a one-line Qcow2Error: NOT_SUPPORTED when the
 * file system cannot do `mode` (see `isUnsupportedError`), else the system error after `prefix`.
 * A zero length does nothing.
 */
export async function fallocateRange(
  native: NativeFs,
  fd: number,
  name: string,
  mode: FallocateMode,
  offset: number,
  length: number,
  prefix: string,
): Promise<void> {
  assertPosition(name, offset);
  assertPosition(name, length);
  assertPosition(name, offset + length);
  if (length === 0) return;
  try {
    // Small ranges (a cluster's copy-on-write zeroing) are done in place: the call is quick, and a
    // thread-pool round trip would cost more than the call itself.
    if (length <= syncFallocateBytes) native.fallocateSync(fd, mode, offset, length);
    else await native.fallocate(fd, mode, offset, length);
  } catch (error) {
    throw fromNativeError(error, prefix);
  }
}

/** fallocate calls up to this length run on the calling thread. */
export const syncFallocateBytes = 2 * 1024 * 1024;

function assertPosition(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new Qcow2Error("INTERNAL", `${name}: invalid byte offset ${String(value)}`);
  }
}
