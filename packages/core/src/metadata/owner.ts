/**
 * The metadata owner: the one place that changes an open image's on-disk metadata and the only holder of its
 * metadata state (header, active L1 table, L2 cache, refcount structures, snapshot list, the two stores).
 * Everything else reads that state through read-only views and changes it through the methods below.
 *
 * The write ordering rule (crash safety) lives here, written once:
 *  1. guest data (and copy-on-write fill) reaches disk before the L2 entry that maps it (`writeback`);
 *  2. refcount increases reach disk before the L2/L1 entries that reference the clusters (`writeback`,
 *     `refcountsBeforeReference`);
 *  3. a new L2 table reaches disk before the L1 entry that points to it (`writeback`);
 *  4. references are removed on disk before the refcounts of the clusters they pointed to are decreased
 *     (decreases are deferred until then, so freed clusters are not reused before: `writeback`);
 *  5. a flush reaches both the qcow2 file and the external data file (`flush`).
 * Header fields are written by name through the spec codec (`encodeHeaderFields`), never at byte offsets.
 */
import { ClusterMap, ClusterWriter, L1Table, L2Cache, type ClusterAllocator } from "@qcowkit/cluster";
import { Refcounts, type RefcountOptions } from "@qcowkit/refcount";
import {
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  Qcow2Error,
  decodeImageHeader,
  encodeHeaderFields,
  encodeImageHeader,
  getU64,
  setRefcount,
  setReftableEntry,
  viewOf,
  type ByteStore,
  type HeaderFieldName,
  type ImageHeader,
  type Qcow2Header,
} from "@qcowkit/spec";
import type { SnapshotInfo } from "../snapshots";

/** The ordering rule a refcount write-back outside `writeback` keeps (see `MetadataOwner.commitRefcounts`). */
export type RefcountCommit = "before-reference" | "after-reference-removal" | "rollback" | "settle";

/** A read-only view of a structure (arrays and byte buffers are returned as they are). */
export type ReadonlyDeep<T> = T extends Uint8Array
  ? T
  : T extends ReadonlyArray<infer U>
    ? ReadonlyArray<ReadonlyDeep<U>>
    : T extends object
      ? { readonly [K in keyof T]: ReadonlyDeep<T[K]> }
      : T;

/** Flush deferred frees when this many separate ranges are waiting. */
const MAX_DEFERRED_RANGES = 4096;
/** Kinds of metadata cluster, for the overlap check (QEMU's QCOW2_OL_ACTIVE_L2 and QCOW2_OL_REFCOUNT_BLOCK). */
const META_L2 = 1;
const META_REFBLOCK = 2;

export interface MetadataOwnerOptions {
  readOnly: boolean;
  /** Bytes of L2 table cache; refcount blocks get a quarter of it. */
  cacheBytes: number;
  /** The lazy-refcounts runtime option (overrides the header's compatible bit while open). */
  lazyRefcounts?: boolean | undefined;
}

export class MetadataOwner {
  readonly meta: ByteStore;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  readonly l2Cache: L2Cache;
  readonly map: ClusterMap;
  /** The mapping's write side (L2 allocation, copy-on-write planning, entry updates), on this owner's allocator and order. */
  readonly clusters: ClusterWriter;
  readonly readOnly: boolean;
  #data: ByteStore;
  #hdr: ImageHeader;
  #l1: L1Table;
  #refcounts: Refcounts | undefined;
  #snapshots: readonly SnapshotInfo[] = [];
  readonly #cacheBytes: number;
  readonly #lazyOption: boolean | undefined;
  /** Guest data was written since the data store was last flushed. */
  #dataDirty = false;
  /** This open set the dirty bit for lazy refcounts (and so clears it at close). */
  #dirtyMarked = false;
  /**
   * Called when a failure left the on-disk structures unusable (QEMU's `bs->drv = NULL`): the image then
   * refuses further requests and writes nothing more at close.
   */
  onUnusable: (() => void) | undefined;
  /** Cluster indices of L2 tables and refcount blocks (META_L2 | META_REFBLOCK bits), for the overlap check on data writes. */
  #metadataClusters: Map<number, number> | undefined;

