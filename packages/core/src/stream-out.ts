/**
 * An image as one forward byte stream (a Web ReadableStream): raw (every guest byte in order) or a qcow2 file
 * laid out so that it is written front to back and never sought:
 *
 *   cluster 0            header (+ backing file name and format)
 *   L1 table             all its clusters
 *   refcount table       all its clusters
 *   refcount blocks      covering every host cluster of the stream
 *   per L2 range         its L2 table, then its data clusters in guest order (compressed ones packed)
 *
 * Every reference points forward, so `streamToImage` (stream-in.ts) converts such a stream in one pass.
 * The refcount structures precede the data and depend on how much data there is, so the stream is planned
 * first: a pass over the source's block status that reads the clusters block status calls data (to leave
 * zero clusters out, and to learn compressed sizes with -c). The payloads it finds are kept for the emitting
 * pass: the first `bufferBytes` in memory, the rest in the `scratch` store, in order (so no byte of the source
 * is read twice). Without a scratch store, the emitting pass reads (and compresses) those past the budget again.
 */
import { writeL2Entry, type L2EntryValue } from "@qcowkit/cluster";
import {
  Qcow2Error,
  encodeImageHeader,
  isAllZero,
  rechunk,
  l1EntriesForSize,
  l2EntriesPerTable,
  maxRefcount,
  refcountBlockEntries,
  setL1Entry,
  setRefcount,
  setReftableEntry,
  viewOf,
  type ByteStore,
  type CompressionType,
} from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent } from "./block-image";
import { getCodec, type CompressionCodec } from "./compression";
import { abortError, throwIfAborted, type OperationOptions } from "./operation";
import { newImageHeader, validateCreateOptions } from "./create";

export interface ImageToStreamOptions extends OperationOptions {
  /** "qcow2" (default) or "raw". */
  format?: "raw" | "qcow2";
  /** qcow2: bytes per cluster, a power of two from 512 to 2 MiB (default 64 KiB). */
  clusterSize?: number;
  /** qcow2: 2 (compat=0.10) or 3 (compat=1.1, default). */
  version?: 2 | 3;
  /** qcow2: refcount entry width in bits (default 16). */
  refcountBits?: number;
  /** qcow2: extended L2 entries (subclusters). */
  extendedL2?: boolean;
  /** qcow2: the header's compression type (default zlib). */
  compressionType?: CompressionType;
  /** qcow2: compress the data clusters. */
  compress?: boolean;
  /** qcow2: the backing file name stored in the stream. */
  backingFile?: string;
  backingFormat?: string;
  /** qcow2 incremental stream: only clusters whose content differs from `base` are carried (give `backingFile`
   *  too: the name the stream stores for it). */
  base?: BlockImage;
  /** Payload bytes the plan keeps in memory for the emitting pass (default 32 MiB). */
  bufferBytes?: number;
  /**
   * Where the payloads the plan reads past `bufferBytes` wait for the emitting pass (opened on first need; the
   * caller removes it afterwards). With it, no byte of the source is read twice and memory stays bounded;
   * without it, those clusters are read (and compressed) again from the source.
   */
  scratch?: () => ByteStore | Promise<ByteStore>;
  /** Largest chunk the stream enqueues (default 2 MiB; at least one cluster). */
  chunkBytes?: number;
  /** Guest bytes handled so far, of `total` (planning counts as the first half for qcow2). */
  onProgress?: (done: number, total: number) => void;
}

const MIB = 1024 * 1024;
const DEFAULT_CHUNK = 2 * MIB;
const DEFAULT_BUFFER = 32 * MIB;

/** Per-cluster plan values: 0 unallocated, ZERO a zero cluster, `clusterSize` plain data, else compressed bytes. */
const ZERO = -1;

/** An image's guest content as a stream; see the file comment. Nothing is read before the first pull. */
export function imageToStream(image: BlockImage, options: ImageToStreamOptions = {}): ReadableStream<Uint8Array> {
  const format = options.format ?? "qcow2";
  if (format !== "raw" && format !== "qcow2") throw new Qcow2Error("INVALID_ARGUMENT", `Unknown stream format '${String(format)}'`);
  if (format === "raw") {
    for (const k of ["compress", "backingFile", "base", "extendedL2"] as const) {
      if (options[k] !== undefined && options[k] !== false) throw new Qcow2Error("INVALID_ARGUMENT", `Option '${k}' needs a qcow2 stream`);
    }
  }
  const chunks = format === "raw" ? rawChunks(image, options) : rechunk(qcow2Chunks(image, options, qcow2Settings(image, options)), Math.max(512, options.chunkBytes ?? DEFAULT_CHUNK));
  return fromAsyncIterator(chunks, options.signal);
}

