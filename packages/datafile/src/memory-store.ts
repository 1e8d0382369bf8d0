import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { ExtentSet } from "./extent-set";
import {
  assertByteRange,
  assertByteSize,
  assertPreallocation,
  closedError,
  readOnlyError,
  shrinkPreallocationError,
} from "./store-checks";
import { assertScanFlags, copyThroughBuffer, zeroSectorsByReading } from "./store-copy";

export interface MemoryStoreOptions {
  /** Initial contents (copied). */
  bytes?: Uint8Array;
  /** Initial size in bytes; defaults to `bytes.byteLength`, or the base's size must be given here. */
  size?: number;
  /** Refuse writes, resizes, discards and write-zeroes. */
  readOnly?: boolean;
  /** Name for messages; default "memory". */
  name?: string;
  /** Bytes per chunk, a power of two from 512 to 16 MiB; default 64 KiB. */
  chunkSize?: number;
  /**
   * Copy-on-write base: unwritten chunks read from it (up to `size`); writes never reach it. The
   * base must not change while this store uses it.
   */
  base?: ByteStore;
  /** Refuse (Qcow2Error NO_SPACE) to hold more than this many chunk bytes; default unlimited. */
  maxAllocatedBytes?: number;
}

const defaultChunkSize = 64 * 1024;

/**
 * A growable in-memory ByteStore. Contents live in fixed-size chunks created on first non-zero
 * write, so a huge virtual store with a few writes costs little memory; unwritten areas read as
 * zeros (or as the base's bytes for a copy-on-write store). `allocatedSize()` counts chunk bytes
 * held by this store (not the base's).
 */
