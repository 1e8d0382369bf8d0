/**
 * Copying one or more images (concatenated) into a target as qemu-img convert (QEMU 7.2) does:
 *
 * - the sources are walked by block status: zero regions are not read (and not written when the target reads
 *   as zeros already), regions below the source's backing file are left to the target's backing file (-B),
 *   data is read in chunks of at most 2 MiB;
 * - in data chunks, runs of zero sectors of at least `sparseBytes` (-S, default 4 KiB) become holes (or
 *   zero writes), with QEMU's alignment rules (is_allocated_sectors_min); `sparseBytes` 0 writes everything;
 * - compressed targets (-c) get whole clusters, all-zero chunks skipped;
 * - reads run ahead of the writes; writes are issued in order, so the target's layout is the one QEMU's
 *   in-order copy produces.
 *
 * Failures carry where they happened: QEMU's "error while reading at byte N" / "writing at byte N".
 */
import { isAllZero } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent } from "./block-image";
import { Qcow2Image } from "./qcow2-image";

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE. */
const IO_BUFFER_BYTES = 2 * 1024 * 1024;
/** BDRV_REQUEST_MAX_SECTORS in bytes: the largest single request. */
const MAX_REQUEST_BYTES = 2147483136;

export type ConvertFailureKind = "status" | "read" | "write";

