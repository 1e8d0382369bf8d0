/**
 * Reference counts of the host clusters of a qcow2 file (docs/interop/qcow2.txt, "Host cluster
 * management"): the refcount table (kept in memory, at most 8 MiB) and a bounded write-back cache of
 * refcount blocks, for refcount_order 0..6.
 *
 * Crash-safety rules this class keeps (the caller keeps the ones that involve L2 tables):
 * - a new refcount block is written and flushed before the refcount table entry that points to it;
 * - a new, larger refcount table (with the blocks describing it) is written and flushed before the header
 *   points to it, and the old table is freed only afterwards;
 * - decreases are deferred (`deferFree`): the caller applies them (`applyDeferredFrees`) only after the
 *   references to the clusters are gone on disk, so a freed cluster is never reused while an on-disk L2
 *   entry still points to it.
 */
import {
  Qcow2Error,
  getRefcount,
  firstUsedRefcount,
  fillRefcounts,
  maxRefcount,
  refcountBlockEntries,
  reftableEntryOffset,
  setRefcount,
  setReftableEntry,
  viewOf,
  type ByteStore,
} from "@qcowkit/spec";
import { BlockCache, type CachedBlock } from "./block-cache";
import { RangeList } from "./range-list";

export interface RefcountOptions {
  clusterBits: number;
  refcountOrder: number;
  reftableOffset: number;
  reftableClusters: number;
  /** Refcount blocks kept in memory (default 64). */
  cacheBlocks?: number;
  /** Persist a moved/grown refcount table in the image header (sync). Required for writable images. */
  updateHeader?: (reftableOffset: number, reftableClusters: number) => Promise<void>;
  /** Read-only: no writes are made. */
  readOnly?: boolean;
  /**
   * Called before a new refcount block is written at `hostOffset`: throws (CORRUPT) when the cluster holds
   * other metadata (QEMU's overlap check on refcount block writes).
   */
  checkBlockWrite?: (hostOffset: number) => void;
  /** See `Refcounts.onDeferredBelow`. */
  onDeferredBelow?: () => Promise<void>;
}

/** C's "%#" PRIx64 as QEMU's messages print it: "0x" before non-zero values only. */
const altHex = (n: number | bigint): string => (n === 0 || n === 0n ? "0" : `0x${n.toString(16)}`);

/** Largest refcount table QEMU accepts. */
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;

export class Refcounts {
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly refcountOrder: number;
  /** Entries per refcount block. */
  readonly blockEntries: number;
  readonly maxValue: number;
  reftableOffset: number;
  reftableClusters: number;
  /** The refcount table, in memory. */
  reftable: Uint8Array;
  private reftableView: DataView;
  private readonly cache: BlockCache;
  /** Lowest cluster index that may be free (QEMU's free_cluster_index). */
  private freeHint = 0;
  /**
   * One cluster whose refcount dropping to zero sets `watchedFreed` (the engine watches the host cluster that
   * its next compressed cluster may share: once freed, it may be reused for anything). -1: none.
   */
  watched = -1;
  watchedFreed = false;
  private readonly deferred = new RangeList();
  /**
   * Called when an allocation would pass over clusters a guest discard released (deferred with `passDiscard`):
   * the owner makes the removed references durable and applies the frees (`applyDeferredFrees`), and the
   * allocation then takes the lowest free clusters, as QEMU reuses discarded clusters at once. Other deferred
   * clusters (old metadata), and all of them without this hook, are reused after the owner's next write-back.
   */
  onDeferredBelow: (() => Promise<void>) | undefined;
  private readonly updateHeader?: (offset: number, clusters: number) => Promise<void>;
  private readonly checkBlockWrite?: (hostOffset: number) => void;
  private readonly readOnly: boolean;

