/**
 * A raw or qcow2 byte stream into an open image, reading the stream once, front to back.
 *
 * qcow2: the header gives the L1 table's place; the L1 table gives the L2 tables', the L2 tables give the
 * data clusters'. Every place learnt goes into a queue ordered by stream offset, and the stream is read up to
 * the next one. A stream whose metadata precedes its data (imageToStream's, qcow2-to-stdout.py's, and most
 * images qemu-img writes in order) never needs a byte twice. Bytes skipped on the way (neither a table nor
 * data known so far, nor refcount structures) go to a scratch store, created on first need, so that a
 * reference that points back (an L1 table at the end of the file, a reused cluster) is still served: such a
 * stream is spooled as far as it must be, and memory stays bounded by the scratch store's kind.
 *
 * The stream is pulled only when the target has taken the previous bytes (backpressure).
 */
import {
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN_MASK,
  Qcow2Error,
  QCOW2_MAGIC,
  decodeImageHeader,
  decodeHeader,
  HEADER_PROBE_BYTES,
  isAllZero,
  l1EntryHasReservedBits,
  l1EntryL2Offset,
  l2EntriesPerTable,
  reftableEntryOffset,
  viewOf,
  type ByteStore,
  type ImageHeader,
} from "@qcowkit/spec";
import { readL2Entry } from "@qcowkit/cluster";
import { MemoryStore } from "@qcowkit/datafile";
import type { BlockImage } from "./block-image";
import { CompressingTarget } from "./compressing-target";
import { getCodec, type CompressionCodec } from "./compression";
import { abortError, throwIfAborted, type OperationOptions } from "./operation";

export interface StreamToImageOptions extends OperationOptions {
  /** Default: probed from the first bytes (qcow2 magic, else raw). */
  format?: "raw" | "qcow2";
  /** Raw streams, whose size is known at their end only: grow the target as bytes come, then size it exactly
   *  (rounded up to 512 bytes). Otherwise the stream must fit in the target. */
  growTarget?: boolean;
  /** The target reads as zeros already: zero runs and zero clusters are not written. */
  targetZeroInit?: boolean;
  /** Store the data as compressed clusters (qemu-img convert -c; the target must be qcow2). */
  compress?: boolean;
  /** Where bytes that cannot be placed yet are kept, created on first need (default: in memory). */
  scratch?: () => ByteStore | Promise<ByteStore>;
  /** Guest bytes written so far (raw: bytes read), of the virtual size (0 while unknown). */
  onProgress?: (done: number, total: number) => void;
}

export interface StreamToImageResult {
  format: "raw" | "qcow2";
  /** The stream's guest size (raw: the bytes read). */
  virtualSize: number;
  /** qcow2: the backing file the stream names (its unallocated clusters read from there). */
  backingFile?: string;
  backingFormat?: string;
  /** Stream bytes consumed. */
  bytesRead: number;
  /** Whether any skipped bytes had to be kept in scratch. */
  spilled: boolean;
}

const MIB = 1024 * 1024;
/** Raw streams into a growing target: it is resized in steps of this size. */
const GROW_STEP = 1024 * MIB;

const abortReason = (signal: AbortSignal): unknown => abortError(signal);
const truncated = (at: number) => new Qcow2Error("INVALID_IMAGE", `Truncated stream: it ends at byte ${at}`);

