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
import { RawImage } from "./raw-image";
import { StoreSlice, type StoreRun } from "./store-slice";
import { abortable, type OperationOptions } from "./operation";

const SECTOR = 512;
/** qemu-img's IO_BUF_SIZE. */
const IO_BUFFER_BYTES = 2 * 1024 * 1024;
/**
 * Target clusters per compressed chunk (at most one I/O buffer). QEMU copies one cluster per request; several
 * at once are compressed as many (a compressed write compresses its clusters together and places them in
 * guest order), so the file is the same, with one read and one write call per chunk instead of per cluster.
 */
const COMPRESSED_CHUNK_CLUSTERS = 8;
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

export interface ConvertOptions extends OperationOptions {
  /** Minimum run of zero bytes that becomes sparse (-S); a multiple of 512; 0 writes everything. Default 4096. */
  sparseBytes?: number;
  /** Write compressed clusters (-c). */
  compressed?: boolean;
  /** The target has a backing file (-B): regions unallocated above the source's backing file are not written. */
  targetHasBacking?: boolean;
  /** The target reads as zeros where nothing is written (a freshly created target; not with -n). */
  targetZeroInit?: boolean;
  /**
   * The target was just created (not -n): with a backing file, zero regions past the end of that backing file
   * need no write (they read as zeros there already).
   */
  targetIsNew?: boolean;
  /** Chunks read ahead of the write in progress. Default 2. */
  readAhead?: number;
  /**
   * Writes in flight at once (issued in order). Default 1. Uncompressed writes into a qcow2 target stay one
   * at a time whatever this says, so that the file is the one an in-order copy makes.
   */
  writesInFlight?: number;
  /**
   * Most bytes of consecutive data chunks copied store to store as one batch (batches start at multiples of
   * it). Default 512 MiB (64 MiB with a progress report, so that it moves); at most one L2 table's reach for
   * a qcow2 target that places its own data. Each batch costs a fixed amount of metadata work, so fewer
   * batches copy faster.
   */
  batchBytes?: number;
  /**
   * Bytes copied of the bytes to copy (data, and zeros with -S 0), after each piece (qemu-img convert -p shows
   * `100 * done / total`, 100 when there is nothing to copy). Asking for it costs a first pass over the
   * sources' metadata to find the total.
   */
  onProgress?: (done: number, total: number) => void;
  /**
   * Salvaging mode (qemu-img convert --salvage): a read error does not stop the copy. The failed range is
   * read again sector by sector; each 512-byte sector that still cannot be read is copied as zeros and
   * reported here (`offset` in the target). Every copy then goes through memory.
   */
  onSalvage?: (offset: number, error: unknown) => void;
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

/**
 * With a target backing file, QEMU asks for the block status of the source's top layer only, and its answer
 * for a region not allocated there covers the whole unallocated run up to the end of the L2 slice, whether
 * or not it crosses the end of the source's backing file: the kind (backing or zero) is the one at the start
 * of the request. Returns where that run ends (the end of extent `ei` for an allocated one).
 */
function unallocatedRunEnd(source: BlockImage, extents: BlockStatusExtent[], ei: number, pos: number): number {
  const inTop = (x: BlockStatusExtent) => x.depth === 0 && x.present;
  let end = extents[ei]!.offset + extents[ei]!.length;
  if (inTop(extents[ei]!) || !(source instanceof Qcow2Image)) return end;
  // One L2 slice (QEMU's default l2-cache-entry-size is the cluster size) maps this many guest bytes.
  const slice = (source.clusterSize / (source.extendedL2 ? 16 : 8)) * source.clusterSize;
  const sliceEnd = (Math.floor(pos / slice) + 1) * slice;
  for (let i = ei + 1; i < extents.length && !inTop(extents[i]!) && end < sliceEnd; i++) end = extents[i]!.offset + extents[i]!.length;
  return Math.min(end, sliceEnd);
}

/** The largest power of two not above n (pow2floor; 0 for 0). */
function pow2floor(n: number): number {
  return n <= 0 ? 0 : 2 ** Math.floor(Math.log2(n));
}

/** Bytes of a compressed chunk: whole target clusters, at most COMPRESSED_CHUNK_CLUSTERS and one I/O buffer. */
function compressedChunkBytes(clusterBytes: number): number {
  return Math.max(1, Math.min(COMPRESSED_CHUNK_CLUSTERS, Math.floor(IO_BUFFER_BYTES / clusterBytes))) * clusterBytes;
}

/**
 * The chunks convert works through, in order (convert_iteration_sectors): by source block status, aligned to
 * the source's cluster size, data limited to 2 MiB, whole clusters for compressed targets.
 */
async function* planChunks(
  sources: BlockImage[],
  o: Required<Pick<ConvertOptions, "compressed" | "targetHasBacking">> & { clusterBytes: number; fullyAllocate: boolean; targetBackingEnd: number },
): AsyncGenerator<Chunk> {
  const total = sources.reduce((n, s) => n + s.virtualSize, 0);
  let base = 0;
  // Bytes at the start of the next sources already covered by a compressed chunk that crossed into them.
  let covered = 0;
  for (const source of sources) {
    const size = source.virtualSize;
    const srcAlign = Math.max(1, infoClusterSize(source) / SECTOR);
    let pos = Math.min(covered, size);
    covered -= pos;
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
        if (o.targetHasBacking) count = unallocatedRunEnd(source, extents, ei, pos) - pos;
        let sectors = Math.ceil(count / SECTOR);
        const tail = (pos / SECTOR + sectors) % srcAlign;
        if (sectors > tail) sectors -= tail;
        count = Math.min(sectors * SECTOR, size - pos);
        // Zeros past the end of a new target's backing file are already there; requests split at that end.
        let pastBackingEnd = false;
        if (o.targetBackingEnd >= 0) {
          if (base + pos >= o.targetBackingEnd) pastBackingEnd = true;
          else count = Math.min(count, o.targetBackingEnd - (base + pos));
        }
        if (belowBase) status = "backing";
        else if (e.zero) status = pastBackingEnd ? "backing" : o.fullyAllocate ? "data" : "zero";
        else if (e.data) status = "data";
        else status = o.targetHasBacking ? "backing" : "data";
        statusEnd = pos + count;
      }
      n = Math.min(n, statusEnd - pos);
      // Compressed targets get whole clusters, a few at a time.
      if (status === "data") n = Math.min(n, o.compressed ? compressedChunkBytes(o.clusterBytes) : IO_BUFFER_BYTES);
      if (o.compressed) {
        if (n < o.clusterBytes) {
          // A short piece is widened to a whole cluster of the target, into the next sources if need be.
          n = Math.min(o.clusterBytes, total - (base + pos));
          status = "data";
        } else {
          n = Math.floor(n / o.clusterBytes) * o.clusterBytes;
        }
      }
      yield { offset: base + pos, length: n, status, source, sourceOffset: pos };
      pos += n;
    }
    if (pos > size) covered += pos - size;
    base += size;
  }
}