  private constructor(
    private readonly store: ByteStore,
    opts: RefcountOptions,
    reftable: Uint8Array,
  ) {
    this.clusterBits = opts.clusterBits;
    this.clusterSize = 2 ** opts.clusterBits;
    this.refcountOrder = opts.refcountOrder;
    this.blockEntries = refcountBlockEntries(opts.clusterBits, opts.refcountOrder);
    this.maxValue = maxRefcount(opts.refcountOrder);
    this.reftableOffset = opts.reftableOffset;
    this.reftableClusters = opts.reftableClusters;
    this.onDeferredBelow = opts.onDeferredBelow;
    this.reftable = reftable;
    this.reftableView = viewOf(reftable);
    this.cache = new BlockCache(Math.max(4, opts.cacheBlocks ?? 64));
    this.readOnly = opts.readOnly ?? store.readOnly;
    if (opts.updateHeader) this.updateHeader = opts.updateHeader;
    if (opts.checkBlockWrite) this.checkBlockWrite = opts.checkBlockWrite;
  }

  static async load(store: ByteStore, opts: RefcountOptions): Promise<Refcounts> {
    const bytes = new Uint8Array(opts.reftableClusters * 2 ** opts.clusterBits);
    if (bytes.byteLength > 0) await store.read(opts.reftableOffset, bytes);
    return new Refcounts(store, opts, bytes);
  }

  /** Number of refcount table entries. */
  get reftableEntries(): number {
    return this.reftable.byteLength / 8;
  }

  /** Clusters covered by the refcount table. */
  get coveredClusters(): number {
    return this.reftableEntries * this.blockEntries;
  }

  /**
   * Host offset of refcount block `blockIndex` (0: none). Reserved bits of the entry are ignored, as QEMU
   * ignores them outside `qemu-img check`; `loadBlock` refuses an offset that is not cluster aligned.
   */
  blockOffset(blockIndex: number): number {
    if (blockIndex >= this.reftableEntries) return 0;
    return reftableEntryOffset(this.reftableView, blockIndex);
  }

  private async loadBlock(blockIndex: number): Promise<CachedBlock | undefined> {
    const cached = this.cache.get(blockIndex);
    if (cached) return cached;
    const hostOffset = this.blockOffset(blockIndex);
    if (hostOffset === 0) return undefined;
    // Alignment from the exact low word: offsets of 2^53 and more are not exact as numbers.
    const low = this.reftableView.getUint32(blockIndex * 8 + 4) & ~0x1ff;
    if (hostOffset % this.clusterSize !== 0 || (low & (this.clusterSize - 1)) !== 0) {
      const exact = (BigInt(this.reftableView.getUint32(blockIndex * 8)) << 32n) | BigInt(low >>> 0);
      throw new Qcow2Error("CORRUPT", `Refblock offset ${altHex(exact)} unaligned (reftable index: ${altHex(blockIndex)})`);
    }
    // At 2^63 and above no read can reach it (QEMU's requests stop below INT64_MAX): an I/O error.
    if (this.reftableView.getUint32(blockIndex * 8) >= 0x80000000) {
      throw new Qcow2Error("IO_ERROR", `Refcount block ${blockIndex} lies beyond any readable offset`, { errno: "EIO" });
    }
    const bytes = new Uint8Array(this.clusterSize);
    // Past any addressable offset (2^53 and more) the block lies past the end of the file: zeros, as QEMU
    // reads it.
    if (Number.isSafeInteger(hostOffset + this.clusterSize)) await this.store.read(hostOffset, bytes);
    const block: CachedBlock = { blockIndex, hostOffset, bytes, dirty: false };
    this.cache.put(block);
    await this.trimCache();
    return block;
  }

  private async trimCache(): Promise<void> {
    for (const b of this.cache.overflow()) {
      if (b.dirty) await this.writeBlock(b);
      this.cache.delete(b.blockIndex);
    }
  }

  private async writeBlock(b: CachedBlock): Promise<void> {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Refcount update on a read-only image");
    this.store.debugEvent?.("refblock_update_part");
    await this.store.write(b.hostOffset, b.bytes);
    b.dirty = false;
  }

  /**
   * The bytes of refcount block `blockIndex` as cached (undefined when the block does not exist); the same
   * errors as `get`. For whole-block scans (check): the bytes change with later updates.
   */
  async blockBytes(blockIndex: number): Promise<Uint8Array | undefined> {
    return (await this.loadBlock(blockIndex))?.bytes;
  }

  /** Refcount of cluster `clusterIndex` (0 for clusters no refcount block covers). */
  async get(clusterIndex: number): Promise<number> {
    const block = await this.loadBlock(Math.floor(clusterIndex / this.blockEntries));
    if (!block) return 0;
    return getRefcount(block.bytes, clusterIndex % this.blockEntries, this.refcountOrder);
  }

