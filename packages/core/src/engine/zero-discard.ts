/**
 * Write-zeroes and discard: zero flags, subcluster zero bits, released clusters, QEMU's fallbacks.
 */
import { entryIsAllocated, type L2Entry } from "@qcowkit/cluster";
import { Qcow2Error, SubclusterType } from "@qcowkit/spec";
import { type ZeroOptions } from "../block-image";
import type { EngineHost } from "./host";
import type { BlockStatusReader } from "./block-status";
import type { WritePath } from "./write-path";

export interface ZeroHost extends EngineHost {
  readonly version: number;
  readonly dataFileRaw: boolean;
  /** The discard option: "ignore" keeps the host clusters. */
  readonly discard: "ignore" | "unmap" | undefined;
  readonly writes: WritePath;
  readonly status: BlockStatusReader;
  warn(message: string): void;
  /** Mark the image corrupt (fatal) and return the error to throw. */
  signalCorruption(message: string): Promise<Qcow2Error>;
}

export class ZeroDiscard {
  constructor(private readonly h: ZeroHost) {}

  /** Zeroing granularity: the subcluster (extended L2) or the cluster. */
  get zeroUnit(): number {
    return this.h.extendedL2 ? this.h.clusterSize / 32 : this.h.clusterSize;
  }

  /**
   * Split the request as QEMU's block layer does (a partial head unit, the aligned middle, a partial tail
   * unit); each piece the driver cannot zero efficiently is written as zero bytes, unless `noFallback`.
   */
  async writeZeroesUnlocked(guestOffset: number, byteLength: number, opts: ZeroOptions): Promise<void> {
    const unit = this.zeroUnit;
    const end = guestOffset + byteLength;
    let pos = guestOffset;
    while (pos < end) {
      let n = end - pos;
      const head = pos % unit;
      const tail = end % unit;
      if (head) n = Math.min(n, unit - head);
      else if (tail && n > unit) n -= tail;
      const done = await this.zeroPiece(pos, n, opts.unmap ?? false);
      if (!done) {
        if (opts.noFallback) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
        await this.writeExplicitZeroes(pos, n);
      }
      pos += n;
    }
  }

  /**
   * QEMU's qcow2_co_pwrite_zeroes for one piece: a piece covering part of a unit is widened to the whole unit
   * when the rest already reads as zeros and the unit holds no data. Returns false where QEMU answers ENOTSUP.
   */
  private async zeroPiece(offset: number, bytes: number, unmap: boolean): Promise<boolean> {
    const unit = this.zeroUnit;
    const end = offset + bytes;
    const head = offset % unit;
    let tail = (Math.ceil(end / unit) * unit - end) % unit;
    if (end === this.h.virtualSize) tail = 0;
    if (head || tail) {
      if (!(await this.rangeIsZero(offset - head, head)) || !(await this.rangeIsZero(end, tail))) return false;
      offset -= head;
      bytes = Math.min(unit, this.h.virtualSize - offset);
      const type = (await this.h.md.map.mapRun(offset, 1)).type;
      if (
        type !== SubclusterType.UNALLOCATED_PLAIN &&
        type !== SubclusterType.UNALLOCATED_ALLOC &&
        type !== SubclusterType.ZERO_PLAIN &&
        type !== SubclusterType.ZERO_ALLOC
      ) {
        return false;
      }
    }
    return this.zeroize(offset, bytes, unmap);
  }

  /** True when every byte of the range reads as zeros according to block status (no data read). */
  async rangeIsZero(guestOffset: number, byteLength: number): Promise<boolean> {
    if (byteLength <= 0) return true;
    const extents = await this.h.status.blockStatusUnlocked(guestOffset, byteLength);
    return extents.every((e) => e.zero);
  }

  private async writeExplicitZeroes(guestOffset: number, byteLength: number): Promise<void> {
    const chunk = Math.min(byteLength, 4 * 1024 * 1024);
    const zeros = new Uint8Array(chunk);
    for (let pos = guestOffset; pos < guestOffset + byteLength; pos += chunk) {
      const n = Math.min(chunk, guestOffset + byteLength - pos);
      if (!(await this.h.writes.tryWriteInPlace(pos, zeros.subarray(0, n)))) await this.h.writes.writeUnlocked(pos, zeros.subarray(0, n));
    }
  }

  /**
   * Make [guestOffset, +byteLength) (unit aligned, except at the image end) read as zeros through metadata
   * (QEMU's qcow2_subcluster_zeroize). Returns false where QEMU answers ENOTSUP.
   */
  async zeroize(guestOffset: number, byteLength: number, unmap: boolean): Promise<boolean> {
    if (this.h.dataFileRaw) {
      await this.h.md.data.writeZeroes(guestOffset, byteLength, unmap);
      this.h.md.noteDataWritten();
    }
    if (this.h.version < 3) {
      if (this.h.backing) return false;
      await this.discardUnlocked(guestOffset, byteLength, false);
      return true;
    }
    const cs = this.h.clusterSize;
    let offset = guestOffset;
    let end = guestOffset + byteLength;
    const head = Math.min(end, Math.ceil(offset / cs) * cs) - offset;
    offset += head;
    const tail = end >= this.h.virtualSize ? 0 : end - Math.max(offset, Math.floor(end / cs) * cs);
    end -= tail;
    if (head && !(await this.zeroSubclusters(offset - head, head))) return false;
    while (offset < end) {
      const tableEnd = Math.min(end, (this.h.md.map.l1Index(offset) + 1) * this.h.md.map.l2Coverage);
      const t = await this.h.writes.l2ForWrite(offset);
      for (; offset < tableEnd; offset = Math.floor(offset / cs) * cs + cs) {
        const e = this.h.md.clusters.entry(t, offset);
        const unmapThis = e.kind === "compressed" || (unmap && entryIsAllocated(e));
        const old = this.h.md.clusters.clearEntry(t, offset, unmapThis ? "zero" : "zero-keep");
        if (old && unmapThis) await this.releaseCluster(old, Math.floor(offset / cs) * cs);
      }
      await this.h.md.maybeWriteback();
    }
    if (tail && !(await this.zeroSubclusters(end, tail))) return false;
    return true;
  }