/** `bytes` followed by zeros up to `length` bytes. */
function padded(bytes: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

/** Reads a ReadableStream by exact byte counts, counting its position. */
export class StreamBytes {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private chunk: Uint8Array = new Uint8Array(0);
  private at = 0;
  /** Stream bytes consumed so far. */
  position = 0;
  private ended = false;

  constructor(stream: ReadableStream<Uint8Array>, private readonly signal?: AbortSignal) {
    this.reader = stream.getReader();
  }

  /** The next chunk; rejects as soon as the signal aborts, also while the stream is stalled. */
  private next(): Promise<Awaited<ReturnType<ReadableStreamDefaultReader<Uint8Array>["read"]>>> {
    const signal = this.signal;
    if (!signal) return this.reader.read();
    // A listener per read, removed when the read settles (one promise raced by every read would keep a
    // reaction per chunk alive for the whole stream).
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(abortReason(signal));
      signal.addEventListener("abort", onAbort, { once: true });
      this.reader.read().then(
        (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        },
        (e: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  }

  private async fill(): Promise<boolean> {
    while (this.at >= this.chunk.byteLength) {
      if (this.ended) return false;
      throwIfAborted(this.signal);
      const r = await this.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      this.chunk = r.value;
      this.at = 0;
    }
    return true;
  }

  /** Up to `max` bytes as they come (a view; copy before keeping), or undefined at the end. */
  async some(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.fill())) return undefined;
    const n = Math.min(max, this.chunk.byteLength - this.at);
    const out = this.chunk.subarray(this.at, this.at + n);
    this.at += n;
    this.position += n;
    return out;
  }

  /**
   * Exactly `n` bytes (fewer only at the end of the stream: `partial` says so). When the current chunk holds
   * them all they are a view of it, with no copy (a stream's chunks are the reader's once read).
   */
  async read(n: number): Promise<{ bytes: Uint8Array; partial: boolean }> {
    if (n > 0 && (await this.fill()) && this.chunk.byteLength - this.at >= n) {
      const view = this.chunk.subarray(this.at, this.at + n);
      this.at += n;
      this.position += n;
      return { bytes: view, partial: false };
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const piece = await this.some(n - got);
      if (!piece) return { bytes: out.subarray(0, got), partial: true };
      out.set(piece, got);
      got += piece.byteLength;
    }
    return { bytes: out, partial: false };
  }

  async exactly(n: number): Promise<Uint8Array> {
    const r = await this.read(n);
    if (r.partial) throw truncated(this.position);
    return r.bytes;
  }

  /** Skip `n` bytes, handing each piece to `sink` with its stream offset. */
  async skip(n: number, sink?: (offset: number, bytes: Uint8Array) => Promise<void>): Promise<void> {
    let left = n;
    while (left > 0) {
      const start = this.position;
      const piece = await this.some(Math.min(left, 4 * MIB));
      if (!piece) throw truncated(this.position);
      if (sink) await sink(start, piece);
      left -= piece.byteLength;
    }
  }

  /** Read (and drop) the rest of the stream. */
  async drain(): Promise<void> {
    while (await this.some(4 * MIB));
  }

  release(): void {
    this.reader.releaseLock();
  }

  async cancel(reason?: unknown): Promise<void> {
    await this.reader.cancel(reason).catch(() => undefined);
  }
}

/** Write a raw or qcow2 stream into `target`; see the file comment. */
export async function streamToImage(
  stream: ReadableStream<Uint8Array>,
  target: BlockImage,
  options: StreamToImageOptions = {},
): Promise<StreamToImageResult> {
  // With compression, writes are gathered into whole clusters (compressing-target.ts).
  const into = options.compress ? new CompressingTarget(target) : target;
  const bytes = new StreamBytes(stream, options.signal);
  try {
    const head = await bytes.read(4);
    const isQcow2 = !head.partial && viewOf(head.bytes).getUint32(0) === QCOW2_MAGIC;
    const format = options.format ?? (isQcow2 ? "qcow2" : "raw");
    if (format === "qcow2" && !isQcow2) throw new Qcow2Error("INVALID_IMAGE", "The stream is not in qcow2 format");
    const result = format === "raw" ? await rawIn(bytes, head.bytes, into, options) : await qcow2In(bytes, head.bytes, into, options);
    if (into instanceof CompressingTarget) await into.finish();
    bytes.release();
    return result;
  } catch (e) {
    await bytes.cancel(e);
    throw e;
  }
}

async function rawIn(bytes: StreamBytes, head: Uint8Array, target: BlockImage, o: StreamToImageOptions): Promise<StreamToImageResult> {
  let size = target.virtualSize;
  const piece = Math.max(4096, Math.min(target.clusterSize, 2 * MIB));
  const block = 2 * MIB - ((2 * MIB) % piece);
  const buf = new Uint8Array(block);
  buf.set(head);
  let fill = head.byteLength;
  let at = 0;
  const flush = async (n: number) => {
    if (at + n > size && o.growTarget) {
      size = Math.ceil((at + n) / GROW_STEP) * GROW_STEP;
      await target.resize(size);
    }
    if (at + n > size) throw new Qcow2Error("OUT_OF_BOUNDS", `The stream is larger than the target (${size} bytes)`);
    // Piece by piece: zero pieces become holes (or zero writes), runs of data one write.
    let p = 0;
    while (p < n) {
      const len = Math.min(piece, n - p);
      const zero = isAllZero(buf.subarray(p, p + len));
      let q = p + len;
      while (q < n && isAllZero(buf.subarray(q, Math.min(n, q + piece))) === zero) q = Math.min(n, q + piece);
      if (!zero) await target.write(at + p, buf.slice(p, q));
      else if (!o.targetZeroInit) await target.writeZeroes(at + p, q - p);
      p = q;
    }
    at += n;
    o.onProgress?.(at, 0);
  };
  for (;;) {
    const got = await bytes.some(block - fill);
    if (!got) break;
    buf.set(got, fill);
    fill += got.byteLength;
    if (fill === block) {
      await flush(fill);
      fill = 0;
    }
  }
  if (fill > 0) await flush(fill);
  if (o.growTarget) {
    const exact = Math.ceil(at / 512) * 512;
    if (exact !== target.virtualSize) await target.resize(exact, { shrink: true });
  }
  return { format: "raw", virtualSize: at, bytesRead: bytes.position, spilled: false };
}

type Item =
  | { kind: "l1"; offset: number; length: number }
  | { kind: "reftable"; offset: number; length: number }
  | { kind: "skip"; offset: number; length: number }
  | { kind: "l2"; offset: number; length: number; table: number }
  | { kind: "data"; offset: number; length: number; guest: number; alloc: number }
  | { kind: "compressed"; offset: number; length: number; guest: number };

/** A min-heap of items by stream offset. */
class ItemQueue {
  private readonly heap: Item[] = [];
  get size(): number {
    return this.heap.length;
  }
  push(item: Item): void {
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]!.offset <= item.offset) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = item;
  }
  peek(): Item | undefined {
    return this.heap[0];
  }
  pop(): Item | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l]!.offset < (m === i ? last.offset : h[m]!.offset)) m = l;
        if (r < h.length && h[r]!.offset < (m === i ? last.offset : h[m]!.offset)) m = r;
        if (m === i) break;
        h[i] = h[m]!;
        i = m;
      }
      h[i] = last;
    }
    return top;
  }
}

