/**
 * qemu-img rebase: give an image another backing file. In safe mode every guest range the image does not
 * allocate itself is compared between the old and the new backing file (2 MiB at a time, 512-byte sectors)
 * and the differing sectors are written into the image first, so the guest sees the same content afterwards.
 */
import { Qcow2Error, type ImageHeader } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { throwIfAborted, type OperationOptions } from "./operation";
import { Qcow2Image } from "./qcow2-image";

const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

/** The piece of the image compared at a time: qemu-img rebase -p moves 100 / (size / this) per compared piece. */
export const REBASE_CHUNK_BYTES = IO_BUF_SIZE;

export interface RebaseOptions extends OperationOptions {
  /** Only change the stored name (qemu-img rebase -u). */
  unsafe?: boolean;
  /**
   * The new backing file is the image at this depth of the old chain: ranges that no image above it
   * allocates are skipped (they read the same either way).
   */
  prefixDepth?: number;
  /**
   * Called once per compared chunk (at most REBASE_CHUNK_BYTES; ranges the image allocates itself are not
   * compared) with the guest bytes examined so far and the image size.
   */
  onProgress?: (done: number, total: number) => void;
}

/** Set the stored backing file name and format (undefined name: no backing file); QEMU's refusals. */
export async function changeBackingFile(image: BlockImage, name: string | undefined, format: string | undefined): Promise<void> {
  if (!(image instanceof Qcow2Image)) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
  if (format !== undefined && name === undefined) throw new Qcow2Error("INVALID_ARGUMENT", "Invalid argument");
  if (name !== undefined && format === undefined) {
    throw new Qcow2Error("INVALID_ARGUMENT", "backing format must be specified");
  }
  if (name !== undefined && image.dataFileRaw) throw new Qcow2Error("INVALID_ARGUMENT", "Invalid argument");
  if (name !== undefined && new TextEncoder().encode(name).byteLength > 1023) {
    throw new Qcow2Error("INVALID_ARGUMENT", "Invalid argument");
  }
  const change = (hdr: ImageHeader) => {
    if (name === undefined || name === "") {
      delete hdr.backingFile;
      delete hdr.extensions.backingFormat;
    } else {
      hdr.backingFile = name;
      if (format !== undefined && format !== "") hdr.extensions.backingFormat = format;
      else delete hdr.extensions.backingFormat;
    }
  };
  try {
    await image.metadata.updateHeader(change);
  } catch (e) {
    if (e instanceof Qcow2Error && e.code === "NO_SPACE") throw new Qcow2Error("NO_SPACE", "No space left in the file header", { errno: "ENOSPC" });
    throw e;
  }
}

/** First sector run of a and b with the same "differs" state: [differs, bytes]. */
function compareRun(a: Uint8Array, b: Uint8Array, from: number, end: number): [boolean, number] {
  const differs = (at: number) => {
    const stop = Math.min(end, at + SECTOR);
    for (let i = at; i < stop; i++) if (a[i] !== b[i]) return true;
    return false;
  };
  const first = differs(from);
  let i = Math.min(end, from + SECTOR);
  while (i < end && differs(i) === first) i = Math.min(end, i + SECTOR);
  return [first, i - from];
}

/**
 * Copy into `image` every sector that reads differently through `oldBacking` and `newBacking` where the
 * image itself does not allocate it (the safe part of qemu-img rebase). Backing images shorter than the
 * image read as zeros beyond their end.
 */
export async function copyBackingDifferences(
  image: BlockImage,
  oldBacking: BlockImage | null,
  newBacking: BlockImage | null,
  opts: RebaseOptions = {},
): Promise<void> {
  const size = image.virtualSize;
  const oldSize = oldBacking?.virtualSize ?? 0;
  const newSize = newBacking?.virtualSize ?? 0;
  const bufOld = new Uint8Array(IO_BUF_SIZE);
  const bufNew = new Uint8Array(IO_BUF_SIZE);
  let offset = 0;
  while (offset < size) {
    throwIfAborted(opts.signal);
    let n = Math.min(IO_BUF_SIZE, size - offset);
    // Like bdrv_is_allocated: the run of sectors that this image allocates, or does not.
    const extents = await image.blockStatus(offset, n);
    const own = (e: (typeof extents)[number]) => e.present && e.depth === 0;
    const allocated = own(extents[0]!);
    n = 0;
    for (const e of extents) {
      if (own(e) !== allocated) break;
      n += e.length;
    }
    if (allocated) {
      offset += n;
      continue;
    }
    // Past the old backing file's end the guest read zeros, whatever the images below it hold: never skipped.
    if (opts.prefixDepth !== undefined && offset < oldSize) {
      n = Math.min(n, oldSize - offset);
      const above = (e: (typeof extents)[number]) => e.present && e.depth < opts.prefixDepth!;
      const skip = !above(extents[0]!);
      let m = 0;
      for (const e of extents) {
        if (m >= n || above(e) === skip) break;
        m += e.length;
      }
      n = Math.min(n, m);
      if (skip) {
        offset += n;
        continue;
      }
    }
    let oldIsZero = false;
    if (offset >= oldSize || !oldBacking) {
      bufOld.fill(0, 0, n);
      oldIsZero = true;
    } else {
      if (offset + n > oldSize) n = oldSize - offset;
      await oldBacking.read(offset, bufOld.subarray(0, n));
    }
    if (offset >= newSize || !newBacking) {
      bufNew.fill(0, 0, n);
    } else {
      if (offset + n > newSize) n = newSize - offset;
      await newBacking.read(offset, bufNew.subarray(0, n));
    }
    let written = 0;
    while (written < n) {
      const [differs, run] = compareRun(bufOld, bufNew, written, n);
      if (differs) {
        if (oldIsZero) await image.writeZeroes(offset + written, run);
        else await image.write(offset + written, bufOld.slice(written, written + run));
      }
      written += run;
    }
    offset += n;
    opts.onProgress?.(offset, size);
  }
  await image.flush();
}