  /**
   * How many clusters below `clusterCount` have a non-zero refcount, counting no further than `stopAt`
   * (the same answer as calling `get` for each, block by block).
   */
  async countReferenced(clusterCount: number, stopAt = Number.POSITIVE_INFINITY): Promise<number> {
    let count = 0;
    for (let first = 0; first < clusterCount && count < stopAt; first += this.blockEntries) {
      const block = await this.loadBlock(Math.floor(first / this.blockEntries));
      if (!block) continue;
      const end = Math.min(this.blockEntries, clusterCount - first);
      for (let i = 0; i < end && count < stopAt; i++) if (getRefcount(block.bytes, i, this.refcountOrder) !== 0) count++;
    }
    return count;
  }

  /**
   * The highest cluster below `clusterCount` with a non-zero refcount, or -1 when there is none (QEMU's
   * qcow2_get_last_cluster, given the file's size in clusters).
   */
  async lastReferenced(clusterCount: number): Promise<number> {
    let last = clusterCount - 1;
    while (last >= 0 && (await this.get(last)) === 0) last--;
    return last;
  }

  /**
   * Add `delta` to the refcounts of clusters [clusterIndex, clusterIndex + count). Creates refcount blocks
   * (and grows the table) as needed. Throws ERANGE on overflow and CORRUPT below zero; nothing is changed
   * when it throws for a cluster of the range.
   */
  async update(clusterIndex: number, count: number, delta: number): Promise<void> {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Refcount update on a read-only image");
    // Validate first so that a failing update leaves no partial change (block by block: one lookup each).
    for (let i = 0; i < count; ) {
      const blockIndex = Math.floor((clusterIndex + i) / this.blockEntries);
      const end = Math.min(count, (blockIndex + 1) * this.blockEntries - clusterIndex);
      // QEMU's update_refcount looks up (and creates when missing) the refcount block of each block it
      // touches, raising refblock_alloc each time, whether a block is created or not.
      // QEMU raises refblock_load as it takes an existing block for the update (cached or not); its free
      // cluster search reads blocks without the event.
      this.store.debugEvent?.("refblock_alloc");
      if (this.blockOffset(blockIndex) !== 0) this.store.debugEvent?.("refblock_load");
      const block = await this.loadBlock(blockIndex);
      // Free clusters taking a reference (every fresh allocation): one bulk check for the whole part.
      const base = blockIndex * this.blockEntries;
      if (delta > 0 && delta <= this.maxValue) {
        if (!block || firstUsedRefcount(block.bytes, clusterIndex + i - base, clusterIndex + end - base, this.refcountOrder) < 0) {
          i = end;
          continue;
        }
      }
      for (; i < end; i++) {
        const idx = (clusterIndex + i) % this.blockEntries;
        // 64-bit entries beyond 2^53 exactly, as bigints (QEMU counts up to 2^64 - 1).
        let value: number | bigint = (block ? getRefcount(block.bytes, idx, this.refcountOrder) : 0) + delta;
        if (!Number.isSafeInteger(value)) value = exact64(block?.bytes, idx, delta);
        if (value < 0) {
          throw new Qcow2Error("CORRUPT", `Refcount of cluster ${clusterIndex + i} would drop below zero`);
        }
        if (typeof value === "bigint" ? value > 0xffffffffffffffffn : value > this.maxValue) {
          throw new Qcow2Error("INVALID_ARGUMENT", `Refcount of cluster ${clusterIndex + i} would overflow`, {
            errno: "ERANGE",
          });
        }
      }
    }
    let i = 0;
    while (i < count) {
      const ci = clusterIndex + i;
      const blockIndex = Math.floor(ci / this.blockEntries);
      const block =
        (await this.loadBlock(blockIndex)) ??
        (await this.createBlock(blockIndex, Math.max(clusterIndex, blockIndex * this.blockEntries), clusterIndex, count, false));
      const end = Math.min(count, (blockIndex + 1) * this.blockEntries - clusterIndex);
      const base = blockIndex * this.blockEntries;
      if (delta > 0 && firstUsedRefcount(block.bytes, clusterIndex + i - base, clusterIndex + end - base, this.refcountOrder) < 0) {
        // All free before: all `delta` now (no refcount reaches zero, so the free hint stays).
        fillRefcounts(block.bytes, clusterIndex + i - base, clusterIndex + end - base, this.refcountOrder, delta);
        i = end;
        block.dirty = true;
        continue;
      }
      for (; i < end; i++) {
        const idx = (clusterIndex + i) % this.blockEntries;
        let value: number | bigint = getRefcount(block.bytes, idx, this.refcountOrder) + delta;
        if (Number.isSafeInteger(value)) setRefcount(block.bytes, idx, this.refcountOrder, value);
        else {
          value = exact64(block.bytes, idx, delta);
          new DataView(block.bytes.buffer, block.bytes.byteOffset, block.bytes.byteLength).setBigUint64(idx * 8, value);
        }
        if (value === 0 || value === 0n) {
          if (clusterIndex + i === this.watched) this.watchedFreed = true;
          if (clusterIndex + i < this.freeHint) this.freeHint = clusterIndex + i;
        }
      }
      block.dirty = true;
    }
  }

