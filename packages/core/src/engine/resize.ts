/**
 * Resize and preallocation: growing and shrinking the L1 table and the file, zeroing what a longer backing
 * file would show, and metadata/falloc/full preallocation.
 */
import { entryIsAllocated } from "@qcowkit/cluster";
import { Qcow2Error, SubclusterType, l1EntriesForSize, subclusterMask } from "@qcowkit/spec";
import { type ResizeOptions } from "../block-image";
import type { EngineImage } from "../engine-image";
import type { EngineHost } from "./host";
import { preallocateHostSpace } from "../preallocate-host";
import type { ReadPath } from "./read-path";
import type { WritePath } from "./write-path";
import type { ZeroDiscard } from "./zero-discard";

export interface ResizeHost extends EngineHost {
  readonly version: number;
  readonly dataFileRaw: boolean;
  /** The image, for host-space preallocation. */
  readonly image: EngineImage;
  readonly reads: ReadPath;
  readonly writes: WritePath;
  readonly zeroes: ZeroDiscard;
}

export class Resizer {
  constructor(private readonly h: ResizeHost) {}

  /** After a shrink: drop the refcount blocks left unused (qcow2_shrink_reftable), with QEMU's failure. */
  private async dropUnusedRefblocks(): Promise<void> {
    await this.h.md.flush();
    try {
      await this.h.md.refcounts.dropUnusedBlocks();
    } catch (e) {
      if (!(e instanceof Qcow2Error) || e.code !== "CORRUPT") throw e;
      await this.h.image.signalCorruption(e.message);
      throw new Qcow2Error("IO_ERROR", "Failed to discard unused refblocks: Input/output error", { errno: "EIO" });
    }
  }

  async resizeUnlocked(newSize: number, opts: ResizeOptions): Promise<void> {
    const oldSize = this.h.virtualSize;
    const prealloc = opts.preallocation ?? "off";
    if (newSize % 512 !== 0) throw new Qcow2Error("INVALID_ARGUMENT", "The new size must be a multiple of 512");
    if (this.h.md.snapshots.length > 0 && this.h.version < 3) {
      // v2 snapshot entries cannot record the disk size (v3 ones can).
      throw new Qcow2Error("NOT_SUPPORTED", "Can't resize a v2 image which has snapshots", { errno: "ENOTSUP" });
    }
    if (newSize < oldSize) {
      if (!opts.shrink) {
        throw new Qcow2Error(
          "INVALID_ARGUMENT",
          "Use the --shrink option to perform a shrink operation.",
        );
      }
      if (prealloc !== "off") throw new Qcow2Error("INVALID_ARGUMENT", "Preallocation can't be used for shrinking an image");
      await this.h.zeroes.discardUnlocked(newSize, oldSize - newSize, true);
      await this.dropUnusedRefblocks();
      await this.h.md.setVirtualSize(newSize);
      this.h.md.shrinkL1(l1EntriesForSize(newSize, this.h.clusterBits, this.h.extendedL2));
      await this.h.md.flush();
      if (this.h.hasDataFile) {
        await this.h.md.data.resize(newSize);
      } else {
        await this.h.md.truncateMetaTail();
      }
      return;
    }
    if (newSize === oldSize) return;
    // Growing over a longer backing file: the new area must read as zeros, not as the backing file's data
    // (QEMU's truncate with BDRV_REQ_ZERO_WRITE). Zero units from the first whole one, explicit zeros before.
    const backingSize = this.h.backing?.virtualSize ?? 0;
    const zeroStart = Math.ceil(oldSize / this.h.zeroes.zeroUnit) * this.h.zeroes.zeroUnit;
    const hideBacking = backingSize > oldSize;
    if (hideBacking && newSize > zeroStart && this.h.version < 3) {
      // v2 has no zero flag: QEMU fails after growing the L1 table and before the new size is written.
      throw new Qcow2Error("NOT_SUPPORTED", "Failed to zero out new clusters: Operation not supported", { errno: "ENOTSUP" });
    }
    const needed = l1EntriesForSize(newSize, this.h.clusterBits, this.h.extendedL2);
    if (needed > this.h.md.l1.size) await this.h.md.growL1(needed);
    if (this.h.hasDataFile) {
      const cur = await this.h.md.data.size();
      if (cur < newSize) await this.h.md.data.resize(newSize, prealloc === "metadata" ? "off" : prealloc);
    }
    await this.h.md.setVirtualSize(newSize);
    let mode = prealloc;
    if (this.h.dataFileRaw && mode === "off") mode = "metadata";
    if ((mode === "falloc" || mode === "full") && !this.h.hasDataFile && !this.h.encryption) {
      await preallocateHostSpace(this.h.image, oldSize, newSize, mode, hideBacking);
    } else if (mode !== "off") {
      await this.preallocate(oldSize, newSize, mode);
    }
    if (hideBacking) {
      // falloc/full preallocation already gave the new clusters zeroed host space (QEMU then skips this).
      const preallocated = (mode === "falloc" || mode === "full") && !this.h.encryption;
      if (newSize > zeroStart && !preallocated && !(await this.h.zeroes.zeroize(zeroStart, newSize - zeroStart, false))) {
        throw new Qcow2Error("NOT_SUPPORTED", "Failed to zero out new clusters: Operation not supported", { errno: "ENOTSUP" });
      }
      if (zeroStart > oldSize) await this.h.writes.writeUnlocked(oldSize, new Uint8Array(Math.min(zeroStart, newSize) - oldSize));
    }
    await this.h.md.flush();
  }

