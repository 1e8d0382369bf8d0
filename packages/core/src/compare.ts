/**
 * Comparing two images as qemu-img compare (QEMU 7.2) does: walked by block status (through the backing
 * chains), regions both report as zero are skipped, regions allocated in both are read and compared sector by
 * sector, a region allocated in only one must read as zeros there. Sizes may differ: the extra part of the
 * larger image must read as zeros (unless strict, which refuses different sizes and any difference in
 * block status). Mismatches are reported at the first differing 512-byte sector.
 */
import { isAllZero } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent } from "./block-image";

/** qemu-img compare reads at most this much at a time. */
const IO_BUFFER_BYTES = 2 * 1024 * 1024;
const SECTOR = 512;

export type CompareEvent =
  /** The sizes differ (not strict): printed before the tail of the larger image is checked. */
  | { kind: "size-warning" };

export type CompareResult =
  | { kind: "identical" }
  /** Strict mode and different sizes. */
  | { kind: "strict-size-mismatch" }
  /** Strict mode and different block status at `offset`. */
  | { kind: "strict-status-mismatch"; offset: number }
  | { kind: "content-mismatch"; offset: number }
  /** Block status failed for image 1 or 2. */
  | { kind: "status-failed"; image: 1 | 2; error: unknown }
  /** A read failed. */
  | { kind: "read-failed"; image: 1 | 2; offset: number; error: unknown };

export interface CompareOptions {
  strict?: boolean;
  /** Events in the order QEMU prints them. */
  onEvent?: (e: CompareEvent) => void;
  /** Progress: `delta` percent more of the work is done (qemu_progress_print(delta, 100)). */
  onProgress?: (delta: number) => void;
}

/** QEMU's block status flags of an extent, for the strict comparison. */
function statusFlags(e: BlockStatusExtent, imageSize: number): number {
  return (
    (e.data ? 1 : 0) |
    (e.zero ? 2 : 0) |
    (e.hostOffset !== undefined ? 4 : 0) |
    (e.present ? 8 : 0) |
    (e.offset + e.length >= imageSize ? 16 : 0)
  );
}

/** Block status one extent at a time, fetched in windows. */
class StatusCursor {
  private extents: BlockStatusExtent[] = [];
  private index = 0;

  constructor(
    private readonly image: BlockImage,
    private readonly size: number,
  ) {}

  /** The extent covering `offset` (trimmed to start there). */
  async at(offset: number): Promise<BlockStatusExtent> {
    for (;;) {
      while (this.index < this.extents.length) {
        const e = this.extents[this.index]!;
        if (offset >= e.offset + e.length) {
          this.index++;
          continue;
        }
        if (offset >= e.offset) {
          return { ...e, offset, length: e.offset + e.length - offset, ...(e.hostOffset !== undefined ? { hostOffset: e.hostOffset + (offset - e.offset) } : {}) };
        }
        break;
      }
      const window = Math.min(this.size - offset, 1024 * 1024 * 1024);
      this.extents = await this.image.blockStatus(offset, window);
      this.index = 0;
      if (this.extents.length === 0) throw new Error("block status returned nothing");
    }
  }
}

/** compare_buffers: does the first sector differ, and how far does that state go (whole sectors)? */
function compareBuffers(a: Uint8Array, b: Uint8Array): { differ: boolean; same: number } {
  const sectorDiffers = (at: number) => {
    const end = Math.min(a.byteLength, at + SECTOR);
    for (let i = at; i < end; i++) if (a[i] !== b[i]) return true;
    return false;
  };
  const differ = sectorDiffers(0);
  let i = Math.min(a.byteLength, SECTOR);
  while (i < a.byteLength && sectorDiffers(i) === differ) i += SECTOR;
  return { differ, same: Math.min(i, a.byteLength) };
}