/** A pull-driven stream over an async iterator: nothing is produced before the consumer asks. */
export function fromAsyncIterator(it: AsyncGenerator<Uint8Array>, signal?: AbortSignal): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (signal?.aborted) {
          await it.return(undefined);
          controller.error(abortError(signal));
          return;
        }
        try {
          const r = await it.next();
          if (r.done) controller.close();
          else controller.enqueue(r.value);
        } catch (e) {
          controller.error(e);
        }
      },
      async cancel() {
        await it.return(undefined);
      },
    },
    { highWaterMark: 1 },
  );
}

async function* rawChunks(image: BlockImage, o: ImageToStreamOptions): AsyncGenerator<Uint8Array> {
  const size = image.virtualSize;
  const chunk = Math.max(512, o.chunkBytes ?? DEFAULT_CHUNK);
  const zeros = new Uint8Array(chunk);
  let pos = 0;
  while (pos < size) {
    throwIfAborted(o.signal);
    const extents = await image.blockStatus(pos, Math.min(size - pos, 1024 * MIB));
    for (const e of extents) {
      let at = Math.max(e.offset, pos);
      const end = e.offset + e.length;
      while (at < end) {
        throwIfAborted(o.signal);
        const n = Math.min(chunk, end - at);
        if (e.zero) {
          yield n === chunk ? zeros : zeros.subarray(0, n);
        } else {
          const buf = new Uint8Array(n);
          await image.read(at, buf);
          yield buf;
        }
        at += n;
        o.onProgress?.(at, size);
      }
      pos = end;
    }
    if (extents.length === 0) break;
  }
}

interface Geometry {
  clusterSize: number;
  clusterBits: number;
  extendedL2: boolean;
  version: 2 | 3;
  refcountOrder: number;
  l2Entries: number;
  /** Guest bytes per L2 table. */
  l2Reach: number;
}

/** The plan: per L2 table index, the plan value of each of its clusters (only tables with something in them). */
type Plan = Map<number, Int32Array>;

/** The stream's qcow2 settings, checked as qemu-img create checks them (eagerly: before the first pull). */
function qcow2Settings(image: BlockImage, o: ImageToStreamOptions): { size: number; v: ReturnType<typeof validateCreateOptions>; g: Geometry } {
  const size = Math.ceil(image.virtualSize / 512) * 512;
  const v = validateCreateOptions({
    size,
    ...(o.version !== undefined ? { version: o.version } : {}),
    ...(o.clusterSize !== undefined ? { clusterSize: o.clusterSize } : {}),
    ...(o.refcountBits !== undefined ? { refcountBits: o.refcountBits } : {}),
    ...(o.extendedL2 !== undefined ? { extendedL2: o.extendedL2 } : {}),
    ...(o.compressionType !== undefined ? { compressionType: o.compressionType } : {}),
    ...(o.backingFile !== undefined ? { backingFile: o.backingFile } : {}),
    ...(o.backingFormat !== undefined ? { backingFormat: o.backingFormat } : {}),
  });
  if ((o.base === undefined) !== (o.backingFile === undefined)) {
    // The stream leaves clusters equal to the base unallocated: they must read from a backing file that the
    // stream names, and a named backing file must be compared against.
    throw new Qcow2Error("INVALID_ARGUMENT", "An incremental stream needs both 'base' (the image) and 'backingFile' (its name)");
  }
  const g: Geometry = {
    clusterSize: v.clusterSize,
    clusterBits: Math.log2(v.clusterSize),
    extendedL2: v.extendedL2,
    version: v.version,
    refcountOrder: Math.log2(v.refcountBits),
    l2Entries: l2EntriesPerTable(Math.log2(v.clusterSize), v.extendedL2),
    l2Reach: 0,
  };
  g.l2Reach = g.l2Entries * g.clusterSize;
  return { size, v, g };
}