  /**
   * Load the refcount blocks that the queued decreases will touch, so that a damaged refcount table entry
   * (an unaligned block offset) is found now, when the caller frees, as QEMU finds it; throws CORRUPT.
   */
  async loadDeferredBlocks(): Promise<void> {
    for (const [start, count] of this.deferred.entries()) {
      const first = Math.floor(start / this.blockEntries);
      const last = Math.floor((start + count - 1) / this.blockEntries);
      for (let b = first; b <= last; b++) await this.loadBlock(b);
    }
  }

  /**
   * Drop the refcount blocks that count nothing but (possibly) themselves, after a shrink (QEMU's
   * qcow2_shrink_reftable): the refcount table without them is written first, then each dropped block's
   * own refcount is released in the block that covers it. Throws CORRUPT, with QEMU's message, for a table
   * entry that is not cluster aligned (nothing written then), or for a dropped block that no refcount block
   * covers or whose refcount is not 1 (the new table is on disk then).
   */
  async dropUnusedBlocks(): Promise<void> {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Refcount update on a read-only image");
    const entries = this.reftableEntries;
    const kept = Uint8Array.from(this.reftable);
    const keptView = viewOf(kept);
    const dropped: Array<[index: number, offset: number]> = [];
    for (let i = 0; i < entries; i++) {
      const offset = this.blockOffset(i);
      if (offset === 0) continue;
      if (offset % this.clusterSize !== 0) {
        throw new Qcow2Error("CORRUPT", `Cannot get entry from refcount block cache: Offset ${altHex(offset)} is unaligned`);
      }
      const block = (await this.loadBlock(i))!;
      const own = Math.floor(offset / this.clusterSize / this.blockEntries) === i ? (offset / this.clusterSize) % this.blockEntries : -1;
      let unused = true;
      for (let e = 0; e < this.blockEntries && unused; e++) if (e !== own && getRefcount(block.bytes, e, this.refcountOrder) !== 0) unused = false;
      if (unused) {
        setReftableEntry(keptView, i, 0);
        dropped.push([i, offset]);
      }
    }
    if (dropped.length === 0) return;
    await this.writeBack();
    await this.store.write(this.reftableOffset, kept);
    await this.store.flush();
    let failure: Qcow2Error | undefined;
    for (const [index, offset] of dropped) {
      if (!failure) {
        try {
          await this.releaseDroppedBlock(offset);
        } catch (e) {
          failure = e instanceof Qcow2Error ? e : new Qcow2Error("IO_ERROR", String(e));
        }
      }
      this.cache.delete(index);
      setReftableEntry(this.reftableView, index, 0);
    }
    if (failure) throw failure;
  }

  /** Release the own refcount of a refcount block that left the table (qcow2_discard_refcount_block). */
  private async releaseDroppedBlock(offset: number): Promise<void> {
    const cluster = offset / this.clusterSize;
    const covering = Math.floor(cluster / this.blockEntries);
    if (this.blockOffset(covering) === 0) {
      throw new Qcow2Error("CORRUPT", `Refblock at ${altHex(offset)} is not covered by the refcount structures`);
    }
    const block = (await this.loadBlock(covering))!;
    const value = getRefcount(block.bytes, cluster % this.blockEntries, this.refcountOrder);
    if (value !== 1) {
      throw new Qcow2Error(
        "CORRUPT",
        `Invalid refcount: refblock offset ${altHex(block.hostOffset)}, reftable index ${covering}, block offset ${altHex(offset)}, refcount ${altHex(value)}`,
      );
    }
    setRefcount(block.bytes, cluster % this.blockEntries, this.refcountOrder, 0);
    block.dirty = true;
    if (cluster < this.freeHint) this.freeHint = cluster;
  }