  /**
   * Map guest clusters [from, to) to the host clusters starting at `hostStart`, which the caller has already
   * counted (falloc/full preallocation); L2 tables are allocated as needed.
   */
  async linkPreallocated(from: number, to: number, hostStart: number, allocateSubclusters = false): Promise<void> {
    const cs = this.h.clusterSize;
    let pos = Math.floor(from / cs) * cs;
    // A partial first cluster keeps its guest bytes below `from` (QEMU's copy-on-write of the link).
    const head = from - pos > 0 ? new Uint8Array(from - pos) : undefined;
    if (head) await this.h.reads.readUnlocked(pos, head);
    let host = hostStart;
    while (pos < to) {
      const tableEnd = Math.min(to, (this.h.md.map.l1Index(pos) + 1) * this.h.md.map.l2Coverage);
      const t = await this.h.writes.l2ForWrite(pos);
      for (; pos < tableEnd; pos += cs, host += cs) {
        const old = this.h.md.clusters.entry(t, pos);
        if (head && host === hostStart) {
          await this.h.writes.writeData(host, head, pos);
          this.h.writes.releaseEntry(old, host);
        }
        // Extended L2: the bitmap stays, unless the subclusters are allocated (all, or the head's).
        let { allocBits, zeroBits } = old;
        if (this.h.extendedL2 && allocateSubclusters) {
          allocBits = 0xffffffff;
          zeroBits = 0;
        } else if (this.h.extendedL2 && head && host === hostStart) {
          allocBits = subclusterMask(0, Math.ceil(head.byteLength / (cs / 32)));
          zeroBits = (zeroBits & ~allocBits) >>> 0;
        }
        this.h.md.clusters.setEntry(t, pos, { kind: "normal", hostOffset: host, copied: true, allocBits, zeroBits });
      }
      this.h.md.l2Cache.markDirty(t);
      await this.h.md.maybeWriteback();
    }
    await this.h.md.writeback();
  }

  /**
   * Preallocate [from, to): every cluster gets a host cluster (metadata: mapped, not written; falloc/full:
   * the space is also reserved or zero-filled), as QEMU's preallocate_co does.
   */
  async preallocate(from: number, to: number, mode: "metadata" | "falloc" | "full"): Promise<void> {
    const cs = this.h.clusterSize;
    let pos = Math.floor(from / cs) * cs;
    let lastHostEnd = 0;
    // A partial first cluster without a host cluster: the new one gets the guest bytes below `from` and
    // loses any zero flag (QEMU's copy-on-write when linking; with extended L2 the subclusters stay as they are).
    const headStart = pos;
    let head: Uint8Array | undefined;
    const headType = from > pos && !this.h.extendedL2 ? (await this.h.md.map.mapRun(pos, 1)).type : undefined;
    if (headType === SubclusterType.UNALLOCATED_PLAIN || headType === SubclusterType.ZERO_PLAIN) {
      head = new Uint8Array(from - pos);
      await this.h.reads.readUnlocked(pos, head);
    }
    while (pos < to) {
      const tableEnd = Math.min(to, (this.h.md.map.l1Index(pos) + 1) * this.h.md.map.l2Coverage);
      const t = await this.h.writes.l2ForWrite(pos);
      while (pos < tableEnd) {
        // A run of clusters without a host cluster gets one contiguous allocation.
        if (entryIsAllocated(this.h.md.clusters.entry(t, pos))) {
          pos += cs;
          continue;
        }
        let runEnd = pos + cs;
        while (runEnd < tableEnd && !entryIsAllocated(this.h.md.clusters.entry(t, runEnd))) runEnd += cs;
        const count = (Math.min(runEnd, Math.ceil(tableEnd / cs) * cs) - pos) / cs;
        const host = this.h.hasDataFile ? pos : (await this.h.md.refcounts.allocate(count)) * cs;
        for (let i = 0; i < count; i++) {
          const old = this.h.md.clusters.entry(t, pos + i * cs);
          const headHere = head !== undefined && pos + i * cs === headStart;
          // A zero cluster keeps reading as zeros, now with its host cluster (extended L2: the bitmap stays).
          const zero = old.kind === "zero" && !headHere && !this.h.extendedL2;
          this.h.md.clusters.setEntry(
            t,
            pos + i * cs,
            zero ? { kind: "zero", hostOffset: host + i * cs, copied: true } : { kind: "normal", hostOffset: host + i * cs, copied: true, allocBits: old.allocBits, zeroBits: old.zeroBits },
          );
          if (headHere) await this.h.writes.writeData(host + i * cs, head!, headStart);
        }
        lastHostEnd = Math.max(lastHostEnd, host + count * cs);
        pos += count * cs;
      }
      this.h.md.l2Cache.markDirty(t);
      await this.h.md.maybeWriteback();
    }
    await this.h.md.writeback();
    const store = this.h.md.data;
    const fileEnd = await store.size();
    if (this.h.hasDataFile) return; // the data file was sized by the caller
    if (lastHostEnd > fileEnd) {
      await store.resize(lastHostEnd, mode === "metadata" ? "off" : mode);
    }
  }
}