async function* qcow2Chunks(image: BlockImage, o: ImageToStreamOptions, settings: ReturnType<typeof qcow2Settings>): AsyncGenerator<Uint8Array> {
  const keep = new PayloadKeep(o.bufferBytes ?? DEFAULT_BUFFER, o.scratch, Math.max(o.chunkBytes ?? DEFAULT_CHUNK, settings.g.clusterSize));
  try {
    yield* plannedQcow2(image, o, settings, keep);
  } finally {
    await keep.close();
  }
}

/** Plan the stream (reading the source once), lay it out, then emit it. */
async function* plannedQcow2(image: BlockImage, o: ImageToStreamOptions, settings: ReturnType<typeof qcow2Settings>, keep: PayloadKeep): AsyncGenerator<Uint8Array> {
  const { size, v, g } = settings;
  const codec = o.compress ? await getCodec(v.compressionType) : undefined;
  const hasBacking = o.base !== undefined;
  const progress = (done: number) => o.onProgress?.(done, 2 * size);

  // 1. Plan.
  const plan: Plan = new Map();
  const reader = new ClusterReader(image, o.base, g, size, Math.max(o.chunkBytes ?? DEFAULT_CHUNK, g.clusterSize));
  for await (const c of reader.clusters(o.signal, progress)) {
    let value = 0;
    if (c.data === undefined) {
      value = c.differsFromBase ? ZERO : 0;
    } else {
      const payload = codec ? await compressCluster(codec, c.data, g.clusterSize) : c.data;
      value = payload.byteLength;
      await keep.offer(c.index, payload);
    }
    if (value === ZERO && !hasBacking) value = 0;
    if (value === ZERO && g.version < 3) {
      // compat=0.10 has no zero flag: the zeros are carried as data.
      value = g.clusterSize;
      await keep.offer(c.index, new Uint8Array(g.clusterSize));
    }
    if (value === 0) continue;
    const t = Math.floor(c.index / g.l2Entries);
    let entries = plan.get(t);
    if (!entries) plan.set(t, (entries = new Int32Array(g.l2Entries)));
    entries[c.index % g.l2Entries] = value;
  }
  await keep.seal();

  // 2. Layout: the data region (L2 tables and data) relative to its start, then the metadata in front of it.
  const tables = [...plan.keys()].sort((a, b) => a - b);
  const maxRef = maxRefcount(g.refcountOrder);
  const regionRefs = new GrowableCounts();
  let regionBytes = 0;
  const tableStart = new Map<number, number>();
  for (const t of tables) {
    tableStart.set(t, regionBytes);
    regionBytes = packTable(plan.get(t)!, regionBytes, g, maxRef, regionRefs).end;
  }
  const cs = g.clusterSize;
  const regionClusters = Math.ceil(regionBytes / cs);
  const l1Entries = l1EntriesForSize(size, g.clusterBits, g.extendedL2);
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);
  const perBlock = refcountBlockEntries(g.clusterBits, g.refcountOrder);
  let rbClusters = 1;
  let rtClusters = 1;
  for (;;) {
    const hostClusters = 1 + l1Clusters + rtClusters + rbClusters + regionClusters;
    const rb = Math.ceil(hostClusters / perBlock);
    const rt = Math.max(1, Math.ceil((rb * 8) / cs));
    if (rb === rbClusters && rt === rtClusters) break;
    rbClusters = Math.max(rb, rbClusters);
    rtClusters = Math.max(rt, rtClusters);
  }
  const l1Offset = cs;
  const rtOffset = l1Offset + l1Clusters * cs;
  const rbOffset = rtOffset + rtClusters * cs;
  const regionOffset = rbOffset + rbClusters * cs;
  const metaClusters = regionOffset / cs;
  const hostClusters = metaClusters + regionClusters;

  // 3. Emit: header, L1, refcount table, refcount blocks, then the region.
  const hdr = newImageHeader(v, { size, l1Size: l1Entries, l1TableOffset: l1Offset, refcountTableOffset: rtOffset, refcountTableClusters: rtClusters }, true);
  yield encodeImageHeader(hdr);

  const l1 = new Uint8Array(l1Clusters * cs);
  for (const t of tables) setL1Entry(viewOf(l1), t, regionOffset + tableStart.get(t)!, true);
  yield* slices(l1, cs);

  const rt = new Uint8Array(rtClusters * cs);
  for (let i = 0; i < rbClusters; i++) setReftableEntry(viewOf(rt), i, rbOffset + i * cs);
  yield* slices(rt, cs);

  // Refcount blocks, one cluster at a time (the metadata clusters count 1, the region's as packed).
  for (let b = 0; b < rbClusters; b++) {
    const block = new Uint8Array(cs);
    const first = b * perBlock;
    const last = Math.min(hostClusters, first + perBlock);
    for (let h = first; h < last; h++) {
      setRefcount(block, h - first, g.refcountOrder, h < metaClusters ? 1 : regionRefs.get(h - metaClusters));
    }
    yield block;
  }

  // The region: per table, the L2 table then its payloads (with padding between where packing leaves any).
  let written = 0;
  let guestDone = 0;
  const scratchRefs = new GrowableCounts();
  const zeroPad = new Uint8Array(cs);
  for (const t of tables) {
    throwIfAborted(o.signal);
    const entries = plan.get(t)!;
    const start = tableStart.get(t)!;
    const packed = packTable(entries, start, g, maxRef, scratchRefs);
    const l2 = new Uint8Array(cs);
    const view = viewOf(l2);
    const entryGeometry = { clusterBits: g.clusterBits, extendedL2: g.extendedL2, dataFile: false };
    for (const p of packed.placements) {
      const host = regionOffset + p.at;
      let value: L2EntryValue;
      if (p.value === ZERO) value = g.extendedL2 ? { kind: "unallocated", zeroBits: 0xffffffff } : { kind: "zero" };
      else if (p.value === cs) value = { kind: "normal", hostOffset: host, copied: true };
      else value = { kind: "compressed", hostOffset: host, byteLength: p.value };
      writeL2Entry(view, p.entry, value, entryGeometry);
    }
    if (written !== start) throw new Qcow2Error("INTERNAL", "stream layout mismatch");
    yield l2;
    written += cs;
    // Payloads in guest order, read in runs.
    const dataPlacements = packed.placements.filter((p) => p.value !== ZERO);
    for (const p of dataPlacements) {
      throwIfAborted(o.signal);
      if (p.at > written) {
        yield* padding(zeroPad, p.at - written);
        written = p.at;
      }
      const index = t * g.l2Entries + p.entry;
      let payload = await keep.take(index, p.value);
      if (!payload) {
        const raw = await reader.readCluster(index);
        payload = codec && p.value !== cs ? await compressCluster(codec, raw, cs) : raw;
        if (payload.byteLength !== p.value) throw new Qcow2Error("IO_ERROR", "The source changed while it was streamed");
      }
      yield payload;
      written += payload.byteLength;
      guestDone = Math.max(guestDone, (index + 1) * cs);
      progress(size + Math.min(size, guestDone));
    }
    if (written < packed.end) {
      yield* padding(zeroPad, packed.end - written);
      written = packed.end;
    }
  }
  const endPad = regionClusters * cs - written;
  if (endPad > 0) yield* padding(zeroPad, endPad);
  progress(2 * size);
}

