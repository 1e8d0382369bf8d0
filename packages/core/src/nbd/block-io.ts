/**
 * Byte-granular I/O on an NBD export: requests split to the server's maximum payload and aligned to its
 * minimum block size (unaligned reads widen, unaligned writes read-modify-write), zeroing and trimming in
 * large pieces, flush, and block status gathered over however many replies the server needs. Shared by
 * NbdImage (raw) and NbdStore (a qcow2 image on an export).
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { NbdClient, NbdStatusRun } from "./client";
import { BASE_ALLOCATION, NBD_MAX_PAYLOAD, QEMU_ALLOCATION_DEPTH } from "@qcowkit/nbd-protocol";

/** One run of the export with its status. */
export interface NbdExtent {
  offset: number;
  length: number;
  /** base:allocation flags (0 when the server offers none: "allocated, contents unknown"). */
  flags: number;
  /** qemu:allocation-depth value, when that context was selected. */
  depth?: number;
}

/** Bytes asked for in one TRIM / WRITE_ZEROES / BLOCK_STATUS request (well below the 32-bit length limit). */
const EFFECT_CHUNK_BYTES = 1 << 30;
/** Largest zero buffer written when the server cannot zero by itself. */
const ZERO_BUFFER_BYTES = 1 << 20;

function floorTo(value: number, alignment: number): number {
  return value - (value % alignment);
}

function ceilTo(value: number, alignment: number): number {
  const r = value % alignment;
  return r === 0 ? value : value + alignment - r;
}

export class NbdBlockIo {
  /** Offsets and lengths sent are multiples of this (the last block may end at the export's end). */
  readonly alignment: number;
  private readonly ioChunk: number;
  private readonly effectChunk: number;
  /** Read-modify-write cycles run one at a time. */
  private rmwTail: Promise<void> = Promise.resolve();
  /** Writes completed, and how many of them the last successful flush covered (QEMU skips needless flushes). */
  private writeGeneration = 0;
  private flushedGeneration = 0;

  constructor(readonly client: NbdClient) {
    const info = client.info;
    // Without advertised sizes, 512-byte units (the spec's advice for clients), unless the export is not made of them.
    this.alignment = info.blockSizeAdvertised ? info.minimumBlockSize : info.size % 512 === 0 ? 512 : 1;
    this.ioChunk = Math.max(this.alignment, floorTo(Math.min(info.maximumPayload, NBD_MAX_PAYLOAD), this.alignment));
    this.effectChunk = Math.max(this.alignment, floorTo(EFFECT_CHUNK_BYTES, this.alignment));
  }

  get size(): number {
    return this.client.size;
  }

  private isAligned(offset: number, length: number): boolean {
    const end = offset + length;
    return offset % this.alignment === 0 && (end % this.alignment === 0 || end === this.size);
  }

  /** The aligned range covering [offset, offset + length), clamped to the export. */
  private widen(offset: number, length: number): { start: number; end: number } {
    return { start: floorTo(offset, this.alignment), end: Math.min(ceilTo(offset + length, this.alignment), this.size) };
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    if (into.byteLength === 0) return;
    if (this.isAligned(offset, into.byteLength)) return this.readAligned(offset, into);
    const { start, end } = this.widen(offset, into.byteLength);
    const block = new Uint8Array(end - start);
    await this.readAligned(start, block);
    into.set(block.subarray(offset - start, offset - start + into.byteLength));
  }