  /** Set the refcount of one cluster (repair). */
  async set(clusterIndex: number, value: number): Promise<void> {
    const current = await this.get(clusterIndex);
    if (current !== value) await this.update(clusterIndex, 1, value - current);
  }

  /**
   * First run of `count` free clusters at or after `from`; clusters no refcount block covers count as free.
   * Clusters waiting in the deferred-free list still have their refcount and are therefore not free.
   */
  async findFree(count: number, from = this.freeHint): Promise<number> {
    let runStart = from;
    let runLength = 0;
    let ci = from;
    for (;;) {
      const blockIndex = Math.floor(ci / this.blockEntries);
      const blockEnd = (blockIndex + 1) * this.blockEntries;
      const block = blockIndex < this.reftableEntries ? await this.loadBlock(blockIndex) : undefined;
      if (!block) {
        // An uncovered range: all free.
        const take = Math.min(blockEnd - ci, count - runLength);
        if (runLength === 0) runStart = ci;
        runLength += take;
        ci += take;
        if (runLength >= count) return runStart;
        continue;
      }
      const base = blockIndex * this.blockEntries;
      while (ci < blockEnd) {
        if (getRefcount(block.bytes, ci - base, this.refcountOrder) !== 0) {
          runLength = 0;
          ci++;
          continue;
        }
        // A free cluster: the rest of the run it may start is checked in bulk.
        if (runLength === 0) runStart = ci;
        const windowEnd = Math.min(blockEnd, ci + (count - runLength));
        const used = firstUsedRefcount(block.bytes, ci - base, windowEnd - base, this.refcountOrder);
        if (used < 0) {
          runLength += windowEnd - ci;
          ci = windowEnd;
          if (runLength >= count) return runStart;
        } else {
          runLength = 0;
          ci = base + used + 1;
        }
      }
    }
  }

  /**
   * Allocate `count` contiguous clusters (refcount 0 -> 1) and return the index of the first. The search
   * continues from the last allocation (QEMU's free_cluster_index); when a refcount block is missing, it is
   * created at the next free cluster and the search starts over, which places metadata as QEMU does.
   */
  async allocate(count: number): Promise<number> {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Allocation on a read-only image");
    if (count <= 0) throw new Qcow2Error("INTERNAL", "allocate: count must be positive");
    this.store.debugEvent?.("cluster_alloc");
    let released = false;
    for (;;) {
      const start = await this.findFree(count);
      if (!released && this.onDeferredBelow && this.deferred.lowest(1) < start) {
        // Free what is waiting first (once per allocation), then search again from the lowest free cluster.
        released = true;
        await this.onDeferredBelow();
        continue;
      }
      if (start + count > Number.MAX_SAFE_INTEGER / this.clusterSize) {
        throw new Qcow2Error("NO_SPACE", "Image file would grow beyond the supported size", { errno: "EFBIG" });
      }
      this.freeHint = start + count;
      const missing = this.firstMissingBlock(start, count);
      if (missing >= 0) {
        await this.createBlock(missing, Math.max(start, missing * this.blockEntries));
        // The new block may sit where we meant to allocate: search again from the same place.
        this.freeHint = Math.min(this.freeHint, start);
        continue;
      }
      await this.update(start, count, 1);
      return start;
    }
  }

  /**
   * Count clusters [start, start+count) as used (refcount +1), at a place the caller chose (QEMU's
   * qcow2_alloc_clusters_at); every cluster must be free. Creates refcount blocks as needed.
   */
  async allocateAt(start: number, count: number): Promise<void> {
    for (;;) {
      const missing = this.firstMissingBlock(start, count);
      if (missing < 0) break;
      await this.createBlock(missing, Math.max(start, missing * this.blockEntries), start, count);
    }
    await this.update(start, count, 1);
  }