function* slices(bytes: Uint8Array, step: number): Generator<Uint8Array> {
  const big = Math.max(step, DEFAULT_CHUNK - (DEFAULT_CHUNK % step));
  for (let at = 0; at < bytes.byteLength; at += big) yield bytes.subarray(at, Math.min(bytes.byteLength, at + big));
}

function* padding(zeros: Uint8Array, n: number): Generator<Uint8Array> {
  for (let left = n; left > 0; left -= zeros.byteLength) yield left >= zeros.byteLength ? zeros : zeros.subarray(0, left);
}

async function compressCluster(codec: CompressionCodec, data: Uint8Array, cs: number): Promise<Uint8Array> {
  if (data.byteLength < cs) {
    const full = new Uint8Array(cs);
    full.set(data);
    data = full;
  }
  // QEMU keeps a cluster uncompressed unless compression saves at least one byte.
  return (await codec.compress(data, cs)) ?? data;
}

interface Placement {
  entry: number;
  value: number;
  /** Byte offset in the region (zero clusters: unused). */
  at: number;
}

/**
 * Place one L2 table and its payloads from region byte `start` (cluster aligned): the table, then each
 * payload in guest order. Plain clusters are cluster aligned; compressed ones are packed byte by byte, moving
 * on to the next cluster where a host cluster's refcount would exceed the entry width. Adds the references to
 * `refs` (by region cluster) and returns where the next table starts.
 */