/**
 * readInput, salvaging (see ConvertOptions.onSalvage): when the read fails, sector by sector, the sectors that
 * still fail read as zeros.
 */
async function salvageInput(sources: BlockImage[], chunk: Chunk, buf: Uint8Array, onSalvage: (offset: number, error: unknown) => void): Promise<void> {
  try {
    await readInput(sources, chunk, buf);
    return;
  } catch {
    // Read again below, one sector at a time.
  }
  for (let at = 0; at < buf.byteLength; at += SECTOR) {
    const sector = buf.subarray(at, Math.min(buf.byteLength, at + SECTOR));
    try {
      await readInput(sources, { ...chunk, sourceOffset: chunk.sourceOffset + at, offset: chunk.offset + at, length: sector.byteLength }, sector);
    } catch (e) {
      sector.fill(0);
      onSalvage(chunk.offset + at, e);
    }
  }
}

/** Read a chunk's bytes: a compressed chunk may run past the end of its source into the next ones. */
async function readInput(sources: BlockImage[], chunk: Chunk, buf: Uint8Array): Promise<void> {
  let i = sources.indexOf(chunk.source);
  let at = chunk.sourceOffset;
  let done = 0;
  while (done < buf.byteLength) {
    const source = sources[i]!;
    const n = Math.min(buf.byteLength - done, source.virtualSize - at);
    if (n > 0) await source.read(at, buf.subarray(done, done + n));
    done += Math.max(0, n);
    i++;
    at = 0;
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

/** Whether sector `s` (counted from the start of the chunk) reads as zeros. */
type ZeroAt = (s: number) => boolean;

/** is_allocated_sectors: is the first sector data, and how many sectors share that state (aligned). */
function allocatedSectors(zeroAt: ZeroAt, first: number, n: number, sectorNum: number, alignment: number): { data: boolean; count: number } {
  if (n <= 0) return { data: false, count: 0 };
  let isZero = zeroAt(first);
  let i = 1;
  while (i < n && zeroAt(first + i) === isZero) i++;
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
function allocatedSectorsMin(zeroAt: ZeroAt, first: number, n: number, min: number, sectorNum: number, alignment: number): { data: boolean; count: number } {
  if (n < min) min = n;
  const r = allocatedSectors(zeroAt, first, n, sectorNum, alignment);
  if (!r.data) return r;
  let used = r.count;
  let checked = used;
  let left = n - used;
  let at = first + used;
  let sec = sectorNum + used;
  while (left > 0) {
    const s = allocatedSectors(zeroAt, at, left, sec, alignment);
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
  const length = await target.metadata.meta.size();
  if (length % SECTOR !== 0) await target.metadata.meta.resize(Math.ceil(length / SECTOR) * SECTOR);
}

/** A chunk and the buffer its data is read into. */
interface Pending {
  chunk: Chunk;
  buf: Uint8Array | undefined;
  read: Promise<void>;
}

/** Consecutive data chunks of one source copied store to store together (see copyFromStores). */
const BATCH_BYTES = 512 * 1024 * 1024;
/** The same with a progress report, which is updated batch by batch. */
const PROGRESS_BATCH_BYTES = 64 * 1024 * 1024;

/** A data or zero segment of a chunk, in bytes from the chunk's start. */
interface Segment {
  from: number;
  to: number;
  data: boolean;
}

/**
 * The chunks again, consecutive data chunks of one source grouped in arrays of at most BATCH_BYTES (the
 * units copied store to store); other chunks one by one.
 */
async function* batchesOf(chunks: AsyncGenerator<Chunk>, batchBytes: number): AsyncGenerator<Chunk[] | Chunk> {
  let batch: Chunk[] = [];
  let bytes = 0;
  for await (const c of chunks) {
    const last = batch[batch.length - 1];
    const joins =
      c.status === "data" &&
      last !== undefined &&
      last.source === c.source &&
      last.sourceOffset + last.length === c.sourceOffset &&
      bytes + c.length <= batchBytes &&
      Math.floor(c.offset / batchBytes) === Math.floor(batch[0]!.offset / batchBytes);
    if (!joins && batch.length > 0) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    if (c.status === "data") {
      batch.push(c);
      bytes += c.length;
    } else {
      yield c;
    }
  }
  if (batch.length > 0) yield batch;
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
  const targetBackingEnd =
    opts.targetIsNew && targetHasBacking && target instanceof Qcow2Image && target.backing ? target.backing.virtualSize : -1;
  const plan = { compressed, targetHasBacking, clusterBytes, fullyAllocate: minSparse === 0, targetBackingEnd };
  const counts = (c: Chunk) => c.status === "data" || (minSparse === 0 && c.status === "zero");

  // First pass (metadata only, and only for a progress report): how much will be copied.
  let toCopy = 0;
  if (opts.onProgress) for await (const c of abortable(planChunks(sources, plan), opts.signal)) if (counts(c)) toCopy += c.length;
  let copied = 0;
  const chunkDone = (c: Chunk) => {
    if (!counts(c)) return;
    copied += c.length;
    opts.onProgress?.(copied, toCopy);
  };

  const zeroTarget = async (offset: number, length: number) => {
    if (zeroInit) return;
    await target.writeZeroes(offset, length, { unmap: true });
  };

  /** Data runs of a chunk (written) and zero runs of at least -S sectors (holes), as QEMU splits a chunk. */
  const segments = (chunk: Chunk, zeroAt: ZeroAt): Segment[] => {
    if (minSparse === 0) return [{ from: 0, to: chunk.length, data: true }];
    const out: Segment[] = [];
    const sectors = Math.ceil(chunk.length / SECTOR);
    for (let s = 0; s < sectors; ) {
      const r = allocatedSectorsMin(zeroAt, s, sectors - s, minSparse, chunk.offset / SECTOR + s, alignment);
      out.push({ from: s * SECTOR, to: Math.min(chunk.length, (s + r.count) * SECTOR), data: r.data });
      s += r.count;
    }
    return out;
  };

  /** Write one chunk whose data (if any) is in `buf`. */
  const writeChunk = async (chunk: Chunk, buf: Uint8Array | undefined) => {
    let at = chunk.offset;
    try {
      if (chunk.status === "backing") return;
      if (chunk.status === "zero") {
        await zeroTarget(chunk.offset, chunk.length);
        return;
      }
      if (compressed) {
        // Cluster by cluster, as QEMU decides: an all-zero cluster is a zero write (a hole), any other one is
        // compressed. Neighbours of the same kind go in one call.
        const zeroCluster = (from: number) => minSparse !== 0 && isAllZero(buf!.subarray(from, Math.min(chunk.length, from + clusterBytes)));
        for (let from = 0; from < chunk.length; ) {
          const zero = zeroCluster(from);
          let to = Math.min(chunk.length, from + clusterBytes);
          while (to < chunk.length && zeroCluster(to) === zero) to = Math.min(chunk.length, to + clusterBytes);
          at = chunk.offset + from;
          if (zero) await zeroTarget(at, to - from);
          else await target.write(at, buf!.subarray(from, to), { compressed: true });
          from = to;
        }
        return;
      }
      const words = wordsOf(buf!.subarray(0, buf!.byteLength & ~3));
      for (const seg of segments(chunk, (s) => sectorIsZero(words, buf!, s))) {
        at = chunk.offset + seg.from;
        if (seg.data) await target.write(at, buf!.subarray(seg.from, seg.to));
        else await zeroTarget(at, seg.to - seg.from);
      }
    } catch (e) {
      if (e instanceof ConvertFailure) throw e;
      throw new ConvertFailure("write", at, e);
    }
  };

  /**
   * Copy chunks through memory: reads run ahead of the writes, which are issued in order (so a qcow2 target
   * allocates as QEMU's in-order copy does). Buffers stay at QEMU's 2 MiB: the data read is still in the CPU
   * caches when it is written (larger buffers measured slower on tmpfs).
   */
  const copyThroughMemory = async (chunks: AsyncIterator<Chunk> | Iterator<Chunk>) => {
    const readAhead = Math.max(1, opts.readAhead ?? 2);
    const free: Uint8Array[] = [];
    const startRead = (chunk: Chunk): Pending => {
      if (chunk.status !== "data") return { chunk, buf: undefined, read: Promise.resolve() };
      const buf = (free.pop() ?? new Uint8Array(IO_BUFFER_BYTES)).subarray(0, chunk.length);
      const read = (opts.onSalvage ? salvageInput(sources, chunk, buf, opts.onSalvage) : readInput(sources, chunk, buf)).catch((e: unknown) => {
        throw new ConvertFailure("read", chunk.offset, e);
      });
      // Handled when its turn comes; never an unhandled rejection meanwhile.
      read.catch(() => undefined);
      return { chunk, buf, read };
    };
    const queue: Pending[] = [];
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
    // Writes are issued in order. Uncompressed writes into a qcow2 target go one at a time: a write that
    // allocates could otherwise overtake an earlier one (it looks up its L2 table first) and take its
    // clusters, and the file would depend on timing. Reads still run ahead of that write.
    const maxWrites = !compressed && target instanceof Qcow2Image ? 1 : Math.max(1, opts.writesInFlight ?? 1);
    const writing: Promise<void>[] = [];
    try {
      await fill();
      while (queue.length > 0) {
        const p = queue.shift()!;
        await p.read;
        // Start the next read before writing this chunk: reading and writing overlap.
        const refill = fill();
        refill.catch(() => undefined); // Awaited below, after the write is issued: never unhandled meanwhile.
        const w = writeChunk(p.chunk, p.buf).then(() => {
          if (p.buf) free.push(new Uint8Array(p.buf.buffer, p.buf.byteOffset, IO_BUFFER_BYTES));
          chunkDone(p.chunk);
        });
        writing.push(w);
        w.catch(() => undefined);
        if (writing.length >= maxWrites) await writing.shift();
        await refill;
      }
      for (const w of writing.splice(0)) await w;
    } finally {
      // Let requests still in flight settle before the caller closes the images.
      await Promise.allSettled([...queue.map((p) => p.read), ...writing]);
    }
  };

  /** Write guest bytes [at, at + length) of the input, read from `chunk`'s source, through memory. */
  const writeThroughMemory = async (chunk: Chunk, at: number, length: number) => {
    const buf = new Uint8Array(Math.min(IO_BUFFER_BYTES, length));
    for (let done = 0; done < length; done += buf.byteLength) {
      const piece = buf.subarray(0, Math.min(buf.byteLength, length - done));
      const pos = at + done;
      try {
        const part = { ...chunk, offset: pos, sourceOffset: chunk.sourceOffset + (pos - chunk.offset), length: piece.byteLength };
        if (opts.onSalvage) await salvageInput([chunk.source], part, piece, opts.onSalvage);
        else await chunk.source.read(part.sourceOffset, piece);
      } catch (e) {
        throw new ConvertFailure("read", pos, e);
      }
      try {
        await target.write(pos, piece);
      } catch (e) {
        throw new ConvertFailure("write", pos, e);
      }
    }
  };

  /**
   * Copy a batch of consecutive data chunks of one source store to store: the source's zero sectors are
   * found where the data lies (ByteStore.zeroSectors), the chunks are split as QEMU splits them, and the data
   * segments, merged where they touch, are copied by the target's data store (ByteStore.copyFrom) without
   * passing through memory here. False, with nothing done, when the source or target cannot.
   */
  let targetRefuses = false;
  // Raw targets put every byte at its guest offset whatever the data: the copy itself finds the zero sectors.
  const scanWhileCopying = target instanceof RawImage;
  // Qcow2 targets place data by what is zero: they guess, and copy again only when the guess was wrong.
  const guessing = target instanceof Qcow2Image;
  const mergeWrites = !(target instanceof Qcow2Image) || target.hasDataFile;
  /** Where a batch's data is and which of its sectors are zero; undefined when it cannot go store to store. */
  const prepareStores = async (batch: Chunk[]): Promise<{ batch: Chunk[]; slice: StoreSlice; flags: Uint8Array | undefined } | undefined> => {
    // Salvaging reads every byte itself, to catch each read error.
    if (targetRefuses || opts.onSalvage) return undefined;
    const first = batch[0]!;
    const length = batch.reduce((n, c) => n + c.length, 0);
    let runs: StoreRun[] | undefined;
    try {
      runs = await first.source.storeRuns?.(first.sourceOffset, length);
    } catch {
      runs = undefined; // The read path reports the problem in its own words.
    }
    if (!runs || runs.some((r) => r.length % SECTOR !== 0 || (minSparse !== 0 && !scanWhileCopying && !r.store.zeroSectors))) return undefined;
    // (Guessing targets learn the zero sectors from their copy; the others from a scan of the source first.)
    const flags = minSparse !== 0 && !scanWhileCopying && !guessing ? await scanRuns(first, runs, length) : undefined;
    return { batch, slice: new StoreSlice(runs), flags };
  };
  /** The zero sectors of a batch's data, read where it lies. */
  const scanRuns = async (first: Chunk, runs: StoreRun[], length: number): Promise<Uint8Array> => {
    const flags = new Uint8Array(length / SECTOR);
    let at = 0;
    for (const r of runs) {
      try {
        flags.set(await r.store.zeroSectors!(r.offset, r.length), at);
      } catch (e) {
        throw new ConvertFailure("read", first.offset + at * SECTOR, e);
      }
      at += r.length / SECTOR;
    }
    return flags;
  };
  /** Whether each chunk of `batch` is one data segment by QEMU's rules, given its zero sectors. */
  const allData = (batch: Chunk[], scan: Uint8Array): boolean => {
    let base = 0;
    for (const chunk of batch) {
      const chunkScan = scan.subarray(base / SECTOR, base / SECTOR + Math.ceil(chunk.length / SECTOR));
      base += chunk.length;
      if (chunkScan.indexOf(1) < 0) continue;
      const segs = segments(chunk, (s) => chunkScan[s] === 1);
      if (segs.length !== 1 || !segs[0]!.data) return false;
    }
    return true;
  };
  const copyFromStores = async (prepared: { batch: Chunk[]; slice: StoreSlice; flags: Uint8Array | undefined }): Promise<void> => {
    const { batch, slice } = prepared;
    let flags = prepared.flags;
    const first = batch[0]!;
    if (guessing && minSparse !== 0 && !flags) {
      // A fresh qcow2 target: the data is copied once, to where it goes if it holds no zero run QEMU would
      // leave out; the target keeps that copy when it holds none (the usual case for data).
      const scan = new Uint8Array(slice.byteLength / SECTOR);
      let outcome: "written" | "declined" | "unsupported";
      try {
        outcome = await (target as Qcow2Image).writeFromStoresGuessing(first.offset, slice, scan, (sc) => allData(batch, sc));
      } catch {
        // Done again through memory, which says whether reading or writing failed, and where.
        await copyThroughMemory(batch[Symbol.iterator]());
        return;
      }
      if (outcome === "written") {
        for (const chunk of batch) chunkDone(chunk);
        return;
      }
      if (outcome === "declined") flags = scan;
    }
    if (minSparse !== 0 && !flags && !scanWhileCopying) flags = await scanRuns(first, [...slice.runs], slice.byteLength);
    if (scanWhileCopying) {
      // A raw target: the whole batch is copied to its place, zeros included, the zero sectors marked on the
      // way; then the zero segments QEMU leaves unwritten are deallocated again (holes, as QEMU's).
      const scan = minSparse !== 0 ? new Uint8Array(slice.byteLength / SECTOR) : undefined;
      let done = false;
      try {
        done = await (target as RawImage).writeFromStores(first.offset, slice, scan);
      } catch {
        done = false; // Done again through memory, which says whether reading or writing failed, and where.
      }
      if (!done) {
        await copyThroughMemory(batch[Symbol.iterator]());
        return;
      }
      let base = 0;
      for (const chunk of batch) {
        const chunkScan = scan?.subarray(base / SECTOR, base / SECTOR + Math.ceil(chunk.length / SECTOR));
        if (chunkScan && chunkScan.indexOf(1) >= 0) {
          for (const seg of segments(chunk, (s) => chunkScan[s] === 1)) {
            if (seg.data) continue;
            const at = chunk.offset + seg.from;
            try {
              await target.writeZeroes(at, seg.to - seg.from, { unmap: true });
            } catch (e) {
              throw new ConvertFailure("write", at, e);
            }
          }
        }
        base += chunk.length;
        chunkDone(chunk);
      }
      return;
    }
    // Data segments are merged across chunk boundaries while they touch, one copy instead of many, where
    // that cannot move anything: a qcow2 image allocating its own data clusters may make a refcount block in
    // the middle of a long write, which then lands elsewhere than between QEMU's separate writes.
    let pendingFrom = -1;
    let pendingTo = -1;
    const writePending = async () => {
      if (pendingFrom < 0) return;
      const at = first.offset + pendingFrom;
      const len = pendingTo - pendingFrom;
      pendingFrom = pendingTo = -1;
      let done = false;
      try {
        done = (await target.writeFromStores!(at, slice.subarray(at - first.offset, at - first.offset + len))) === true;
        // The target cannot (encrypted, extended L2, no store-to-store copy): later batches go through memory.
        if (!done) targetRefuses = true;
      } catch {
        // Done again through memory, which says whether reading or writing failed, and where.
        done = false;
      }
      if (!done) await writeThroughMemory(first, at, len);
    };
    let base = 0;
    for (const chunk of batch) {
      const flagBase = base / SECTOR;
      const chunkFlags = flags?.subarray(flagBase, flagBase + Math.ceil(chunk.length / SECTOR));
      // No zero sector at all (the usual case for data): one data segment, without the sector-by-sector walk.
      const segs =
        !chunkFlags || chunkFlags.indexOf(1) < 0
          ? [{ from: 0, to: chunk.length, data: true }]
          : segments(chunk, (s) => chunkFlags[s] === 1);
      for (const seg of segs) {
        const from = base + seg.from;
        const to = base + seg.to;
        if (seg.data) {
          if (pendingTo === from && mergeWrites) pendingTo = to;
          else {
            await writePending();
            pendingFrom = from;
            pendingTo = to;
          }
        } else {
          await writePending();
          try {
            await zeroTarget(first.offset + from, to - from);
          } catch (e) {
            throw new ConvertFailure("write", first.offset + from, e);
          }
        }
      }
      base += chunk.length;
    }
    await writePending();
    for (const chunk of batch) chunkDone(chunk);
  };

  /**
   * A batch of data chunks: store to store when all of it can; else chunk by chunk, the chunks that cannot
   * (compressed clusters, zeros read for -S 0, a backing layer) going through memory, in order.
   */
  type Prepared = Awaited<ReturnType<typeof prepareStores>>;
  const copyBatch = async (batch: Chunk[], ahead?: Promise<Prepared>) => {
    const whole = await (ahead ?? prepareStores(batch));
    if (whole) return copyFromStores(whole);
    if (batch.length === 1 || targetRefuses) return copyThroughMemory(batch[Symbol.iterator]());
    let viaMemory: Chunk[] = [];
    for (const chunk of batch) {
      const one = await prepareStores([chunk]);
      if (!one) {
        viaMemory.push(chunk);
        continue;
      }
      if (viaMemory.length > 0) await copyThroughMemory(viaMemory[Symbol.iterator]());
      viaMemory = [];
      await copyFromStores(one);
    }
    if (viaMemory.length > 0) await copyThroughMemory(viaMemory[Symbol.iterator]());
  };

  // Cancelling stops the plan: no new chunk is read or written, those in flight settle, and the abort error
  // comes out of the copy loops below like a read error would.
  const chunks = abortable(planChunks(sources, plan), opts.signal);
  try {
    if (compressed || typeof target.writeFromStores !== "function" || sources.some((s) => typeof s.storeRuns !== "function")) {
      await copyThroughMemory(chunks);
    } else {
      // Batches of consecutive data chunks of one source go store to store; what cannot, and the zero and
      // backing chunks between them, go through memory. The next batch's zero sectors are looked up while
      // the current one is copied.
      // A qcow2 target guessing its data's place needs the batch under one L2 table.
      let batchBytes = Math.max(1, opts.batchBytes ?? (opts.onProgress ? PROGRESS_BATCH_BYTES : BATCH_BYTES));
      if (guessing && !target.hasDataFile && target.metadata.map.l2Coverage >= IO_BUFFER_BYTES) batchBytes = Math.min(batchBytes, target.metadata.map.l2Coverage);
      const items = batchesOf(chunks, batchBytes);
      let current = await items.next();
      let ahead: Promise<Prepared> | undefined;
      try {
        while (!current.done) {
          const item = current.value;
          const next = await items.next();
          if (Array.isArray(item)) {
            const mine = ahead;
            ahead = undefined;
            if (!next.done && Array.isArray(next.value) && !targetRefuses) {
              ahead = prepareStores(next.value);
              ahead.catch(() => undefined); // Awaited in its turn.
            }
            await copyBatch(item, mine);
          } else {
            await writeChunk(item, undefined);
            chunkDone(item);
          }
          current = next;
        }
      } finally {
        if (ahead) await Promise.allSettled([ahead]);
      }
    }
    if (compressed) await endCompressed(target);
  } finally {
    await chunks.return?.(undefined);
  }
}