export class MemoryStore implements ByteStore {
  readonly readOnly: boolean;
  readonly name: string;
  readonly chunkSize: number;
  private readonly chunks = new Map<number, Uint8Array>();
  private readonly base: ByteStore | undefined;
  /** Base bytes at or past this offset are hidden (the store was shrunk below them). */
  private baseLimit: number;
  /** Ranges of the base that were zeroed or discarded; empty without a base. */
  private readonly zeroedBaseExtents = new ExtentSet();
  private readonly maxAllocatedBytes: number;
  private byteSize: number;
  private closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    this.name = options.name ?? "memory";
    this.readOnly = options.readOnly ?? false;
    const chunkSize = options.chunkSize ?? defaultChunkSize;
    if (!Number.isInteger(chunkSize) || chunkSize < 512 || chunkSize > 1 << 24 || (chunkSize & (chunkSize - 1)) !== 0) {
      throw new Qcow2Error("INVALID_ARGUMENT", `${this.name}: chunk size must be a power of two from 512 to 16 MiB`);
    }
    this.chunkSize = chunkSize;
    this.maxAllocatedBytes = options.maxAllocatedBytes ?? Number.POSITIVE_INFINITY;
    this.base = options.base;
    const size = options.size ?? options.bytes?.byteLength ?? 0;
    assertByteSize(this.name, size);
    this.byteSize = size;
    this.baseLimit = this.base ? size : 0;
    if (options.bytes) this.loadInitialBytes(options.bytes.subarray(0, size));
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    assertByteRange(this.name, offset, into.byteLength);
    const end = offset + into.byteLength;
    const storedEnd = Math.min(end, this.byteSize);
    if (storedEnd < end) into.fill(0, Math.max(0, storedEnd - offset));
    // Copy held chunks first (synchronously), then fill the runs this store does not hold.
    const unheldRuns: { start: number; end: number }[] = [];
    let position = offset;
    while (position < storedEnd) {
      const index = this.chunkIndex(position);
      const chunkStart = index * this.chunkSize;
      const pieceEnd = Math.min(storedEnd, chunkStart + this.chunkSize);
      const chunk = this.chunks.get(index);
      const lastRun = unheldRuns.at(-1);
      if (chunk) {
        into.set(chunk.subarray(position - chunkStart, pieceEnd - chunkStart), position - offset);
      } else if (lastRun?.end === position) {
        lastRun.end = pieceEnd;
      } else {
        unheldRuns.push({ start: position, end: pieceEnd });
      }
      position = pieceEnd;
    }
    for (const run of unheldRuns) await this.readUnheld(run.start, run.end, into, offset);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, data.byteLength);
    const end = offset + data.byteLength;
    let position = offset;
    while (position < end) {
      const index = this.chunkIndex(position);
      const chunkStart = index * this.chunkSize;
      const pieceEnd = Math.min(end, chunkStart + this.chunkSize);
      const piece = data.subarray(position - offset, pieceEnd - offset);
      if (!this.chunks.has(index) && isAllZero(piece)) {
        // A hole already reads zeros; over the base, remember the zeroed range instead of copying.
        if (this.base) this.zeroBase(position, pieceEnd);
      } else {
        const chunk = await this.heldChunk(index);
        chunk.set(piece, position - chunkStart);
      }
      position = pieceEnd;
    }
    if (end > this.byteSize && data.byteLength > 0) this.byteSize = end;
  }

  async flush(): Promise<void> {
    this.assertOpen();
  }

  async size(): Promise<number> {
    this.assertOpen();
    return this.byteSize;
  }

  async resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    this.assertWritable();
    assertByteSize(this.name, size);
    assertPreallocation(this.name, preallocation);
    const oldSize = this.byteSize;
    if (size < oldSize) {
      if (preallocation !== "off") throw shrinkPreallocationError();
      this.shrink(size);
      return;
    }
    this.byteSize = size;
    if (preallocation !== "off") {
      // Memory has no reservation without contents: hold zeroed chunks for the grown range.
      for (let index = this.chunkIndex(oldSize); index * this.chunkSize < size; index++) {
        await this.heldChunk(index);
      }
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, length);
    this.zeroRange(offset, Math.min(offset + length, this.byteSize), true);
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.assertWritable();
    assertByteRange(this.name, offset, length);
    const end = offset + length;
    this.zeroRange(offset, Math.min(end, this.byteSize), unmap);
    if (end > this.byteSize && length > 0) this.byteSize = end;
  }

  /**
   * Copy `length` bytes of `source` at `sourceOffset` to `offset`, growing this store like a write: read into a
   * buffer of at most 2 MiB, then written (zero pieces allocate no chunks). Bytes past the source's end are
   * zeros. Overlapping ranges of this store are copied as memmove does.
   */
  async copyFrom(source: ByteStore, sourceOffset: number, offset: number, length: number, scan?: Uint8Array): Promise<void> {
    this.assertWritable();
    assertByteRange(source.name, sourceOffset, length);
    assertByteRange(this.name, offset, length);
    assertScanFlags(this.name, scan, length);
    await copyThroughBuffer(source, sourceOffset, this, offset, length, scan);
  }

  /**
   * One byte per 512-byte sector of `[offset, offset + length)` (the last may be partial): 1 when it reads as
   * all zeros, else 0. Ranges this store holds no chunk for (and no base shows through) are not read.
   */
  async zeroSectors(offset: number, length: number): Promise<Uint8Array> {
    this.assertOpen();
    assertByteRange(this.name, offset, length);
    return zeroSectorsByReading(this, offset, length, (start, end) => this.isHole(start, end));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.chunks.clear();
  }

  async allocatedSize(): Promise<number> {
    this.assertOpen();
    return this.chunks.size * this.chunkSize;
  }

  /** Number of chunks currently held. */
  get chunkCount(): number {
    return this.chunks.size;
  }

  /** True when `[start, end)` reads as zeros because no chunk is held there and no base shows through. */
  private isHole(start: number, end: number): boolean {
    const storedEnd = Math.min(end, this.byteSize);
    if (storedEnd <= start) return true;
    if (this.base && start < this.baseLimit) return false;
    for (let index = this.chunkIndex(start); index * this.chunkSize < storedEnd; index++) {
      if (this.chunks.has(index)) return false;
    }
    return true;
  }

  private chunkIndex(offset: number): number {
    return Math.floor(offset / this.chunkSize);
  }

  private loadInitialBytes(bytes: Uint8Array): void {
    for (let start = 0; start < bytes.byteLength; start += this.chunkSize) {
      const piece = bytes.subarray(start, start + this.chunkSize);
      if (isAllZero(piece)) continue;
      const chunk = this.newChunk();
      chunk.set(piece);
      this.chunks.set(start / this.chunkSize, chunk);
    }
  }

  private newChunk(): Uint8Array {
    if ((this.chunks.size + 1) * this.chunkSize > this.maxAllocatedBytes) {
      throw new Qcow2Error("NO_SPACE", "No space left on device");
    }
    return new Uint8Array(this.chunkSize);
  }

  /** The chunk at `index`, created (from the base where it shows through) when not yet held. */
  private async heldChunk(index: number): Promise<Uint8Array> {
    const existing = this.chunks.get(index);
    if (existing) return existing;
    const fresh = this.newChunk();
    const chunkStart = index * this.chunkSize;
    if (this.base && chunkStart < this.baseLimit) {
      await this.readUnheld(chunkStart, Math.min(chunkStart + this.chunkSize, this.baseLimit), fresh, chunkStart);
    }
    // Another call may have created the chunk while the base was read.
    const winner = this.chunks.get(index);
    if (winner) return winner;
    this.chunks.set(index, fresh);
    return fresh;
  }

  /**
   * Fill `into[start - intoOffset, end - intoOffset)` with what the range reads as when no chunk is
   * held for it: zeros, or the base's bytes where they show through.
   */
  private async readUnheld(start: number, end: number, into: Uint8Array, intoOffset: number): Promise<void> {
    const target = into.subarray(start - intoOffset, end - intoOffset);
    const baseEnd = this.base ? Math.min(end, this.baseLimit) : start;
    if (!this.base || baseEnd <= start) {
      target.fill(0);
      return;
    }
    await this.base.read(start, target.subarray(0, baseEnd - start));
    // Masks are applied after the await so a shrink or zeroing done meanwhile is honoured.
    const limit = Math.max(start, Math.min(baseEnd, this.baseLimit));
    target.fill(0, limit - start);
    this.zeroedBaseExtents.forEachOverlap(start, limit, (zeroStart, zeroEnd) => {
      target.fill(0, zeroStart - start, zeroEnd - start);
    });
  }

  private zeroBase(start: number, end: number): void {
    const limit = Math.min(end, this.baseLimit);
    if (limit > start) this.zeroedBaseExtents.add(start, limit);
  }

  /** Make `[start, end)` (within the size) read zeros; with `unmap`, drop whole chunks. */
  private zeroRange(start: number, end: number, unmap: boolean): void {
    if (end <= start) return;
    if (this.base) this.zeroBase(start, end);
    const firstIndex = this.chunkIndex(start);
    const lastIndex = this.chunkIndex(end - 1);
    const visit = (index: number, chunk: Uint8Array) => {
      const chunkStart = index * this.chunkSize;
      const from = Math.max(start, chunkStart) - chunkStart;
      const to = Math.min(end, chunkStart + this.chunkSize) - chunkStart;
      if (unmap && from === 0 && to === this.chunkSize) this.chunks.delete(index);
      else chunk.fill(0, from, to);
    };
    if (lastIndex - firstIndex + 1 > this.chunks.size) {
      for (const [index, chunk] of [...this.chunks]) {
        if (index >= firstIndex && index <= lastIndex) visit(index, chunk);
      }
    } else {
      for (let index = firstIndex; index <= lastIndex; index++) {
        const chunk = this.chunks.get(index);
        if (chunk) visit(index, chunk);
      }
    }
  }

  private shrink(size: number): void {
    const keepIndexEnd = Math.ceil(size / this.chunkSize);
    for (const index of [...this.chunks.keys()]) {
      if (index >= keepIndexEnd) this.chunks.delete(index);
    }
    const tail = this.chunks.get(this.chunkIndex(size));
    if (tail) tail.fill(0, size % this.chunkSize);
    if (this.base && size < this.baseLimit) {
      this.baseLimit = size;
      this.zeroedBaseExtents.truncate(size);
    }
    this.byteSize = size;
  }

  private assertOpen(): void {
    if (this.closed) throw closedError(this.name);
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly) throw readOnlyError();
  }
}

/** True when every byte of `bytes` is zero. */
export function isAllZero(bytes: Uint8Array): boolean {
  const length = bytes.byteLength;
  let i = 0;
  // Compare 4 bytes at a time where alignment allows.
  if ((bytes.byteOffset & 3) === 0 && length >= 64) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, length >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length << 2;
  }
  for (; i < length; i++) if (bytes[i] !== 0) return false;
  return true;
}