  constructor(meta: ByteStore, hdr: ImageHeader, l1: L1Table, opts: MetadataOwnerOptions) {
    this.meta = meta;
    this.#data = meta;
    this.#hdr = hdr;
    this.#l1 = l1;
    this.readOnly = opts.readOnly;
    this.#cacheBytes = opts.cacheBytes;
    this.#lazyOption = opts.lazyRefcounts;
    const h = hdr.header;
    this.clusterBits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    this.extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    this.hasDataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    this.l2Cache = new L2Cache(meta, this.clusterSize, Math.max(4, Math.floor(opts.cacheBytes / this.clusterSize)));
    this.map = new ClusterMap({ clusterBits: h.clusterBits, extendedL2: this.extendedL2, dataFile: this.hasDataFile }, l1, this.l2Cache);
    this.clusters = new ClusterWriter(this.map, this.allocator, {
      beforeReference: () => this.refcountsBeforeReference(),
      onNewTable: (hostOffset) => {
        this.meta.debugEvent?.("l2_alloc_write");
        this.noteL2Table(hostOffset);
      },
    });
  }

  /** Clusters of the qcow2 file for `@qcowkit/cluster`, counted by the refcount structures. */
  readonly allocator: ClusterAllocator = {
    allocate: (count) => this.refcounts.allocate(count),
    allocateAt: async (first, count) => {
      const refcounts = this.refcounts;
      let n = 0;
      while (n < count && (await refcounts.get(first + n)) === 0) n++;
      if (n > 0) await refcounts.allocateAt(first, n);
      return n;
    },
    allocateMetadata: (count, what) => this.allocateMetadata(count, what),
    release: (first, count, passDiscard) => this.refcounts.deferFree(first, count, passDiscard),
    unallocate: (first, count) => this.refcounts.update(first, count, -1),
  };

  // ---------------------------------------------------------------- read-only views

  /** The decoded header with its extensions; change it through `updateHeader`. */
  get hdr(): ReadonlyDeep<ImageHeader> {
    return this.#hdr;
  }

  get header(): ReadonlyDeep<Qcow2Header> {
    return this.#hdr.header;
  }

  get data(): ByteStore {
    return this.#data;
  }

  get l1(): L1Table {
    return this.#l1;
  }