function packTable(entries: Int32Array, start: number, g: Geometry, maxRef: number, refs: GrowableCounts): { end: number; placements: Placement[] } {
  const cs = g.clusterSize;
  const placements: Placement[] = [];
  refs.add(start / cs);
  let pos = start + cs;
  for (let i = 0; i < entries.length; i++) {
    const value = entries[i]!;
    if (value === 0) continue;
    if (value === ZERO) {
      placements.push({ entry: i, value, at: 0 });
      continue;
    }
    if (value === cs) {
      pos = Math.ceil(pos / cs) * cs;
      refs.add(pos / cs);
      placements.push({ entry: i, value, at: pos });
      pos += cs;
      continue;
    }
    // Compressed: the bytes [pos, sector end of pos+value) are referenced.
    for (;;) {
      const first = Math.floor(pos / cs);
      const last = Math.floor((Math.ceil((pos + value) / 512) * 512 - 1) / cs);
      let full = false;
      for (let c = first; c <= last; c++) if (refs.get(c) >= maxRef) full = true;
      if (!full) {
        for (let c = first; c <= last; c++) refs.add(c);
        placements.push({ entry: i, value, at: pos });
        pos += value;
        break;
      }
      pos = (first + 1) * cs;
    }
  }
  return { end: Math.ceil(pos / cs) * cs, placements };
}

/** Refcounts by region cluster, growing as needed. */
class GrowableCounts {
  private counts = new Uint32Array(1024);
  get(i: number): number {
    return i < this.counts.length ? this.counts[i]! : 0;
  }
  add(i: number): void {
    if (i >= this.counts.length) {
      const bigger = new Uint32Array(Math.max(i + 1, this.counts.length * 2));
      bigger.set(this.counts);
      this.counts = bigger;
    }
    this.counts[i]!++;
  }
}

/**
 * The payloads the plan read, kept for the emitting pass, which takes them in the same order (guest order):
 * the first `budget` bytes in memory; past that, appended to the spill store when there is one (written and
 * read back in windows, so memory stays bounded), or else dropped, to be read again from the source.
 */
class PayloadKeep {
  private readonly kept = new Map<number, Uint8Array>();
  private bytes = 0;
  private inMemory = true;
  private spill: ByteStore | undefined;
  /** Spill bytes written, and the window being filled. */
  private spillEnd = 0;
  private pending = new Uint8Array(0);
  private pendingFill = 0;
  /** Spill bytes taken back, and the window read ahead. */
  private spillTaken = 0;
  private readWin: { from: number; bytes: Uint8Array } | undefined;
  private readAhead: { from: number; read: Promise<Uint8Array> } | undefined;
  /** Payloads appended to the spill and not taken back yet. */
  spilledCount = 0;
  constructor(
    private readonly budget: number,
    private readonly openSpill: (() => ByteStore | Promise<ByteStore>) | undefined,
    private readonly window: number,
  ) {}

  async offer(index: number, payload: Uint8Array): Promise<void> {
    if (this.inMemory && this.bytes + payload.byteLength <= this.budget) {
      // A copy: the payload may be a view into a whole read window.
      this.kept.set(index, payload.slice());
      this.bytes += payload.byteLength;
      return;
    }
    // Only a prefix stays in memory: everything after the first miss goes on in order.
    this.inMemory = false;
    if (!this.openSpill) return;
    this.spill ??= await this.openSpill();
    if (this.pending.byteLength === 0) this.pending = new Uint8Array(this.window);
    for (let at = 0; at < payload.byteLength; ) {
      const n = Math.min(payload.byteLength - at, this.pending.byteLength - this.pendingFill);
      this.pending.set(payload.subarray(at, at + n), this.pendingFill);
      this.pendingFill += n;
      at += n;
      if (this.pendingFill === this.pending.byteLength) await this.writePending();
    }
    this.spilledCount++;
  }