/** The first sector of `buf` that is not all zeros, or -1. */
function findNonZeroSector(buf: Uint8Array): number {
  for (let i = 0; i < buf.byteLength; i += SECTOR) {
    if (!isAllZero(buf.subarray(i, Math.min(buf.byteLength, i + SECTOR)))) return i;
  }
  return -1;
}

export async function compareImages(image1: BlockImage, image2: BlockImage, opts: CompareOptions = {}): Promise<CompareResult> {
  const size1 = image1.virtualSize;
  const size2 = image2.virtualSize;
  const total = Math.min(size1, size2);
  const progressBase = Math.max(size1, size2);
  const progress = (bytes: number) => opts.onProgress?.((bytes / progressBase) * 100);
  if (opts.strict && size1 !== size2) return { kind: "strict-size-mismatch" };
  const cursor1 = new StatusCursor(image1, size1);
  const cursor2 = new StatusCursor(image2, size2);
  const buf1 = new Uint8Array(IO_BUFFER_BYTES);
  const buf2 = new Uint8Array(IO_BUFFER_BYTES);

  /** check_empty_sectors: the range must read as zeros in `image`. */
  const checkEmpty = async (image: BlockImage, which: 1 | 2, offset: number, bytes: number): Promise<CompareResult | undefined> => {
    const buf = buf1.subarray(0, bytes);
    try {
      await image.read(offset, buf);
    } catch (error) {
      return { kind: "read-failed", image: which, offset, error };
    }
    const at = findNonZeroSector(buf);
    return at >= 0 ? { kind: "content-mismatch", offset: offset + at } : undefined;
  };

  let offset = 0;
  while (offset < total) {
    let s1: BlockStatusExtent;
    let s2: BlockStatusExtent;
    try {
      s1 = await cursor1.at(offset);
    } catch (error) {
      return { kind: "status-failed", image: 1, error };
    }
    try {
      s2 = await cursor2.at(offset);
    } catch (error) {
      return { kind: "status-failed", image: 2, error };
    }
    let chunk = Math.min(s1.length, s2.length);
    if (opts.strict && statusFlags(s1, size1) !== statusFlags(s2, size2)) {
      return { kind: "strict-status-mismatch", offset };
    }
    if (s1.zero && s2.zero) {
      // Both read as zeros.
    } else if (s1.present === s2.present) {
      if (s1.present) {
        chunk = Math.min(chunk, IO_BUFFER_BYTES);
        const a = buf1.subarray(0, chunk);
        const b = buf2.subarray(0, chunk);
        try {
          await image1.read(offset, a);
        } catch (error) {
          return { kind: "read-failed", image: 1, offset, error };
        }
        try {
          await image2.read(offset, b);
        } catch (error) {
          return { kind: "read-failed", image: 2, offset, error };
        }
        const { differ, same } = compareBuffers(a, b);
        if (differ || same !== chunk) return { kind: "content-mismatch", offset: offset + (differ ? 0 : same) };
      }
    } else {
      chunk = Math.min(chunk, IO_BUFFER_BYTES);
      const r = s1.present ? await checkEmpty(image1, 1, offset, chunk) : await checkEmpty(image2, 2, offset, chunk);
      if (r) return r;
    }
    offset += chunk;
    progress(chunk);
  }

  if (size1 !== size2) {
    opts.onEvent?.({ kind: "size-warning" });
    const [over, which, overSize, cursor] = size1 > size2 ? [image1, 1 as const, size1, cursor1] : [image2, 2 as const, size2, cursor2];
    while (offset < progressBase) {
      let s: BlockStatusExtent;
      try {
        s = await cursor.at(offset);
      } catch (error) {
        return { kind: "status-failed", image: which, error };
      }
      let chunk = s.length;
      if (s.present && !s.zero) {
        chunk = Math.min(chunk, IO_BUFFER_BYTES);
        const r = await checkEmpty(over, which, offset, chunk);
        if (r) return r;
      }
      offset += Math.min(chunk, overSize - offset);
      progress(chunk);
    }
  }
  return { kind: "identical" };
}
