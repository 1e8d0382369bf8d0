/**
 * An in-memory BlockImage with cluster-granular allocation, zero clusters and dirty bitmaps, for tests and
 * embedding. Unallocated clusters read as zeros and report as holes; `writeZeroes` without `unmap` leaves
 * allocated zero clusters; `discard` deallocates whole clusters only.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent } from "./device";
import { assertInRange, assertWritable } from "./device-checks";

export type MemoryDeviceOperation = "read" | "write" | "writeZeroes" | "discard" | "flush" | "blockStatus" | "bitmapStatus";

export interface MemoryDeviceOptions {
  /** Bytes. */
  size: number;
  /** Allocation granularity in bytes (power of two); default 65536. */
  clusterSize?: number;
  readOnly?: boolean;
  format?: "raw" | "qcow2";
  /** Names of dirty bitmaps to track (granularity = cluster size). */
  bitmaps?: readonly string[];
  /** Milliseconds each operation waits before running (to exercise out-of-order replies). */
  delay?: (op: MemoryDeviceOperation, offset: number, length: number) => number;
}

type Cluster = Uint8Array | "zero";

export class MemoryDevice implements BlockImage {
  readonly filename = "memory";
  readonly format: "raw" | "qcow2";
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly clusterSize: number;
  /** Number of completed flush() calls. */
  flushCount = 0;
  closed = false;
  private readonly clusters = new Map<number, Cluster>();
  private readonly dirty = new Map<string, Set<number>>();
  private readonly failures = new Map<MemoryDeviceOperation, unknown>();
  private readonly delay: MemoryDeviceOptions["delay"];

  constructor(opts: MemoryDeviceOptions) {
    this.virtualSize = opts.size;
    this.clusterSize = opts.clusterSize ?? 65536;
    this.readOnly = opts.readOnly ?? false;
    this.format = opts.format ?? "raw";
    this.delay = opts.delay;
    for (const name of opts.bitmaps ?? []) this.dirty.set(name, new Set());
  }

  /** Makes the next call of `op` throw `error`. */
  failNext(op: MemoryDeviceOperation, error: unknown): void {
    this.failures.set(op, error);
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    await this.enter("read", guestOffset, into.byteLength);
    assertInRange(guestOffset, into.byteLength, this.virtualSize);
    this.forEachPiece(guestOffset, into.byteLength, (index, within, at, n) => {
      const c = this.clusters.get(index);
      if (c instanceof Uint8Array) into.set(c.subarray(within, within + n), at);
      else into.fill(0, at, at + n);
    });
  }

  async write(guestOffset: number, data: Uint8Array): Promise<void> {
    await this.enter("write", guestOffset, data.byteLength);
    assertWritable(this.readOnly);
    assertInRange(guestOffset, data.byteLength, this.virtualSize);
    this.forEachPiece(guestOffset, data.byteLength, (index, within, at, n) => {
      this.dataCluster(index).set(data.subarray(at, at + n), within);
    });
    this.markDirty(guestOffset, data.byteLength);
  }

  async writeZeroes(guestOffset: number, byteLength: number, opts: { unmap?: boolean } = {}): Promise<void> {
    await this.enter("writeZeroes", guestOffset, byteLength);
    assertWritable(this.readOnly);
    assertInRange(guestOffset, byteLength, this.virtualSize);
    this.forEachPiece(guestOffset, byteLength, (index, within, _at, n) => {
      if (n === this.clusterSize) {
        if (opts.unmap) this.clusters.delete(index);
        else this.clusters.set(index, "zero");
        return;
      }
      const c = this.clusters.get(index);
      if (c instanceof Uint8Array) c.fill(0, within, within + n);
    });
    this.markDirty(guestOffset, byteLength);
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    await this.enter("discard", guestOffset, byteLength);
    assertWritable(this.readOnly);
    assertInRange(guestOffset, byteLength, this.virtualSize);
    this.forEachPiece(guestOffset, byteLength, (index, _within, _at, n) => {
      if (n === this.clusterSize) this.clusters.delete(index);
    });
    this.markDirty(guestOffset, byteLength);
  }

  async flush(): Promise<void> {
    await this.enter("flush", 0, 0);
    this.flushCount++;
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    await this.enter("blockStatus", guestOffset, byteLength);
    assertInRange(guestOffset, byteLength, this.virtualSize);
    const out: BlockStatusExtent[] = [];
    this.forEachPiece(guestOffset, byteLength, (index, within, _at, n) => {
      const c = this.clusters.get(index);
      const kind = { present: c !== undefined, zero: !(c instanceof Uint8Array), data: c instanceof Uint8Array };
      const offset = index * this.clusterSize + within;
      const last = out[out.length - 1];
      if (last && last.present === kind.present && last.zero === kind.zero && last.data === kind.data) last.length += n;
      else out.push({ offset, length: n, depth: 0, ...kind });
    });
    return out;
  }

  async resize(newVirtualSize: number): Promise<void> {
    throw new Qcow2Error("NOT_SUPPORTED", `cannot resize a memory device to ${newVirtualSize}`);
  }

  async listBitmaps(): Promise<{ name: string; granularity: number; flags: string[] }[]> {
    return [...this.dirty.keys()].map((name) => ({ name, granularity: this.clusterSize, flags: ["auto"] }));
  }

  async bitmapStatus(name: string, guestOffset: number, byteLength: number): Promise<{ offset: number; length: number; dirty: boolean }[]> {
    await this.enter("bitmapStatus", guestOffset, byteLength);
    const bits = this.dirty.get(name);
    if (!bits) throw new Qcow2Error("NOT_FOUND", `Bitmap '${name}' is not found`, { errno: "EINVAL" });
    assertInRange(guestOffset, byteLength, this.virtualSize);
    const out: { offset: number; length: number; dirty: boolean }[] = [];
    this.forEachPiece(guestOffset, byteLength, (index, within, _at, n) => {
      const dirty = bits.has(index);
      const last = out[out.length - 1];
      if (last && last.dirty === dirty) last.length += n;
      else out.push({ offset: index * this.clusterSize + within, length: n, dirty });
    });
    return out;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Number of clusters holding data (for tests). */
  get allocatedClusters(): number {
    let n = 0;
    for (const c of this.clusters.values()) if (c instanceof Uint8Array) n++;
    return n;
  }

  private async enter(op: MemoryDeviceOperation, offset: number, length: number): Promise<void> {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "image is closed");
    const ms = this.delay?.(op, offset, length) ?? 0;
    if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    if (this.failures.has(op)) {
      const error = this.failures.get(op);
      this.failures.delete(op);
      throw error;
    }
  }

  private dataCluster(index: number): Uint8Array {
    const c = this.clusters.get(index);
    if (c instanceof Uint8Array) return c;
    const fresh = new Uint8Array(this.clusterSize);
    this.clusters.set(index, fresh);
    return fresh;
  }

  private markDirty(offset: number, length: number): void {
    if (length === 0) return;
    for (const bits of this.dirty.values()) {
      this.forEachPiece(offset, length, (index) => bits.add(index));
    }
  }

  /** Calls `fn(clusterIndex, offsetInCluster, offsetInRequest, bytes)` for each cluster the range touches. */
  private forEachPiece(offset: number, length: number, fn: (index: number, within: number, at: number, n: number) => void): void {
    let at = 0;
    while (at < length) {
      const pos = offset + at;
      const index = Math.floor(pos / this.clusterSize);
      const within = pos - index * this.clusterSize;
      const n = Math.min(this.clusterSize - within, length - at);
      fn(index, within, at, n);
      at += n;
    }
  }
}