  /** Set the zero bits (and clear the allocation bits) of the subclusters in [offset, +bytes) of one cluster. */
  private async zeroSubclusters(offset: number, bytes: number): Promise<boolean> {
    const t = await this.h.writes.l2ForWrite(offset);
    const e = this.h.md.clusters.entry(t, offset);
    if (e.kind === "compressed") return false;
    const scSize = this.h.clusterSize / 32;
    const first = Math.floor((offset % this.h.clusterSize) / scSize);
    const count = Math.ceil(bytes / scSize);
    const mask = (count >= 32 ? 0xffffffff : ((1 << count) - 1) << first) >>> 0;
    const newAlloc = (e.allocBits & ~mask) >>> 0;
    const newZero = (e.zeroBits | mask) >>> 0;
    if (newAlloc !== e.allocBits || newZero !== e.zeroBits) this.h.md.clusters.setBitmap(t, offset, newAlloc, newZero);
    return true;
  }

  /**
   * Drop the host cluster an old entry pointed to: for data-file images the data file range is discarded
   * (when discards pass through), otherwise the refcount decrease is queued.
   */
  private async releaseCluster(old: L2Entry, guestClusterStart: number): Promise<void> {
    if (this.h.hasDataFile) {
      if ((old.kind === "normal" || (old.kind === "zero" && old.hostOffset !== 0)) && this.h.discard !== "ignore") {
        const len = Math.min(this.h.clusterSize, this.h.virtualSize - guestClusterStart);
        await this.h.md.data.discard(old.hostOffset, len);
        this.h.md.noteDataWritten();
      }
      return;
    }
    this.h.writes.releaseEntry(old, -1, this.h.discard !== "ignore");
  }

  /**
   * Discard whole clusters in [guestOffset, +byteLength) (a partial cluster counts only when it is the
   * last, partial cluster of the image). `full`: entries become unallocated (shrink, make-empty); otherwise
   * they read as zeros on v3 where they held data or a backing file is present.
   */
  async discardUnlocked(guestOffset: number, byteLength: number, full: boolean): Promise<void> {
    const cs = this.h.clusterSize;
    let start = Math.ceil(guestOffset / cs) * cs;
    let end = Math.floor((guestOffset + byteLength) / cs) * cs;
    if (guestOffset + byteLength === this.h.virtualSize && this.h.virtualSize % cs !== 0) end = guestOffset + byteLength;
    if (full) {
      // A partial first cluster keeps its data: it still holds guest bytes below guestOffset (QEMU's shrink
      // discards from the next cluster boundary).
      end = guestOffset + byteLength;
    }
    if (start >= end) return;
    await this.h.md.markDirty();
    let pos = start;
    while (pos < end) {
      const l1Index = this.h.md.map.l1Index(pos);
      const tableEnd = Math.min(end, (l1Index + 1) * this.h.md.map.l2Coverage);
      if (this.h.md.map.l2TableOffset(l1Index) === 0 && (full || !this.h.backing)) {
        // Nothing allocated here, and nothing to hide from a backing file.
        pos = tableEnd;
        continue;
      }
      const t = await this.h.writes.l2ForWrite(pos);
      for (; pos < tableEnd; pos = Math.min(tableEnd, Math.floor(pos / cs) * cs + cs)) {
        // Entries become unallocated (full), or read as zeros on v3 where they held data or hide a backing file.
        let to: "zero" | "unallocated" | undefined;
        if (full) to = "unallocated";
        else if (this.h.backing || entryIsAllocated(this.h.md.clusters.entry(t, pos))) to = this.h.extendedL2 || this.h.version >= 3 ? "zero" : "unallocated";
        const old = to && this.h.md.clusters.clearEntry(t, pos, to);
        if (old) await this.releaseCluster(old, Math.floor(pos / cs) * cs);
      }
      await this.h.md.maybeWriteback();
    }
    await this.checkFreeable();
  }

  /**
   * QEMU decreases refcounts as it frees: a refcount block it cannot load (an unaligned table entry) marks
   * the image corrupt there, `qcow2_free_clusters` reports it, and the request fails as the image is gone
   * ("No medium found"). Ours are deferred: their blocks are loaded now to fail the same way.
   */
  private async checkFreeable(): Promise<void> {
    try {
      await this.h.md.refcounts.loadDeferredBlocks();
    } catch (e) {
      if (!(e instanceof Qcow2Error) || e.code !== "CORRUPT") throw e;
      await this.h.signalCorruption(e.message);
      this.h.warn("qcow2_free_clusters failed: Input/output error");
      throw new Qcow2Error("IO_ERROR", "No medium found", { errno: "ENOMEDIUM" });
    }
  }
}