  /**
   * Where `allocate(count)` would place `count` clusters now, when it would need no new refcount block (the
   * clusters then follow each other with nothing between them); undefined otherwise. Changes nothing. With
   * `after`, where it would place them after an allocation that ended at cluster `after` (exclusive).
   */
  async nextAllocation(count: number, after?: number): Promise<number | undefined> {
    if (this.readOnly || count <= 0) return undefined;
    const start = await this.findFree(count, after ?? this.freeHint);
    if (start + count > Number.MAX_SAFE_INTEGER / this.clusterSize) return undefined;
    // allocate() would first release the deferred clusters below and may then place the clusters there.
    if (this.onDeferredBelow && this.deferred.lowest(1) < start) return undefined;
    return this.firstMissingBlock(start, count) < 0 ? start : undefined;
  }

  /** Index of the first refcount block covering [start, start+count) that does not exist, or -1. */
  firstMissingBlock(start: number, count: number): number {
    const first = Math.floor(start / this.blockEntries);
    const last = Math.floor((start + count - 1) / this.blockEntries);
    for (let b = first; b <= last; b++) {
      if (b >= this.reftableEntries || this.blockOffset(b) === 0) return b;
    }
    return -1;
  }

  /**
   * Create refcount block `blockIndex` (needed for cluster `forCluster`) at the next free cluster: the block
   * describes itself when it lies in its own range, otherwise another block counts it. The block is written
   * and flushed, then hooked into the refcount table with a synchronous write, or, when the table is full,
   * a larger table is built after the covered area (see `refcountArea`).
   */
  private async createBlock(blockIndex: number, forCluster: number, avoidStart = 0, avoidCount = 0, raise = true): Promise<CachedBlock> {
    // `raise` false: the caller (update) raised refblock_alloc for this block already.
    if (raise) this.store.debugEvent?.("refblock_alloc");
    let location = await this.findFree(1);
    if (location >= avoidStart && location < avoidStart + avoidCount) {
      location = await this.findFree(1, avoidStart + avoidCount);
    }
    this.freeHint = Math.max(this.freeHint, location + 1);
    // Only a refcount table that lost its entries makes the header look free.
    if (location === 0) throw new Qcow2Error("CORRUPT", "Preventing invalid allocation of refcount block at offset 0");
    const bytes = new Uint8Array(this.clusterSize);
    if (Math.floor(location / this.blockEntries) === blockIndex) {
      setRefcount(bytes, location % this.blockEntries, this.refcountOrder, 1);
    } else {
      await this.update(location, 1, 1);
      const existing = blockIndex < this.reftableEntries ? await this.loadBlock(blockIndex) : undefined;
      if (existing) {
        // Counting the location created this very block meanwhile: give the location back.
        await this.update(location, 1, -1);
        return existing;
      }
      // The block's own refcount (in another block) must be on disk before the refcount table points to the
      // block, as QEMU flushes its refcount cache here (found by the power-loss tests: a crash between the
      // table entry and the next write-back left a referenced cluster with refcount 0).
      await this.writeBack();
    }
    const hostOffset = location * this.clusterSize;
    this.checkBlockWrite?.(hostOffset);
    this.store.debugEvent?.("refblock_alloc_write");
    await this.store.write(hostOffset, bytes);
    await this.store.flush();
    const block: CachedBlock = { blockIndex, hostOffset, bytes, dirty: false };
    if (blockIndex < this.reftableEntries) {
      // The table in memory points to the block only once the entry is on disk (QEMU's order).
      const entry = new Uint8Array(8);
      setReftableEntry(viewOf(entry), 0, hostOffset);
      this.store.debugEvent?.("refblock_alloc_hookup");
      await this.store.write(this.reftableOffset + blockIndex * 8, entry);
      await this.store.flush();
      setReftableEntry(this.reftableView, blockIndex, hostOffset);
      this.cache.put(block);
    } else {
      this.store.debugEvent?.("reftable_grow");
      this.cache.put(block);
      const blocksUsed = Math.ceil(Math.max(forCluster + 1, location + 1) / this.blockEntries);
      await this.refcountArea(blocksUsed * this.blockEntries, 0, false, blockIndex, hostOffset);
    }
    await this.trimCache();
    return block;
  }