/** The header of a qcow2 stream, decoded from its first cluster (`first` may be shorter: zeros follow). */
export function readQcow2StreamHeader(first: Uint8Array): ImageHeader {
  const img = decodeImageHeader(first);
  const h = img.header;
  if (h.cryptMethod !== 0) throw new Qcow2Error("NOT_SUPPORTED", "Encrypted qcow2 streams are not supported");
  if (h.incompatibleFeatures & INCOMPAT_DATA_FILE) throw new Qcow2Error("NOT_SUPPORTED", "qcow2 streams with an external data file are not supported");
  if (h.incompatibleFeatures & ~INCOMPAT_KNOWN_MASK) {
    throw new Qcow2Error("UNSUPPORTED_FEATURE", `Unsupported qcow2 feature(s) in the stream: 0x${(h.incompatibleFeatures & ~INCOMPAT_KNOWN_MASK).toString(16)}`);
  }
  return img;
}

async function qcow2In(bytes: StreamBytes, head: Uint8Array, target: BlockImage, o: StreamToImageOptions): Promise<StreamToImageResult> {
  // Cluster 0: the fixed header tells the cluster size, then the rest of the cluster.
  const fixedRest = await bytes.read(HEADER_PROBE_BYTES - head.byteLength);
  const fixed = new Uint8Array(HEADER_PROBE_BYTES);
  fixed.set(head);
  fixed.set(fixedRest.bytes, head.byteLength);
  if (fixedRest.partial) throw truncated(bytes.position);
  const cs = 2 ** decodeHeader(fixed).clusterBits;
  const cluster0 = new Uint8Array(cs);
  cluster0.set(fixed);
  cluster0.set(await bytes.exactly(cs - HEADER_PROBE_BYTES), HEADER_PROBE_BYTES);
  const img = readQcow2StreamHeader(cluster0);
  const h = img.header;
  const size = h.size;
  if (target.virtualSize < size) throw new Qcow2Error("OUT_OF_BOUNDS", `The target (${target.virtualSize} bytes) is smaller than the stream's image (${size} bytes)`);
  const extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const l2Entries = l2EntriesPerTable(h.clusterBits, extendedL2);
  const geometry = { clusterBits: h.clusterBits, extendedL2, dataFile: false };
  let codec: CompressionCodec | undefined;
  const codecFor = async () => (codec ??= await getCodec((h.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n && h.compressionType === 1 ? "zstd" : "zlib"));

  const queue = new ItemQueue();
  const bad = (what: string) => new Qcow2Error("INVALID_IMAGE", `Malformed qcow2 stream: ${what}`);
  const aligned = (off: number) => off % cs === 0;
  if (h.l1Size > 0) {
    if (!aligned(h.l1TableOffset) || h.l1TableOffset < cs) throw bad(`L1 table offset 0x${h.l1TableOffset.toString(16)}`);
    if (h.l1Size * 8 > 32 * MIB) throw bad("L1 table too large");
    queue.push({ kind: "l1", offset: h.l1TableOffset, length: h.l1Size * 8 });
  }
  if (h.refcountTableOffset >= cs && aligned(h.refcountTableOffset) && h.refcountTableClusters <= (8 * MIB) / cs) {
    queue.push({ kind: "reftable", offset: h.refcountTableOffset, length: h.refcountTableClusters * cs });
  }

  let scratch: ByteStore | undefined;
  let spilled = false;
  const spill = async (offset: number, piece: Uint8Array) => {
    if (isAllZero(piece)) return;
    if (!scratch) scratch = o.scratch ? await o.scratch() : memoryScratch();
    spilled = true;
    await scratch.write(offset, piece.slice());
  };
  /** The last item's bytes: compressed clusters may share a sector with the one before. */
  let recent: { offset: number; bytes: Uint8Array } = { offset: 0, bytes: new Uint8Array(0) };
  let guestDone = 0;
  const tablesSeen = new Set<number>();

  /** The bytes of [offset, offset+length): behind the stream position from `recent` or scratch, then the stream. */
  const fetch = async (item: Item, tolerateEnd: boolean): Promise<Uint8Array> => {
    if (item.offset === bytes.position) {
      // All of it ahead in the stream (the common case): the bytes as read, no second buffer.
      const r = await bytes.read(item.length);
      if (r.partial && !tolerateEnd) throw truncated(bytes.position);
      const whole = r.partial ? padded(r.bytes, item.length) : r.bytes;
      recent = { offset: item.offset, bytes: whole };
      return whole;
    }
    const out = new Uint8Array(item.length);
    let at = item.offset;
    const end = item.offset + item.length;
    while (at < Math.min(end, bytes.position)) {
      const upTo = Math.min(end, bytes.position);
      const rEnd = recent.offset + recent.bytes.byteLength;
      if (at >= recent.offset && at < rEnd) {
        const n = Math.min(upTo, rEnd) - at;
        out.set(recent.bytes.subarray(at - recent.offset, at - recent.offset + n), at - item.offset);
        at += n;
        continue;
      }
      if (!scratch) throw bad(`a reference points back to byte ${at}, which was not kept`);
      const nextRecent = at < recent.offset ? Math.min(upTo, recent.offset) : upTo;
      await scratch.read(at, out.subarray(at - item.offset, nextRecent - item.offset));
      at = nextRecent;
    }
    if (at < end) {
      if (at > bytes.position) await bytes.skip(at - bytes.position, spill);
      const r = await bytes.read(end - at);
      if (r.partial && !tolerateEnd) throw truncated(bytes.position);
      out.set(r.bytes, at - item.offset);
    }
    recent = { offset: item.offset, bytes: out };
    return out;
  };

  const progress = (guestEnd: number) => {
    guestDone = Math.max(guestDone, Math.min(size, guestEnd));
    o.onProgress?.(guestDone, size);
  };

  let pendingWork = queue.size;
  const push = (item: Item) => {
    if (item.kind !== "skip") pendingWork++;
    queue.push(item);
  };
  while (pendingWork > 0) {
    let item = queue.pop()!;
    if (item.kind === "skip") {
      // Bytes known not to be needed (refcount blocks): read past them without keeping them.
      if (item.offset >= bytes.position) await bytes.skip(item.offset - bytes.position, spill);
      const end = item.offset + item.length;
      if (end > bytes.position) await bytes.skip(end - bytes.position);
      continue;
    }
    pendingWork--;
    if (item.kind === "data" && item.alloc === 0xffffffff) {
      // Clusters that follow each other in the stream and in the guest: one read, one write.
      let length = item.length;
      for (;;) {
        const next = queue.peek();
        if (length >= 2 * MIB || !next || next.kind !== "data" || next.alloc !== 0xffffffff) break;
        if (next.offset !== item.offset + length || next.guest !== item.guest + length) break;
        queue.pop();
        pendingWork--;
        length += next.length;
      }
      item = { ...item, length };
    }
    const data = await fetch(item, item.kind === "compressed" && pendingWork === 0);
    switch (item.kind) {
      case "l1": {
        const view = viewOf(data);
        for (let i = 0; i < h.l1Size; i++) {
          if (l1EntryHasReservedBits(view, i)) throw bad(`L1 entry ${i} has reserved bits set`);
          const l2 = l1EntryL2Offset(view, i);
          if (l2 === 0) continue;
          if (!aligned(l2) || l2 < cs) throw bad(`L2 table offset 0x${l2.toString(16)}`);
          push({ kind: "l2", offset: l2, length: cs, table: i });
        }
        break;
      }
      case "reftable": {
        const view = viewOf(data);
        for (let i = 0; i < data.byteLength / 8; i++) {
          const rb = reftableEntryOffset(view, i);
          if (rb !== 0 && aligned(rb) && rb >= bytes.position) push({ kind: "skip", offset: rb, length: cs });
        }
        break;
      }
      case "l2": {
        if (tablesSeen.has(item.table)) throw bad(`L2 table ${item.table} listed twice`);
        tablesSeen.add(item.table);
        const view = viewOf(data);
        for (let i = 0; i < l2Entries; i++) {
          const guest = (item.table * l2Entries + i) * cs;
          if (guest >= size) break;
          const len = Math.min(cs, size - guest);
          const e = readL2Entry(view, i, geometry);
          const alloc = extendedL2 ? e.allocBits : 0xffffffff;
          const zeroBits = e.zeroBits;
          if (e.kind === "compressed" && e.compressed) {
            const d = e.compressed;
            if (d.hostOffset < cs) throw bad(`compressed cluster offset 0x${d.hostOffset.toString(16)}`);
            push({ kind: "compressed", offset: d.hostOffset, length: d.byteLength, guest });
          } else if (e.kind === "normal") {
            const host = e.hostOffset;
            if (!aligned(host) || host < cs) throw bad(`data cluster offset 0x${host.toString(16)}`);
            if (extendedL2 && (alloc & zeroBits) !== 0) throw bad(`L2 entry ${i} of table ${item.table} is both allocated and zero`);
            if (alloc !== 0) push({ kind: "data", offset: host, length: cs, guest, alloc });
            if (zeroBits !== 0 && !o.targetZeroInit) await zeroSubclusters(target, guest, len, zeroBits, cs);
          } else if (e.kind === "zero") {
            if (!o.targetZeroInit) await target.writeZeroes(guest, len);
          } else if (extendedL2 && zeroBits !== 0 && !o.targetZeroInit) {
            await zeroSubclusters(target, guest, len, zeroBits, cs);
          }
        }
        break;
      }
      case "data": {
        const len = Math.min(item.length, size - item.guest);
        if (item.alloc === 0xffffffff) {
          await target.write(item.guest, data.subarray(0, len));
        } else {
          const sc = cs / 32;
          for (let s = 0; s < 32; s++) {
            if (!(item.alloc & (1 << s)) || s * sc >= len) continue;
            await target.write(item.guest + s * sc, data.subarray(s * sc, Math.min(len, (s + 1) * sc)));
          }
        }
        progress(item.guest + len);
        break;
      }
      case "compressed": {
        const len = Math.min(cs, size - item.guest);
        const plain = await (await codecFor()).decompress(data, cs);
        await target.write(item.guest, plain.subarray(0, len));
        progress(item.guest + len);
        break;
      }
    }
  }
  await bytes.drain();
  o.onProgress?.(size, size);
  return {
    format: "qcow2",
    virtualSize: size,
    ...(img.backingFile !== undefined ? { backingFile: img.backingFile } : {}),
    ...(img.extensions.backingFormat !== undefined ? { backingFormat: img.extensions.backingFormat } : {}),
    bytesRead: bytes.position,
    spilled,
  };
}

async function zeroSubclusters(target: BlockImage, guest: number, len: number, zeroBits: number, cs: number): Promise<void> {
  const sc = cs / 32;
  for (let s = 0; s < 32; s++) {
    if (!(zeroBits & (1 << s)) || s * sc >= len) continue;
    let e = s + 1;
    while (e < 32 && zeroBits & (1 << e)) e++;
    await target.writeZeroes(guest + s * sc, Math.min(len, e * sc) - s * sc);
    s = e - 1;
  }
}

function memoryScratch(): ByteStore {
  return new MemoryStore({ name: "stream scratch" });
}

/**
 * Look at the start of a stream without losing it: its format (qcow2 magic, else raw) and, for qcow2, its
 * decoded header (needed to create a target of the right size). `stream` gives every byte again.
 */
export async function probeStream(input: ReadableStream<Uint8Array>): Promise<{ format: "raw" | "qcow2"; header?: ImageHeader; stream: ReadableStream<Uint8Array> }> {
  const bytes = new StreamBytes(input);
  let head = (await bytes.read(HEADER_PROBE_BYTES)).bytes;
  let header: ImageHeader | undefined;
  const isQcow2 = head.byteLength >= 4 && viewOf(head).getUint32(0) === QCOW2_MAGIC;
  if (isQcow2) {
    if (head.byteLength < HEADER_PROBE_BYTES) throw truncated(bytes.position);
    const cs = 2 ** decodeHeader(head).clusterBits;
    const rest = await bytes.read(cs - head.byteLength);
    if (rest.partial) throw truncated(bytes.position);
    const cluster0 = new Uint8Array(cs);
    cluster0.set(head);
    cluster0.set(rest.bytes, head.byteLength);
    head = cluster0;
    header = readQcow2StreamHeader(cluster0);
  }
  let prefix: Uint8Array | undefined = head;
  const stream = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (prefix) {
          const p = prefix;
          prefix = undefined;
          if (p.byteLength > 0) {
            controller.enqueue(p);
            return;
          }
        }
        const next = await bytes.some(4 * MIB);
        if (next) controller.enqueue(next.slice());
        else {
          bytes.release();
          controller.close();
        }
      },
      async cancel(reason) {
        await bytes.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  return { format: isQcow2 ? "qcow2" : "raw", ...(header ? { header } : {}), stream };
}