  private async readAligned(offset: number, into: Uint8Array): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let done = 0; done < into.byteLength; done += this.ioChunk) {
      parts.push(this.client.read(offset + done, into.subarray(done, Math.min(into.byteLength, done + this.ioChunk))));
    }
    await settleAll(parts);
  }

  async write(offset: number, data: Uint8Array, opts: { fua?: boolean } = {}): Promise<void> {
    if (data.byteLength === 0) return;
    const fua = opts.fua ?? false;
    if (this.isAligned(offset, data.byteLength)) {
      await this.writeAligned(offset, data, fua);
      if (fua && !this.client.canFua) await this.durable();
    } else {
      await this.readModifyWrite(offset, data.byteLength, (block, at) => block.set(data, at));
      if (fua) await this.durable();
    }
  }

  private async writeAligned(offset: number, data: Uint8Array, fua = false): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let done = 0; done < data.byteLength; done += this.ioChunk) {
      const piece = data.subarray(done, Math.min(data.byteLength, done + this.ioChunk));
      parts.push(this.client.write(offset + done, piece, { fua: fua && this.client.canFua }));
    }
    await this.counted(settleAll(parts));
  }

  /** Make completed writes durable: FLUSH when the server takes it. */
  private async durable(): Promise<void> {
    await this.client.flush();
  }

  private readModifyWrite(offset: number, length: number, change: (block: Uint8Array, at: number) => void): Promise<void> {
    const run = async () => {
      const { start, end } = this.widen(offset, length);
      const block = new Uint8Array(end - start);
      await this.readAligned(start, block);
      change(block, offset - start);
      await this.writeAligned(start, block);
    };
    const result = this.rmwTail.then(run, run);
    this.rmwTail = result.catch(() => undefined);
    return result;
  }

  /**
   * Make [offset, offset + length) read as zeros. `unmap`: the server may deallocate; `fastZero`: fail with
   * ENOTSUP instead of writing zero bytes (NBD FAST_ZERO).
   */
  async zero(offset: number, length: number, opts: { unmap?: boolean; fastZero?: boolean; fua?: boolean } = {}): Promise<void> {
    if (length === 0) return;
    const client = this.client;
    if (!client.canWriteZeroes || (opts.fastZero && !client.canFastZero)) {
      if (opts.fastZero) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
      await this.writeZeroBytes(offset, length);
      if (opts.fua) await this.durable();
      return;
    }
    const end = offset + length;
    const alignedStart = Math.min(ceilTo(offset, this.alignment), end);
    const alignedEnd = end === this.size ? end : Math.max(alignedStart, floorTo(end, this.alignment));
    if ((alignedStart > offset || alignedEnd < end) && opts.fastZero) {
      throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    }
    if (alignedStart > offset) await this.readModifyWrite(offset, alignedStart - offset, (b, at) => b.fill(0, at, at + alignedStart - offset));
    if (alignedEnd < end) await this.readModifyWrite(alignedEnd, end - alignedEnd, (b, at) => b.fill(0, at, at + end - alignedEnd));
    const parts: Promise<void>[] = [];
    for (let at = alignedStart; at < alignedEnd; at += this.effectChunk) {
      parts.push(
        client.writeZeroes(at, Math.min(this.effectChunk, alignedEnd - at), {
          noHole: !opts.unmap,
          fastZero: opts.fastZero ?? false,
          fua: opts.fua ?? false,
        }),
      );
    }
    await this.counted(settleAll(parts));
    if (opts.fua && !client.canFua) await this.durable();
  }

  private async writeZeroBytes(offset: number, length: number): Promise<void> {
    const zeros = new Uint8Array(Math.min(length, ceilTo(ZERO_BUFFER_BYTES, this.alignment)));
    for (let at = offset; at < offset + length; at += zeros.byteLength) {
      const n = Math.min(zeros.byteLength, offset + length - at);
      await this.write(at, zeros.subarray(0, n));
    }
  }

  /** NBD_CMD_TRIM of the aligned part of the range (a hint: the server may ignore it; nothing when it has no TRIM). */
  async trim(offset: number, length: number): Promise<void> {
    if (!this.client.canTrim) return;
    const end = offset + length;
    const start = ceilTo(offset, this.alignment);
    const stop = end === this.size ? end : floorTo(end, this.alignment);
    const parts: Promise<void>[] = [];
    for (let at = start; at < stop; at += this.effectChunk) parts.push(this.client.trim(at, Math.min(this.effectChunk, stop - at)));
    await this.counted(settleAll(parts));
  }

  /** FLUSH, when anything was written since the last one. */
  async flush(): Promise<void> {
    const generation = this.writeGeneration;
    if (generation === this.flushedGeneration) return;
    await this.client.flush();
    this.flushedGeneration = Math.max(this.flushedGeneration, generation);
  }

  /** Count a completed write (after it completed, so a flush started before it does not cover it). */
  private async counted(work: Promise<void>): Promise<void> {
    try {
      await work;
    } finally {
      this.writeGeneration++;
    }
  }

  /**
   * Status of [offset, offset + length) in order, from base:allocation (and qemu:allocation-depth when it was
   * selected). Without base:allocation the whole range is reported allocated (flags 0), as QEMU assumes.
   */
  async status(offset: number, length: number): Promise<NbdExtent[]> {
    const end = offset + length;
    if (length === 0) return [];
    if (!this.client.hasContext(BASE_ALLOCATION)) return [{ offset, length, flags: 0 }];
    const withDepth = this.client.hasContext(QEMU_ALLOCATION_DEPTH);
    const out: NbdExtent[] = [];
    let at = floorTo(offset, this.alignment);
    while (at < end) {
      const stop = Math.min(this.size, ceilTo(Math.min(end, at + this.effectChunk), this.alignment));
      const reply = await this.client.blockStatus(at, stop - at);
      const runs = combine(reply.get(BASE_ALLOCATION)!, withDepth ? reply.get(QEMU_ALLOCATION_DEPTH) : undefined);
      for (const r of runs) {
        const s = Math.max(at, offset);
        const e = Math.min(at + r.length, end);
        if (e > s) out.push({ offset: s, length: e - s, flags: r.flags, ...(r.depth !== undefined ? { depth: r.depth } : {}) });
        at += r.length;
      }
    }
    return out;
  }
}

/** Runs of two contexts cut at each other's boundaries, as far as both reach. */
function combine(base: NbdStatusRun[], depth: NbdStatusRun[] | undefined): { length: number; flags: number; depth?: number }[] {
  if (!depth) return base;
  const out: { length: number; flags: number; depth: number }[] = [];
  let i = 0;
  let j = 0;
  let leftA = base[0]?.length ?? 0;
  let leftB = depth[0]?.length ?? 0;
  while (i < base.length && j < depth.length) {
    const n = Math.min(leftA, leftB);
    out.push({ length: n, flags: base[i]!.flags, depth: depth[j]!.flags });
    leftA -= n;
    leftB -= n;
    if (leftA === 0 && ++i < base.length) leftA = base[i]!.length;
    if (leftB === 0 && ++j < depth.length) leftB = depth[j]!.length;
  }
  return out;
}

/** Await every part (so none is left unobserved), then throw the first failure. */
async function settleAll(parts: Promise<void>[]): Promise<void> {
  if (parts.length === 1) return parts[0];
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === "rejected") throw r.reason;
}