  /**
   * Build refcount structures for the area starting at cluster `startCluster` (where only free space lies)
   * so that everything up to `additionalClusters` clusters past the new structures is covered: missing
   * refcount blocks are created at `startCluster`, followed by a new refcount table (QEMU's
   * qcow2_refcount_area; `exactSize` false leaves 50% room to grow). Blocks and table are written and
   * flushed, the header is switched synchronously, then the old table is freed. Returns the first cluster
   * after the new structures.
   */
  async refcountArea(
    startCluster: number,
    additionalClusters: number,
    exactSize: boolean,
    newBlockIndex = -1,
    newBlockOffset = 0,
  ): Promise<number> {
    if (!this.updateHeader) throw new Qcow2Error("INTERNAL", "refcount table growth needs a header updater");
    const entriesPerTableCluster = this.clusterSize / 8;
    const totalBlocks = refcountBlocksNeeded(
      startCluster + additionalClusters,
      this.clusterSize,
      this.refcountOrder,
      !exactSize,
    );
    if (totalBlocks > MAX_REFTABLE_BYTES) {
      throw new Qcow2Error("NO_SPACE", "Refcount table too large: the image cannot grow any further", { errno: "EFBIG" });
    }
    const areaIndex = Math.floor(startCluster / this.blockEntries);
    let tableEntries = exactSize ? totalBlocks : totalBlocks + Math.ceil(totalBlocks / 2);
    tableEntries = Math.ceil(tableEntries / entriesPerTableCluster) * entriesPerTableCluster;
    const tableClusters = (tableEntries * 8) / this.clusterSize;
    if (tableEntries * 8 > MAX_REFTABLE_BYTES) {
      throw new Qcow2Error("NO_SPACE", "Refcount table too large: the image cannot grow any further", { errno: "EFBIG" });
    }
    const newTable = new Uint8Array(tableEntries * 8);
    newTable.set(this.reftable.subarray(0, Math.min(this.reftable.byteLength, newTable.byteLength)));
    const newView = viewOf(newTable);
    if (newBlockIndex >= 0) setReftableEntry(newView, newBlockIndex, newBlockOffset);
    let additionalBlocks = 0;
    for (let i = areaIndex; i < totalBlocks; i++) if (reftableEntryOffset(newView, i) === 0) additionalBlocks++;
    const tableStart = startCluster + additionalBlocks;
    const areaEnd = tableStart + tableClusters;
    let nextBlock = startCluster;
    const touched: CachedBlock[] = [];
    for (let i = areaIndex; i < totalBlocks; i++) {
      let block: CachedBlock;
      const existing = reftableEntryOffset(newView, i);
      if (existing !== 0) {
        block = this.cache.get(i) ?? (await this.readBlockAt(i, existing));
      } else {
        block = { blockIndex: i, hostOffset: nextBlock * this.clusterSize, bytes: new Uint8Array(this.clusterSize), dirty: true };
        setReftableEntry(newView, i, block.hostOffset);
        nextBlock++;
      }
      const firstCovered = i * this.blockEntries;
      if (firstCovered < areaEnd) {
        const from = Math.max(0, startCluster - firstCovered);
        const to = Math.min(areaEnd - firstCovered, this.blockEntries);
        for (let j = from; j < to; j++) setRefcount(block.bytes, j, this.refcountOrder, 1);
        block.dirty = true;
      }
      touched.push(block);
    }
    this.store.debugEvent?.("refblock_alloc_write_blocks");
    for (const b of touched) {
      if (b.dirty) {
        await this.store.write(b.hostOffset, b.bytes);
        b.dirty = false;
      }
      this.cache.put(b);
    }
    await this.store.flush();
    this.store.debugEvent?.("refblock_alloc_write_table");
    await this.store.write(tableStart * this.clusterSize, newTable);
    await this.store.flush();
    const oldOffset = this.reftableOffset;
    const oldClusters = this.reftableClusters;
    this.store.debugEvent?.("refblock_alloc_switch_table");
    await this.updateHeader(tableStart * this.clusterSize, tableClusters);
    this.reftable = newTable;
    this.reftableView = newView;
    this.reftableOffset = tableStart * this.clusterSize;
    this.reftableClusters = tableClusters;
    await this.trimCache();
    if (oldClusters > 0) await this.update(oldOffset / this.clusterSize, oldClusters, -1);
    return areaEnd;
  }