  private async writePending(): Promise<void> {
    if (this.pendingFill === 0) return;
    await this.spill!.write(this.spillEnd, this.pending.subarray(0, this.pendingFill));
    this.spillEnd += this.pendingFill;
    this.pendingFill = 0;
  }

  /** The plan is complete: what is still in the write window goes to the spill. */
  async seal(): Promise<void> {
    this.inMemory = false;
    if (this.spill) {
      await this.writePending();
      this.pending = new Uint8Array(0);
    }
  }

  /**
   * The payload of cluster `index` of `length` bytes: from memory, or the next one from the spill, or
   * undefined when it must be read again from the source.
   */
  async take(index: number, length: number): Promise<Uint8Array | undefined> {
    const p = this.kept.get(index);
    if (p) {
      this.kept.delete(index);
      return p;
    }
    if (!this.spill || this.spilledCount === 0) return undefined;
    this.spilledCount--;
    const at = this.spillTaken;
    if (this.readWin && at >= this.readWin.from && at + length <= this.readWin.from + this.readWin.bytes.byteLength) {
      // Within the window read last (each window is a buffer of its own): no copy.
      this.spillTaken += length;
      return this.readWin.bytes.subarray(at - this.readWin.from, at - this.readWin.from + length);
    }
    const out = new Uint8Array(length);
    for (let done = 0; done < length; ) {
      const at = this.spillTaken + done;
      if (!this.readWin || at >= this.readWin.from + this.readWin.bytes.byteLength) {
        const bytes = this.readAhead?.from === at ? await this.readAhead.read : await this.readSpill(at);
        this.readWin = { from: at, bytes };
        const next = at + bytes.byteLength;
        this.readAhead = next < this.spillEnd ? { from: next, read: this.readSpill(next) } : undefined;
      }
      const off = at - this.readWin.from;
      const n = Math.min(length - done, this.readWin.bytes.byteLength - off);
      out.set(this.readWin.bytes.subarray(off, off + n), done);
      done += n;
    }
    this.spillTaken += length;
    return out;
  }

  private readSpill(at: number): Promise<Uint8Array> {
    const bytes = new Uint8Array(Math.min(this.window, this.spillEnd - at));
    const read = this.spill!.read(at, bytes).then(() => bytes);
    read.catch(() => undefined); // awaited by take()
    return read;
  }

  async close(): Promise<void> {
    await this.readAhead?.read.catch(() => undefined);
    this.readAhead = undefined;
    this.readWin = undefined;
    this.kept.clear();
  }
}

interface PlannedCluster {
  index: number;
  /** The cluster's bytes when it holds data that must be carried; undefined when it reads as zeros. */
  data?: Uint8Array;
  /** For a zero cluster: whether the base has data there (so the stream must say "zero"). */
  differsFromBase: boolean;
}

/**
 * Walks the source cluster by cluster through block status: clusters that read as zeros are not read; the
 * others are read in windows. With a base, clusters equal to the base's are dropped.
 */
class ClusterReader {
  constructor(
    private readonly image: BlockImage,
    private readonly base: BlockImage | undefined,
    private readonly g: Geometry,
    private readonly size: number,
    private readonly window: number,
  ) {}

  private win: { from: number; bytes: Uint8Array } | undefined;
  private ahead: { from: number; read: Promise<Uint8Array> } | undefined;

  private readWindow(at: number): Promise<Uint8Array> {
    const cs = this.g.clusterSize;
    const window = Math.floor(this.window / cs) * cs;
    const bytes = new Uint8Array(Math.min(window, Math.ceil((this.size - at) / cs) * cs));
    const read = readClipped(this.image, at, bytes).then(() => bytes);
    read.catch(() => undefined); // awaited by whoever uses it
    return read;
  }

  /**
   * One cluster for the emitting pass. Requests come in increasing order: a window is read at a time, and
   * when a request starts where the last window ended (a sequential run), the next window is read ahead.
   */
  async readCluster(index: number): Promise<Uint8Array> {
    const cs = this.g.clusterSize;
    const at = index * cs;
    if (!this.win || at < this.win.from || at + cs > this.win.from + this.win.bytes.byteLength) {
      const sequential = this.win !== undefined && at === this.win.from + this.win.bytes.byteLength;
      const bytes = this.ahead && this.ahead.from === at ? await this.ahead.read : await this.readWindow(at);
      this.ahead = undefined;
      this.win = { from: at, bytes };
      const next = at + bytes.byteLength;
      if (sequential && next < this.size) this.ahead = { from: next, read: this.readWindow(next) };
    }
    const off = at - this.win.from;
    return this.win.bytes.subarray(off, off + cs);
  }