export class ConvertFailure extends Error {
  override readonly name = "ConvertFailure";
  constructor(
    readonly kind: ConvertFailureKind,
    /** Byte offset in the (concatenated) input for reads and writes; for status, the sector number. */
    readonly offset: number,
    override readonly cause: unknown,
  ) {
    super(`${kind} failed at ${offset}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

export interface ConvertOptions {
  /** Minimum run of zero bytes that becomes sparse (-S); a multiple of 512; 0 writes everything. Default 4096. */
  sparseBytes?: number;
  /** Write compressed clusters (-c). */
  compressed?: boolean;
  /** The target has a backing file (-B): regions unallocated above the source's backing file are not written. */
  targetHasBacking?: boolean;
  /** The target reads as zeros where nothing is written (a freshly created target; not with -n). */
  targetZeroInit?: boolean;
  /** Chunks read ahead of the write in progress. Default 2. */
  readAhead?: number;
  /** Writes in flight at once (issued in order). Default 1. */
  writesInFlight?: number;
  /** qemu_progress_print(percent, 0): the percentage of the data to copy that is done. */
  onProgress?: (percent: number) => void;
}

type Status = "data" | "zero" | "backing";

interface Chunk {
  /** Offset in the concatenated input (= in the target). */
  offset: number;
  length: number;
  status: Status;
  source: BlockImage;
  /** Offset in `source`. */
  sourceOffset: number;
}

/** Cluster size of an image as bdrv_get_info reports it (0 for raw). */
function infoClusterSize(image: BlockImage): number {
  return image instanceof Qcow2Image ? image.clusterSize : 0;
}

/** The largest power of two not above n (pow2floor; 0 for 0). */
function pow2floor(n: number): number {
  return n <= 0 ? 0 : 2 ** Math.floor(Math.log2(n));
}

/**
 * The chunks convert works through, in order (convert_iteration_sectors): by source block status, aligned to
 * the source's cluster size, data limited to 2 MiB, whole clusters for compressed targets.
 */
async function* planChunks(
  sources: BlockImage[],
  o: Required<Pick<ConvertOptions, "compressed" | "targetHasBacking">> & { clusterBytes: number; fullyAllocate: boolean },
): AsyncGenerator<Chunk> {
  const total = sources.reduce((n, s) => n + s.virtualSize, 0);
  let base = 0;
  for (const source of sources) {
    const size = source.virtualSize;
    const srcAlign = Math.max(1, infoClusterSize(source) / SECTOR);
    let pos = 0;
    let statusEnd = 0;
    let status: Status = "data";
    let extents: BlockStatusExtent[] = [];
    let ei = 0;
    while (pos < size) {
      let n = Math.min(size - pos, MAX_REQUEST_BYTES, total - (base + pos));
      if (statusEnd <= pos) {
        // Block status from pos (extents fetched in windows).
        while (ei < extents.length && extents[ei]!.offset + extents[ei]!.length <= pos) ei++;
        if (ei >= extents.length) {
          try {
            extents = await source.blockStatus(pos, Math.min(size - pos, 1024 * 1024 * 1024));
          } catch (e) {
            throw new ConvertFailure("status", (base + pos) / SECTOR, e);
          }
          ei = 0;
        }
        const e = extents[ei]!;
        let count = e.offset + e.length - pos;
        // Below the source's backing file (when the target has one): left unallocated.
        const belowBase = o.targetHasBacking && e.depth > 0;
        let sectors = Math.ceil(count / SECTOR);
        const tail = (pos / SECTOR + sectors) % srcAlign;
        if (sectors > tail) sectors -= tail;
        count = Math.min(sectors * SECTOR, size - pos);
        if (belowBase) status = "backing";
        else if (e.zero) status = o.fullyAllocate ? "data" : "zero";
        else if (e.data) status = "data";
        else status = o.targetHasBacking ? "backing" : "data";
        statusEnd = pos + count;
      }
      n = Math.min(n, statusEnd - pos);
      // Compressed targets get one cluster per request.
      if (status === "data") n = Math.min(n, o.compressed ? o.clusterBytes : IO_BUFFER_BYTES);
      if (o.compressed) {
        if (n < o.clusterBytes) {
          n = Math.min(o.clusterBytes, size - pos);
          status = "data";
        } else {
          n = Math.floor(n / o.clusterBytes) * o.clusterBytes;
        }
      }
      yield { offset: base + pos, length: n, status, source, sourceOffset: pos };
      pos += n;
    }
    base += size;
  }
}

const wordsOf = (buf: Uint8Array) => new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);

/** Zero-ness of each 512-byte sector of `buf` (a multiple of 512 bytes, or the image's last partial sector). */
function sectorIsZero(words: Uint32Array, buf: Uint8Array, sector: number): boolean {
  const from = sector * 128;
  const to = Math.min(words.length, from + 128);
  for (let i = from; i < to; i++) if (words[i] !== 0) return false;
  // A partial last sector (not a multiple of 4 bytes).
  for (let i = to * 4; i < Math.min(buf.byteLength, (sector + 1) * SECTOR); i++) if (buf[i] !== 0) return false;
  return true;
}

/** is_allocated_sectors: is the first sector data, and how many sectors share that state (aligned). */
function allocatedSectors(words: Uint32Array, buf: Uint8Array, first: number, n: number, sectorNum: number, alignment: number): { data: boolean; count: number } {
  if (n <= 0) return { data: false, count: 0 };
  let isZero = sectorIsZero(words, buf, first);
  let i = 1;
  while (i < n && sectorIsZero(words, buf, first + i) === isZero) i++;
  if (i === n) return { data: !isZero, count: i };
  const tail = (sectorNum + i) & (alignment - 1);
  if (tail) {
    if (isZero && i <= tail) isZero = false;
    if (!isZero) i = Math.min(i + alignment - tail, n);
    else i -= tail;
  }
  return { data: !isZero, count: i };
}

/** is_allocated_sectors_min: data runs absorb zero runs shorter than `min` sectors. */
function allocatedSectorsMin(words: Uint32Array, buf: Uint8Array, first: number, n: number, min: number, sectorNum: number, alignment: number): { data: boolean; count: number } {
  if (n < min) min = n;
  const r = allocatedSectors(words, buf, first, n, sectorNum, alignment);
  if (!r.data) return r;
  let used = r.count;
  let checked = used;
  let left = n - used;
  let at = first + used;
  let sec = sectorNum + used;
  while (left > 0) {
    const s = allocatedSectors(words, buf, at, left, sec, alignment);
    at += s.count;
    left -= s.count;
    sec += s.count;
    checked += s.count;
    if (s.data) used = checked;
    else if (s.count >= min) break;
  }
  return { data: true, count: used };
}

/**
 * qemu-img ends a compressed copy with an empty compressed write, on which qcow2 rounds the end of its file
 * up to a whole sector (compressed clusters leave it anywhere).
 */
async function endCompressed(target: BlockImage): Promise<void> {
  await target.flush();
  if (!(target instanceof Qcow2Image)) return;
  const length = await target.meta.size();
  if (length % SECTOR !== 0) await target.meta.resize(Math.ceil(length / SECTOR) * SECTOR);
}

/** A chunk and the buffer its data is read into. */
interface Pending {
  chunk: Chunk;
  buf: Uint8Array | undefined;
  read: Promise<void>;
}

/** Copy `sources` (concatenated) into `target`, which must be at least as large. */
export async function convertImages(sources: BlockImage[], target: BlockImage, opts: ConvertOptions = {}): Promise<void> {
  const sparseBytes = opts.sparseBytes ?? 4096;
  const minSparse = sparseBytes / SECTOR;
  const compressed = opts.compressed ?? false;
  const targetHasBacking = opts.targetHasBacking ?? false;
  const zeroInit = opts.targetZeroInit ?? false;
  const clusterBytes = Math.max(SECTOR, infoClusterSize(target));
  const alignment = Math.max(pow2floor(minSparse), 1);
  // -S 0: zero regions are written as data (the target ends up fully allocated).
  const plan = { compressed, targetHasBacking, clusterBytes, fullyAllocate: minSparse === 0 };
  const counts = (c: Chunk) => c.status === "data" || (minSparse === 0 && c.status === "zero");

  // First pass (metadata only, and only for a progress report): how much will be copied.
  let toCopy = 0;
  if (opts.onProgress) for await (const c of planChunks(sources, plan)) if (counts(c)) toCopy += c.length;
  let copied = 0;

  // Buffers stay at QEMU's 2 MiB: the data read is still in the CPU caches when it is written (larger
  // buffers measured slower on tmpfs).
  const readAhead = Math.max(1, opts.readAhead ?? 2);
  const free: Uint8Array[] = [];
  const startRead = (chunk: Chunk): Pending => {
    if (chunk.status !== "data") return { chunk, buf: undefined, read: Promise.resolve() };
    const buf = (free.pop() ?? new Uint8Array(IO_BUFFER_BYTES)).subarray(0, chunk.length);
    const read = chunk.source.read(chunk.sourceOffset, buf).catch((e: unknown) => {
      throw new ConvertFailure("read", chunk.offset, e);
    });
    // Handled when its turn comes; never an unhandled rejection meanwhile.
    read.catch(() => undefined);
    return { chunk, buf, read };
  };

  const zeroTarget = async (offset: number, length: number) => {
    if (zeroInit) return;
    await target.writeZeroes(offset, length, { unmap: true });
  };

  /** Data runs of a chunk (written) and zero runs of at least -S sectors (holes), as QEMU splits a chunk. */
  const segments = (chunk: Chunk, buf: Uint8Array): Array<{ from: number; to: number; data: boolean }> => {
    if (minSparse === 0) return [{ from: 0, to: buf.byteLength, data: true }];
    const out: Array<{ from: number; to: number; data: boolean }> = [];
    const words = wordsOf(buf.subarray(0, buf.byteLength & ~3));
    const sectors = Math.ceil(buf.byteLength / SECTOR);
    for (let s = 0; s < sectors; ) {
      const r = allocatedSectorsMin(words, buf, s, sectors - s, minSparse, chunk.offset / SECTOR + s, alignment);
      out.push({ from: s * SECTOR, to: Math.min(buf.byteLength, (s + r.count) * SECTOR), data: r.data });
      s += r.count;
    }
    return out;
  };

  const writeChunk = async (p: Pending) => {
    const { chunk } = p;
    let at = chunk.offset;
    try {
      if (chunk.status === "backing") return;
      if (chunk.status === "zero") {
        await zeroTarget(chunk.offset, chunk.length);
        return;
      }
      const buf = p.buf!;
      if (compressed) {
        if (minSparse !== 0 && isAllZero(buf)) await zeroTarget(chunk.offset, chunk.length);
        else await target.write(chunk.offset, buf, { compressed: true });
        return;
      }
      for (const seg of segments(chunk, buf)) {
        at = chunk.offset + seg.from;
        if (seg.data) await target.write(at, buf.subarray(seg.from, seg.to));
        else await zeroTarget(at, seg.to - seg.from);
      }
    } catch (e) {
      if (e instanceof ConvertFailure) throw e;
      throw new ConvertFailure("write", at, e);
    }
  };

  const queue: Pending[] = [];
  const chunks = planChunks(sources, plan);
  let done = false;
  const fill = async () => {
    while (!done && queue.length < readAhead) {
      const next = await chunks.next();
      if (next.done) {
        done = true;
        break;
      }
      queue.push(startRead(next.value));
    }
  };
  // One write at a time, in order: a qcow2 target then allocates as QEMU's in-order copy does (two at once
  // measured no faster on tmpfs, even for raw targets).
  const maxWrites = Math.max(1, opts.writesInFlight ?? 1);
  const writing: Promise<void>[] = [];
  try {
    await fill();
    while (queue.length > 0) {
      const p = queue.shift()!;
      await p.read;
      // Start the next read before writing this chunk: reading and writing overlap.
      const refill = fill();
      const w = writeChunk(p).then(() => {
        if (p.buf) free.push(new Uint8Array(p.buf.buffer, p.buf.byteOffset, IO_BUFFER_BYTES));
        if (counts(p.chunk)) {
          copied += p.chunk.length;
          opts.onProgress?.(toCopy > 0 ? (100 * copied) / toCopy : 100);
        }
      });
      writing.push(w);
      w.catch(() => undefined);
      if (writing.length >= maxWrites) await writing.shift();
      await refill;
    }
    for (const w of writing.splice(0)) await w;
    if (compressed) await endCompressed(target);
  } finally {
    // Let requests still in flight settle before the caller closes the images.
    await Promise.allSettled([...queue.map((p) => p.read), ...writing]);
  }
}