  private async readBlockAt(blockIndex: number, hostOffset: number): Promise<CachedBlock> {
    const bytes = new Uint8Array(this.clusterSize);
    await this.store.read(hostOffset, bytes);
    return { blockIndex, hostOffset, bytes, dirty: false };
  }

  /**
   * Queue a decrease of [clusterIndex, clusterIndex+count) for `applyDeferredFrees`; `passDiscard` asks for
   * the freed clusters to be discarded in the file (QEMU's discard passthrough for guest requests).
   */
  deferFree(clusterIndex: number, count: number, passDiscard = false): void {
    this.deferred.add(clusterIndex, count, passDiscard ? 1 : 0);
  }

  /** Number of separate ranges waiting to be freed (the owner flushes when this grows large). */
  get deferredRanges(): number {
    return this.deferred.length;
  }

  /**
   * Apply queued decreases. Call only after the references to these clusters are gone on disk. Returns the
   * ranges whose refcount reached zero and whose release asked for a discard.
   */
  async applyDeferredFrees(): Promise<Array<[start: number, count: number]>> {
    const freed: Array<[number, number]> = [];
    for (const [start, count, tag] of this.deferred.drain()) {
      this.freeHint = Math.min(this.freeHint, start);
      await this.update(start, count, -1);
      if (!tag) continue;
      let runStart = -1;
      for (let ci = start; ci <= start + count; ci++) {
        const zero = ci < start + count && (await this.get(ci)) === 0;
        if (zero && runStart < 0) runStart = ci;
        if (!zero && runStart >= 0) {
          freed.push([runStart, ci - runStart]);
          runStart = -1;
        }
      }
    }
    return freed;
  }

  get hasDirty(): boolean {
    return this.cache.hasDirty;
  }

  /** Write every dirty refcount block (no flush). */
  async writeBack(): Promise<void> {
    for (const b of this.cache.dirtyBlocks()) await this.writeBlock(b);
  }

  /**
   * Switch to a refcount table written elsewhere (a rebuild by repair): `bytes` is the new table at
   * `offset` (`clusters` clusters), already referenced by the header. Cached blocks are dropped and the
   * free-space search starts over.
   */
  adoptTable(offset: number, clusters: number, bytes: Uint8Array): void {
    if (this.cache.hasDirty) throw new Qcow2Error("INTERNAL", "adoptTable with unwritten refcount blocks");
    this.reftableOffset = offset;
    this.reftableClusters = clusters;
    this.reftable = bytes;
    this.reftableView = viewOf(bytes);
    this.cache.clear();
    this.freeHint = 0;
  }

  /** Forget cached blocks (after an external rewrite of the structures, e.g. a rebuild). */
  dropCache(): void {
    this.cache.clear();
  }

  /** Restart free-space search at `clusterIndex` (after repair or truncation). */
  resetFreeHint(clusterIndex = 0): void {
    this.freeHint = clusterIndex;
  }
}

/**
 * Number of refcount blocks needed to count `clusters` clusters plus the refcount blocks and table
 * themselves (the fixed point QEMU computes in refcount_metadata_size); `generous` adds room for half the
 * table again, as QEMU does when growing.
 */
export function refcountBlocksNeeded(
  clusters: number,
  clusterSize: number,
  refcountOrder: number,
  generous: boolean,
): number {
  const blocksPerTableCluster = clusterSize / 8;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let total = 0;
  let last = -1;
  let extra = generous;
  let covered = clusters;
  while (total !== last) {
    last = total;
    blocks = Math.ceil((covered + table + blocks) / refcountsPerBlock);
    table = Math.ceil(blocks / blocksPerTableCluster);
    total = covered + blocks + table;
    if (total === last && extra) {
      covered += Math.ceil(table / 2);
      total = 0;
      extra = false;
    }
  }
  return blocks;
}

/** A 64-bit refcount entry plus `delta`, exactly (an absent block reads as zeros). */
function exact64(block: Uint8Array | undefined, index: number, delta: number): bigint {
  const value = block ? new DataView(block.buffer, block.byteOffset, block.byteLength).getBigUint64(index * 8) : 0n;
  return value + BigInt(delta);
}