  get refcounts(): Refcounts {
    if (!this.#refcounts) throw new Qcow2Error("INTERNAL", "refcount structures not loaded");
    return this.#refcounts;
  }

  get snapshots(): readonly SnapshotInfo[] {
    return this.#snapshots;
  }

  get lazyRefcounts(): boolean {
    return this.#lazyOption ?? (this.#hdr.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  get isDirty(): boolean {
    return (this.#hdr.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  }

  get isCorrupt(): boolean {
    return (this.#hdr.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
  }

  /** This open set the lazy-refcounts dirty bit. */
  get dirtyMarked(): boolean {
    return this.#dirtyMarked;
  }

  // ---------------------------------------------------------------- replacing structures

  /** The external data file, once opened (open only). */
  attachDataStore(store: ByteStore): void {
    this.#data = store;
  }

  /**
   * Load the refcount structures the header points to (open, and after a rebuild of them on disk).
   * `checkBlockWrite`: refuses a new refcount block placed over other metadata (given at open).
   */
  async loadRefcounts(extra: Pick<RefcountOptions, "cacheBlocks" | "checkBlockWrite" | "onDeferredBelow"> = {}): Promise<Refcounts> {
    const h = this.#hdr.header;
    const refcounts = await Refcounts.load(this.meta, {
      clusterBits: h.clusterBits,
      refcountOrder: h.refcountOrder,
      reftableOffset: h.refcountTableOffset,
      reftableClusters: h.refcountTableClusters,
      cacheBlocks: extra.cacheBlocks ?? Math.max(8, Math.floor(this.#cacheBytes / 4 / this.clusterSize)),
      readOnly: this.readOnly,
      updateHeader: (offset, clusters) => this.writeReftableLocation(offset, clusters),
      ...(extra.checkBlockWrite ? { checkBlockWrite: extra.checkBlockWrite } : {}),
      ...(extra.onDeferredBelow ? { onDeferredBelow: extra.onDeferredBelow } : {}),
    });
    this.replaceRefcounts(refcounts);
    return refcounts;
  }

  /** Use other refcount structures (already on disk and in the header). */
  replaceRefcounts(refcounts: Refcounts): void {
    this.#refcounts = refcounts;
    this.#metadataClusters = undefined;
  }

  /** Use another active L1 table (already on disk and in the header, or about to be written by the caller). */
  replaceL1(l1: L1Table): void {
    this.#l1 = l1;
    this.map.l1 = l1;
    this.#metadataClusters = undefined;
  }

  /** The snapshot list as the header's table now holds it. */
  replaceSnapshots(snapshots: readonly SnapshotInfo[]): void {
    this.#snapshots = snapshots;
    this.#metadataClusters = undefined;
  }

  // ---------------------------------------------------------------- header writes

  private assertWritable(): void {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  }

  /**
   * Change the header in memory only; the next `updateHeader` writes it. For multi-step changes whose middle
   * steps must already see the new values (a downgrade clears the feature bits before it rewrites clusters).
   */
  stageHeader(change: (hdr: ImageHeader) => void): void {
    change(this.#hdr);
  }

  /** Change the header in memory, then rewrite cluster 0 from it and flush. */
  async updateHeader(change: (hdr: ImageHeader) => void = () => undefined): Promise<void> {
    this.assertWritable();
    change(this.#hdr);
    const bytes = encodeImageHeader(this.#hdr);
    await this.meta.write(0, bytes);
    await this.meta.flush();
    this.#hdr = decodeImageHeader(bytes);
  }

  /** Set header fields in memory and write just those (adjacent) fields in place, synchronously. */
  async setHeaderFields(values: Partial<Pick<Qcow2Header, HeaderFieldName>>): Promise<void> {
    const names = Object.keys(values) as HeaderFieldName[];
    const next = { ...this.#hdr.header, ...values };
    const { offset, bytes } = encodeHeaderFields(next, names);
    await this.meta.write(offset, bytes);
    await this.meta.flush();
    Object.assign(this.#hdr.header, values);
    this.#metadataClusters = undefined;
  }

  /** Point the header at a moved refcount table. */
  writeReftableLocation(offset: number, clusters: number): Promise<void> {
    return this.setHeaderFields({ refcountTableOffset: offset, refcountTableClusters: clusters });
  }

  /**
   * Set or clear incompatible feature bits, written alone and synchronously. The bits change in memory first:
   * when the write fails, the open image still behaves as marked (a corrupt image refuses further I/O).
   */
  private async setIncompatible(bits: bigint, on: boolean): Promise<void> {
    const h = this.#hdr.header;
    if (on) h.incompatibleFeatures |= bits;
    else h.incompatibleFeatures &= ~bits;
    const { offset, bytes } = encodeHeaderFields(h, ["incompatibleFeatures"]);
    await this.meta.write(offset, bytes);
    await this.meta.flush();
  }

  /** Set the corrupt bit (QEMU's fatal corruption signal). */
  markCorrupt(): Promise<void> {
    return this.setIncompatible(INCOMPAT_CORRUPT, true);
  }

  /** Set the dirty bit outside the lazy-refcount bookkeeping (a rebuild that breaks refcounts on purpose). */
  setDirtyBit(on: boolean): Promise<void> {
    return this.setIncompatible(INCOMPAT_DIRTY, on);
  }

  /** Lazy refcounts: mark the image dirty before the first metadata change. */
  async markDirty(): Promise<void> {
    if (this.#dirtyMarked || !this.lazyRefcounts) return;
    if (!this.isDirty) await this.setIncompatible(INCOMPAT_DIRTY, true);
    this.#dirtyMarked = true;
  }

  async markClean(): Promise<void> {
    if (!this.isDirty) return;
    await this.setIncompatible(INCOMPAT_DIRTY, false);
    this.#dirtyMarked = false;
  }

  /**
   * Run `update`, which changes refcounts and then COPIED flags in separate steps (snapshot create, apply and
   * delete), with the dirty bit set on a clean v3 image: a power loss in between leaves a dirty image, which
   * the next read-write open repairs, instead of COPIED flags that disagree with the refcounts. Everything is
   * on disk before the bit is cleared (refcounts included: with the bit set, writeback treats a
   * lazy-refcount image as dirty and leaves them cached). A refusal that `update` rolled back clears it too;
   * if writing back fails, the bit stays and the next read-write open repairs the image. Callers flush before
   * (their consistent cached state may reach disk under the bit). (QEMU 7.2 leaves that window open; the
   * final image is the same byte for byte.)
   */
  async withDirtyBit<T>(update: () => Promise<T>): Promise<T> {
    if (this.#hdr.header.version < 3 || this.isDirty || this.readOnly) return update();
    await this.setIncompatible(INCOMPAT_DIRTY, true);
    const settle = async () => {
      await this.writeback();
      await this.refcounts.writeBack();
      await this.flushStores();
      await this.markClean();
    };
    let result: T;
    try {
      result = await update();
    } catch (error) {
      // When settling fails too, the file refuses writes: nothing more is written (the bit stays, so the
      // next read-write open repairs), as QEMU writes nothing more after such a failure.
      if (!this.isCorrupt) await settle().catch(() => this.onUnusable?.());
      throw error;
    }
    await settle();
    return result;
  }

  /** Close: a dirty bit this open set for lazy refcounts is cleared once the refcounts are on disk. */
  async settleLazyRefcounts(): Promise<void> {
    if (!(this.lazyRefcounts && this.isDirty && this.#dirtyMarked)) return;
    await this.refcounts.writeBack();
    await this.meta.flush();
    await this.markClean();
  }

  // ---------------------------------------------------------------- write ordering

  /** Guest data was written to the data store (it must be durable before an L2 entry maps it). */
  noteDataWritten(): void {
    this.#dataDirty = true;
  }

  /** Rule 2 ahead of a reference written outside `writeback` (a new L2 table, L1 table): refcounts durable. */
  refcountsBeforeReference(): Promise<void> {
    return this.commitRefcounts("before-reference");
  }

  /**
   * Write the cached refcount blocks (lazy refcounts or not) and flush the qcow2 file, at a point of an
   * operation outside `writeback` that the rule `why` names:
   *  - "before-reference" (rule 2): clusters were allocated; the reference to them (a new table, the header's
   *    pointer to a snapshot table, bitmap directory or refcount table, an L2 entry) is written next;
   *  - "after-reference-removal" (rule 4): the references were removed and are durable (the caller's
   *    `writeback`, header switch or table write flushed them); the decreases follow them to disk;
   *  - "rollback": increases taken for references that never reached disk are given back;
   *  - "settle": all of it must be on disk before a state that depends on it (the dirty bit cleared, check's
   *    repairs finished, the file's used end read, close after a failed table flush).
   * Writing the refcount cache is safe at each of them: it holds increases (a leak at worst after a crash)
   * and decreases applied only once what referenced the clusters is gone from disk (the deferred frees of
   * `writeback`) or never reached it. `flush: false` leaves the flush to the caller's next step.
   */
  async commitRefcounts(why: RefcountCommit, opts: { flush?: boolean } = {}): Promise<void> {
    void why; // the caller's statement of the rule it keeps: the write is the same for each
    await this.refcounts.writeBack();
    if (opts.flush !== false) await this.meta.flush();
  }

  /** Bring metadata to disk in crash-safe order (rules 1 to 4 of the file comment). */
  async writeback(): Promise<void> {
    const lazy = this.lazyRefcounts && this.isDirty;
    const refcounts = this.refcounts;
    const tablesDirty = this.l2Cache.hasDirty || this.#l1.dirty;
    if (tablesDirty) {
      // 1: data before the entries that map it
      if (this.#dataDirty) await this.flushDataFile();
      // 2: refcount increases before the references
      if (!lazy && refcounts.hasDirty) await refcounts.writeBack();
      await this.meta.flush();
      if (this.l2Cache.hasDirty) {
        await this.l2Cache.writeBack();
        // 3: L2 tables before the L1 entries
        if (this.#l1.dirty) await this.meta.flush();
      }
      if (this.#l1.dirty) await this.#l1.writeBack(this.meta);
    } else if (!lazy && refcounts.hasDirty) {
      await refcounts.writeBack();
    }
    if (refcounts.deferredRanges > 0) {
      // 4: the removed references are durable before the refcounts drop
      await this.meta.flush();
      const freed = await refcounts.applyDeferredFrees();
      if (!lazy) await refcounts.writeBack();
      // Discards pass through to the qcow2 file for freed guest-requested clusters (QEMU's passthrough).
      const cs = this.clusterSize;
      for (const [start, count] of freed) await this.meta.discard(start * cs, count * cs);
    }
  }

  /** Write back when the caches or the deferred-free list grow too large. */
  async maybeWriteback(): Promise<void> {
    if (this.l2Cache.overCapacity || this.refcounts.deferredRanges > MAX_DEFERRED_RANGES) {
      await this.writeback();
      this.l2Cache.trim();
    }
  }

  /** Rule 5: both files reach stable storage. */
  private async flushStores(): Promise<void> {
    await this.meta.flush();
    await this.flushDataFile();
  }

  /**
   * Flush an external data file. The mark is cleared before the flush, not after: data written while it
   * runs (writes in flight beside this one) marks the file again, so the next writeback flushes it too.
   */
  private async flushDataFile(): Promise<void> {
    if (this.#data === this.meta) return;
    this.#dataDirty = false;
    try {
      await this.#data.flush();
    } catch (e) {
      this.#dataDirty = true;
      throw e;
    }
  }

  /** Write back everything in order and flush both files. */
  async flush(): Promise<void> {
    await this.writeback();
    await this.flushStores();
  }

  // ---------------------------------------------------------------- structures written here

  /** Allocate metadata clusters in the qcow2 file; refuses offset 0 as QEMU does. */
  async allocateMetadata(count: number, what: string): Promise<number> {
    const first = await this.refcounts.allocate(count);
    if (first === 0) {
      throw new Qcow2Error("CORRUPT", `Preventing invalid allocation of ${what} at offset 0`);
    }
    return first;
  }

  /** Rewrite the header's size field (after writing back metadata). */
  async setVirtualSize(newSize: number): Promise<void> {
    await this.writeback();
    await this.meta.flush();
    await this.setHeaderFields({ size: newSize });
  }

  /** Replace the L1 table with one of `minEntries` entries (QEMU's qcow2_grow_l1_table, exact size). */
  async growL1(minEntries: number): Promise<void> {
    const cs = this.clusterSize;
    if (minEntries * 8 > 32 * 1024 * 1024) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Active L1 table too large", { errno: "EFBIG" });
    }
    // Everything the new table copies must be on disk first.
    await this.writeback();
    await this.meta.flush();
    const old = this.#l1;
    const bytes = old.resized(minEntries);
    const clusters = Math.ceil((minEntries * 8) / cs);
    this.meta.debugEvent?.("l1_grow_alloc_table");
    const newOffset = (await this.allocateMetadata(clusters, "L1 table")) * cs;
    const oldClusters = Math.ceil((old.size * 8) / cs);
    try {
      await this.refcountsBeforeReference();
      this.meta.debugEvent?.("l1_grow_write_table");
      await this.meta.write(newOffset, bytes);
      await this.meta.flush();
    } catch (e) {
      // As QEMU's qcow2_grow_l1_table, the new table's clusters are given back when it cannot be written.
      this.refcounts.deferFree(newOffset / cs, clusters);
      throw e;
    }
    // A failed header switch may still have reached the disk: the new table then stays allocated (a leak at
    // worst), where QEMU frees it.
    this.meta.debugEvent?.("l1_grow_activate_table");
    await this.setHeaderFields({ l1Size: minEntries, l1TableOffset: newOffset });
    this.replaceL1(new L1Table(newOffset, minEntries, bytes));
    if (oldClusters > 0 && old.hostOffset !== 0) this.refcounts.deferFree(old.hostOffset / cs, oldClusters);
    await this.writeback();
  }

  /** Clear the L1 entries from `keep` on and free their L2 tables. */
  shrinkL1(keep: number): void {
    for (let i = keep; i < this.#l1.size; i++) {
      const off = this.#l1.l2Offset(i);
      if (off === 0) continue;
      this.#l1.set(i, 0, false);
      this.l2Cache.delete(off);
      this.refcounts.deferFree(off / this.clusterSize, 1);
    }
    this.#metadataClusters = undefined;
  }

  /** Truncate the qcow2 file after its last used cluster. */
  async truncateMetaTail(): Promise<void> {
    const cs = this.clusterSize;
    const size = await this.meta.size();
    // Cluster 0 (the header) always stays.
    const last = Math.max(0, await this.refcounts.lastReferenced(Math.ceil(size / cs)));
    const newEnd = (last + 1) * cs;
    if (newEnd < size) await this.meta.resize(newEnd);
  }

  /**
   * Rebuild the qcow2 file as header, refcount table (cluster 1), one refcount block (cluster 2) and an empty
   * L1 table of the same size (from cluster 3), for QEMU's qcow2_make_empty when nothing else uses the file.
   * The refcounts are broken in between: the dirty bit covers the rebuild.
   */
  async resetToEmpty(l1Clusters: number): Promise<void> {
    await this.setDirtyBit(true);
    try {
      await this.rebuildEmpty(l1Clusters);
    } catch (e) {
      // The structures on disk and in memory no longer agree: the image is unusable (QEMU ejects it).
      this.onUnusable?.();
      throw e;
    }
  }

  /** The part of resetToEmpty that breaks the refcounts on its way (the dirty bit is set). */
  private async rebuildEmpty(l1Clusters: number): Promise<void> {
    const cs = this.clusterSize;
    const meta = this.meta;
    const l1Entries = this.#l1.size;
    // QEMU's debug events of make_completely_empty mark each step (blkdebug rules fail them in 098).
    meta.debugEvent?.("l1_update");
    if (l1Clusters > 0) await meta.writeZeroes(this.#l1.hostOffset, l1Clusters * cs);
    meta.debugEvent?.("empty_image_prepare");
    await meta.writeZeroes(cs, (2 + l1Clusters) * cs);
    meta.debugEvent?.("l1_update");
    meta.debugEvent?.("reftable_update");
    await this.setHeaderFields({ l1TableOffset: 3 * cs, refcountTableOffset: cs, refcountTableClusters: 1 });
    const entry = new Uint8Array(8);
    setReftableEntry(viewOf(entry), 0, 2 * cs);
    meta.debugEvent?.("refblock_alloc");
    await meta.write(cs, entry);
    await meta.flush();
    const block = new Uint8Array(cs);
    for (let c = 0; c < 3 + l1Clusters; c++) setRefcount(block, c, this.#hdr.header.refcountOrder, 1);
    await meta.write(2 * cs, block);
    await meta.flush();
    await this.setDirtyBit(false);
    await meta.resize((3 + l1Clusters) * cs);
    this.replaceL1(new L1Table(3 * cs, l1Entries));
    this.l2Cache.clear();
    await this.loadRefcounts();
  }

  // ---------------------------------------------------------------- overlap check

  /** Forget what is derived from the active L1 table and the refcount structures. */
  metadataChanged(): void {
    this.#metadataClusters = undefined;
  }

  /** Record a new L2 table for the overlap check. */
  noteL2Table(hostOffset: number): void {
    const meta = this.metadataClusterSet();
    const c = hostOffset / this.clusterSize;
    meta.set(c, (meta.get(c) ?? 0) | META_L2);
  }

  /** Clusters of active L2 tables and refcount blocks, each with META_L2 | META_REFBLOCK bits. */
  private metadataClusterSet(): Map<number, number> {
    if (this.#metadataClusters) return this.#metadataClusters;
    const set = new Map<number, number>();
    const add = (c: number, k: number) => set.set(c, (set.get(c) ?? 0) | k);
    for (let i = 0; i < this.#l1.size; i++) {
      const off = this.#l1.l2Offset(i);
      if (off) add(Math.floor(off / this.clusterSize), META_L2);
    }
    const reftable = viewOf(this.refcounts.reftable);
    for (let i = 0; i < this.refcounts.reftableEntries; i++) {
      const off = getU64(reftable, i * 8) - (reftable.getUint32(i * 8 + 4) & 0x1ff);
      if (off) add(Math.floor(off / this.clusterSize), META_REFBLOCK);
    }
    this.#metadataClusters = set;
    return set;
  }

  private snapshotTableBytes(): number {
    return this.#snapshots.reduce((n, s) => n + s.entryBytes, 0) || this.clusterSize;
  }

  /** Refuse a data write onto metadata (QEMU's "cached" overlap check). */
  checkOverlap(hostOffset: number, byteLength: number): void {
    const cs = this.clusterSize;
    const h = this.#hdr.header;
    const first = Math.floor(hostOffset / cs);
    const last = Math.floor((hostOffset + byteLength - 1) / cs);
    const hit = (what: string) => {
      throw new Qcow2Error("CORRUPT", `Preventing invalid write on metadata (overlaps with ${what})`);
    };
    const inRange = (start: number, bytes: number) =>
      bytes > 0 && first <= Math.floor((start + bytes - 1) / cs) && last >= Math.floor(start / cs);
    // QEMU names the lowest overlap bit: header, active L1, active L2, refcount table, refcount block,
    // snapshot table.
    const meta = this.metadataClusterSet();
    let kinds = 0;
    // Whichever is shorter: the clusters of the write, or the metadata clusters.
    if (last - first + 1 <= meta.size) {
      for (let c = first; c <= last; c++) kinds |= meta.get(c) ?? 0;
    } else {
      for (const [c, k] of meta) if (c >= first && c <= last) kinds |= k;
    }
    if (first === 0) hit("qcow2_header");
    if (inRange(h.l1TableOffset, h.l1Size * 8)) hit("active L1 table");
    if (kinds & META_L2) hit("active L2 table");
    if (inRange(h.refcountTableOffset, h.refcountTableClusters * cs)) hit("refcount table");
    if (kinds & META_REFBLOCK) hit("refcount block");
    if (h.nbSnapshots > 0 && inRange(h.snapshotsOffset, this.snapshotTableBytes())) hit("snapshot table");
  }
}