  /** The windows the plan reads, in order, each with its reads started one window ahead. */
  private async *windows(signal: AbortSignal | undefined, progress: (done: number) => void) {
    const cs = this.g.clusterSize;
    const window = Math.floor(this.window / cs) * cs;
    const srcNext = new NextData(this.image);
    const baseNext = this.base ? new NextData(this.base) : undefined;
    for (let from = 0; from < this.size; ) {
      throwIfAborted(signal);
      // Straight past what reads as zeros in both images.
      const next = Math.min(await srcNext.from(from), baseNext ? await baseNext.from(from) : Infinity);
      if (next >= this.size) break;
      from = Math.max(from, Math.floor(next / cs) * cs);
      const to = Math.min(this.size, from + window);
      const srcData = (await srcNext.from(from)) < to;
      const baseData = baseNext !== undefined && (await baseNext.from(from)) < to;
      if (!srcData && !baseData) {
        progress(to);
        from = to;
        continue;
      }
      const n = to - from;
      const src = new Uint8Array(Math.ceil(n / cs) * cs);
      const base = baseData ? new Uint8Array(src.byteLength) : undefined;
      const read = Promise.all([
        srcData ? readClipped(this.image, from, src.subarray(0, n)) : undefined,
        base ? readClipped(this.base!, from, base.subarray(0, n)) : undefined,
      ]);
      read.catch(() => undefined); // awaited by the consumer
      yield { from, n, srcData, src, base, read };
      from = to;
    }
  }

  async *clusters(signal: AbortSignal | undefined, progress: (done: number) => void): AsyncGenerator<PlannedCluster> {
    const cs = this.g.clusterSize;
    const windows = this.windows(signal, progress);
    try {
      let current = await windows.next();
      while (!current.done) {
        const w = current.value;
        // The next window's reads start before this one is scanned.
        const following = windows.next();
        following.catch(() => undefined); // awaited below; not unhandled if this window fails first
        await w.read;
        for (let off = 0; off < w.n; off += cs) {
          const c = w.src.subarray(off, off + cs);
          const index = (w.from + off) / cs;
          const zero = !w.srcData || isAllZero(c);
          if (w.base) {
            if (equalBytes(c, w.base.subarray(off, off + cs))) continue;
            if (zero) {
              yield { index, differsFromBase: true };
              continue;
            }
          } else if (zero) continue;
          yield { index, data: c, differsFromBase: true };
        }
        progress(w.from + w.n);
        current = await following;
      }
    } finally {
      await windows.return(undefined);
    }
    progress(this.size);
  }
}

/** Where an image's next bytes that may not read as zeros start, by block status (Infinity: none). */
class NextData {
  private extents: BlockStatusExtent[] = [];
  private i = 0;
  constructor(private readonly image: BlockImage) {}
  async from(pos: number): Promise<number> {
    const size = this.image.virtualSize;
    for (;;) {
      while (this.i < this.extents.length && this.extents[this.i]!.offset + this.extents[this.i]!.length <= pos) this.i++;
      if (this.i < this.extents.length) {
        const e = this.extents[this.i]!;
        if (!e.zero) return Math.max(pos, e.offset);
        pos = e.offset + e.length;
        continue;
      }
      if (pos >= size) return Infinity;
      this.extents = await this.image.blockStatus(pos, Math.min(size - pos, 2 ** 40));
      this.i = 0;
      if (this.extents.length === 0) return Infinity;
    }
  }
}

/** Read [at, at+into.length) of an image; bytes past its end read as zeros. */
async function readClipped(img: BlockImage, at: number, into: Uint8Array): Promise<void> {
  const n = Math.min(into.byteLength, Math.max(0, img.virtualSize - at));
  if (n > 0) await img.read(at, into.subarray(0, n));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  const wa = a.byteLength % 4 === 0 && a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0;
  if (wa) {
    const x = new Uint32Array(a.buffer, a.byteOffset, a.byteLength / 4);
    const y = new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
    return true;
  }
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
