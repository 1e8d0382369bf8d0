/**
 * The mapping's write side: L2 tables made writable (a new table for an empty L1 slot, a copy of a shared
 * one), host clusters chosen for a write, the copy-on-write each partly written cluster needs, and the
 * entry updates that link new clusters and release old ones.
 *
 * This module plans and encodes; it performs no data I/O and keeps no ordering rule. Clusters come from an
 * injected `ClusterAllocator` (the refcount owner), and the one point where ordering matters here (a new
 * table's refcount must be durable before the L1 entry references it) is the injected
 * `ReferenceOrdering.beforeReference`, which the metadata owner implements. Entries change in the L2
 * cache only; the owner writes them back in its order.
 */
import { Qcow2Error, firstNonZeroByte, l2EntryPosition, setL2Raw } from "@qcowkit/spec";
import { readL2Entry, referencedClusters, writeL2Bitmap, writeL2Entry, type L2Entry, type L2EntryValue } from "./entry";
import type { L2Table } from "./l2-cache";
import type { ClusterMap } from "./mapping";

/** Clusters of the image's qcow2 file, counted by whoever owns the refcounts. */
export interface ClusterAllocator {
  /** `count` contiguous free clusters, now in use (refcount 1): the first one's index. */
  allocate(count: number): Promise<number>;
  /** Take the free clusters from `first` on (at most `count`, stopping at the first one in use): how many. */
  allocateAt(first: number, count: number): Promise<number>;
  /** Clusters for metadata (`what` names it in the refusal of cluster 0). */
  allocateMetadata(count: number, what: string): Promise<number>;
  /** Drop one reference to each cluster once the references removed now are durable (deferred). */
  release(first: number, count: number, passDiscard?: boolean): void;
  /** Give back clusters no reference ever reached (a write that failed before its entries took them). */
  unallocate(first: number, count: number): Promise<void>;
}

/** The metadata owner's ordering step this module needs. */
export interface ReferenceOrdering {
  /** Refcounts of clusters just allocated are made durable before a reference to them is written. */
  beforeReference(): Promise<void>;
  /** A new active L2 table exists at `hostOffset` (for the owner's overlap check). */
  onNewTable?(hostOffset: number): void;
}

/** How a run of clusters of a standard L2 table is written (the first cluster decides). */
export type StandardWritePlan =
  /** Every cluster of [pos, end) is data with COPIED at contiguous hosts: written in place, no entry changes. */
  | { mode: "in-place"; end: number; hostOffset: number }
  /** `count` clusters from `clusterStart` need new host clusters (allocate, copy-on-write, link). */
  | { mode: "allocate"; clusterStart: number; count: number; runEnd: number }
  /** `count` clusters keep their hosts from `hostStart` (preallocated zero clusters, data-file clusters): written whole, relinked. */
  | { mode: "reuse"; clusterStart: number; count: number; runEnd: number; hostStart: number };

/** Where the unwritten part of a partly written cluster comes from. */
export type CowSource = "zeros" | "backing" | "data" | "compressed";

/** A cluster written in part: the guest ranges around the write that its new host cluster must also hold. */
export interface CowFill {
  guestCluster: number;
  source: CowSource;
  /** Guest byte ranges [from, to) of the cluster not covered by the write. */
  ranges: Array<[from: number, to: number]>;
}

/** Extended L2: what writing bytes [from, to) of one cluster does to it. */
export interface ExtendedWritePlan {
  /** All the cluster's data moves to a new host cluster (it is read whole first). */
  movesData: boolean;
  /** Subclusters written in part that hold no data yet: their other bytes are read from the old content. */
  fill: number[];
  allocBits: number;
  zeroBits: number;
}

const mask = (first: number, last: number) => (last - first + 1 >= 32 ? 0xffffffff : (((1 << (last - first + 1)) - 1) << first) >>> 0);
const hex = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`);

export class ClusterWriter {
  /**
   * Host cluster where the next allocation of the write being made should go: right after the host range of
   * its previous piece (as QEMU keeps the host range of one write contiguous), -1 none.
   */
  private hint = -1;
  /** Extended L2: clusters allocated together for a run of clusters that all need new ones, not yet used. */
  private extendedRun: { next: number; count: number } | undefined;

  constructor(
    readonly map: ClusterMap,
    private readonly allocator: ClusterAllocator,
    private readonly ordering: ReferenceOrdering,
  ) {}

  private get clusterSize(): number {
    return this.map.clusterSize;
  }

  // ---------------------------------------------------------------- L2 allocation

  /** The L2 table for `guestOffset`, allocated (or copied from a shared one) so it can be changed in place. */
  async writableTable(guestOffset: number): Promise<L2Table> {
    const map = this.map;
    const l1Index = map.l1Index(guestOffset);
    if (l1Index >= map.l1.size) throw new Qcow2Error("INTERNAL", "L1 table too small for the write");
    const old = map.l2TableOffset(l1Index);
    if (old !== 0 && map.l1.copied(l1Index)) return map.cache.get(old);
    const cs = this.clusterSize;
    const newOffset = (await this.allocator.allocateMetadata(1, "L2 table")) * cs;
    // The new table's refcount (and every other) reaches disk before anything references it, even with
    // lazy refcounts (QEMU's l2_allocate).
    await this.ordering.beforeReference();
    const bytes = new Uint8Array(cs);
    if (old !== 0) bytes.set((await map.cache.get(old)).bytes);
    const table = map.cache.create(newOffset, bytes);
    map.l1.set(l1Index, newOffset, true);
    this.ordering.onNewTable?.(newOffset);
    if (old !== 0) this.allocator.release(old / cs, 1);
    return table;
  }

  // ---------------------------------------------------------------- host cluster allocation

  /** A new write starts: no allocation hint, no clusters left from an earlier one. */
  beginWrite(): void {
    this.hint = -1;
  }

  /** The write ended: clusters of an extended L2 run allocated for pieces it did not reach go back. */
  async endWrite(): Promise<void> {
    const left = this.extendedRun;
    this.extendedRun = undefined;
    if (left && left.count > 0) await this.allocator.unallocate(left.next, left.count).catch(() => undefined);
  }

  /** The write's next piece follows host cluster `nextCluster` (keeps one write's host range contiguous). */
  continueAt(nextCluster: number): void {
    this.hint = nextCluster;
  }

  /**
   * `count` new clusters at the allocation hint when free there (as many as are), else where the allocator
   * places them (QEMU's do_alloc_cluster_offset). Returns the first and how many.
   */
  private async allocateRun(count: number): Promise<[first: number, count: number]> {
    if (this.hint > 0) {
      const n = await this.allocator.allocateAt(this.hint, count);
      if (n > 0) return [this.hint, n];
    }
    return [await this.allocator.allocate(count), count];
  }

  /**
   * Host clusters for an "allocate" or "reuse" plan: the clusters it keeps, or new ones (at the allocation
   * hint when free there; the run is shortened to what was free there). The next piece of the write goes
   * after them.
   */
  async placeRun(plan: Exclude<StandardWritePlan, { mode: "in-place" }>): Promise<{ hostStart: number; count: number; runEnd: number }> {
    const cs = this.clusterSize;
    let { count, runEnd } = plan;
    let hostStart: number;
    if (plan.mode === "reuse") hostStart = plan.hostStart;
    else {
      const [first, n] = await this.allocateRun(count);
      hostStart = first * cs;
      if (n < count) {
        count = n;
        runEnd = Math.min(runEnd, plan.clusterStart + n * cs);
      }
    }
    if (!this.map.dataFile) this.hint = hostStart / cs + count;
    return { hostStart, count, runEnd };
  }

  /** Give back clusters allocated for a run whose data write failed before its entries took them. */
  unallocate(first: number, count: number): Promise<void> {
    return this.allocator.unallocate(first, count);
  }

  /**
   * Extended L2: the host cluster for writing the cluster at `pos` and whether it is the one it has (data-file
   * images: the guest offset; a data cluster with COPIED: its own; else a new one, taken from a run allocated
   * for the clusters up to `tableEnd` that all need one).
   */
  async extendedHost(t: L2Table, pos: number, tableEnd: number, e: L2Entry): Promise<{ host: number; reuse: boolean }> {
    const cs = this.clusterSize;
    const clusterStart = Math.floor(pos / cs) * cs;
    if (this.map.dataFile) return { host: clusterStart, reuse: true };
    if (e.kind === "normal" && e.copied) {
      this.hint = e.hostOffset / cs + 1;
      return { host: e.hostOffset, reuse: true };
    }
    if (!this.extendedRun || this.extendedRun.count === 0) {
      let count = 0;
      for (let at = clusterStart; at < tableEnd; at += cs) {
        const next = this.entry(t, at);
        if (next.kind === "normal" && next.copied) break;
        count++;
      }
      const [next, n] = await this.allocateRun(Math.max(1, count));
      this.extendedRun = { next, count: n };
    }
    const run = this.extendedRun;
    run.count--;
    const host = run.next++ * cs;
    this.hint = host / cs + 1;
    return { host, reuse: false };
  }

  // ---------------------------------------------------------------- planning

  /** The entry for the cluster holding `guestOffset` in table `t`. */
  entry(t: L2Table, guestOffset: number): L2Entry {
    return readL2Entry(t.view, this.map.l2Index(guestOffset), this.map);
  }

  /**
   * Index of the first standard L2 entry of `[from, to)` that is not all zeros (unallocated, no flags), or -1:
   * the entries of a fresh table are skimmed in bulk instead of decoded one by one.
   */
  nextUsedEntry(t: L2Table, from: number, to: number): number {
    const at = firstNonZeroByte(t.bytes, from * 8, to * 8);
    return at < 0 ? -1 : at >>> 3;
  }

  /**
   * Standard L2 entries: how to write the clusters from guest `pos` (below `tableEnd`, inside table `t`) that
   * share one way of writing: in place, a fresh contiguous allocation, or clusters that keep their hosts.
   */
  planStandard(t: L2Table, pos: number, tableEnd: number): StandardWritePlan {
    const cs = this.clusterSize;
    const dataFile = this.map.dataFile;
    const clusterStart = Math.floor(pos / cs) * cs;
    const e = this.entry(t, pos);
    if (e.kind === "normal") this.map.entryType(t, this.map.l2Index(pos), 0, clusterStart); // validates
    const preallocatedZero = e.kind === "zero" && e.hostOffset !== 0;
    // With a data file, preallocated zero clusters keep their own path (their host is their guest offset).
    const kept = (e.kind === "normal" || (preallocatedZero && !dataFile)) && e.copied ? this.keptRun(t, clusterStart, tableEnd, e.hostOffset, dataFile) : undefined;
    if (kept && !kept.zeros) return { mode: "in-place", end: kept.end, hostOffset: e.hostOffset + (pos - clusterStart) };
    if (dataFile) {
      let runEnd = Math.min(tableEnd, clusterStart + cs);
      while (runEnd < tableEnd) {
        const next = this.entry(t, runEnd);
        if ((next.kind === "normal" && next.copied) || next.kind === "compressed") break;
        runEnd = Math.min(tableEnd, runEnd + cs);
      }
      return { mode: "reuse", clusterStart, count: Math.ceil((runEnd - clusterStart) / cs), runEnd, hostStart: clusterStart };
    }
    if (kept) {
      if (e.hostOffset % cs !== 0) {
        throw new Qcow2Error("CORRUPT", `Preallocated zero cluster offset ${hex(e.hostOffset)} unaligned (guest offset: ${hex(pos)})`);
      }
      // Preallocated zero clusters and data clusters kept in place, with contiguous hosts: one request, as
      // QEMU's handle_copied keeps them together.
      return { mode: "reuse", clusterStart, count: Math.ceil((kept.end - clusterStart) / cs), runEnd: kept.end, hostStart: e.hostOffset };
    }
    let runEnd = Math.min(tableEnd, clusterStart + cs);
    while (runEnd < tableEnd) {
      // Unallocated entries (all zeros) join the run: skipped in bulk up to the next entry that is not.
      const index = this.map.l2Index(runEnd);
      const used = this.nextUsedEntry(t, index, index + Math.ceil((tableEnd - runEnd) / cs));
      if (used < 0) {
        runEnd = tableEnd;
        break;
      }
      runEnd += (used - index) * cs;
      const next = readL2Entry(t.view, used, this.map);
      if ((next.kind === "normal" || (next.kind === "zero" && next.hostOffset !== 0)) && next.copied) break;
      runEnd = Math.min(tableEnd, runEnd + cs);
    }
    return { mode: "allocate", clusterStart, count: Math.ceil((runEnd - clusterStart) / cs), runEnd };
  }

  /**
   * The run of clusters from `clusterStart` (below `tableEnd`) that keep their host clusters: data or
   * preallocated zero clusters with COPIED whose hosts follow `host` contiguously (QEMU's
   * count_single_write_clusters), and how many of them are preallocated zero clusters.
   */
  private keptRun(t: L2Table, clusterStart: number, tableEnd: number, host: number, dataOnly: boolean): { end: number; zeros: number } {
    const cs = this.clusterSize;
    let end = clusterStart;
    let zeros = 0;
    while (end < tableEnd) {
      const e = this.entry(t, end);
      const zeroAlloc = e.kind === "zero" && e.hostOffset !== 0;
      if ((e.kind !== "normal" && (!zeroAlloc || dataOnly)) || !e.copied) break;
      if (e.hostOffset !== host + (end - clusterStart)) break;
      if (zeroAlloc) zeros++;
      end = Math.min(tableEnd, end + cs);
    }
    return { end, zeros };
  }

  /** Where the old content of guest cluster `guestCluster` (mapped by `e`) comes from. */
  cowSource(e: L2Entry, guestCluster: number, backingSize: number): CowSource {
    if (e.kind === "zero") return "zeros";
    if (e.kind === "unallocated") return guestCluster < backingSize ? "backing" : "zeros";
    return e.kind === "compressed" ? "compressed" : "data";
  }

  /**
   * Copy-on-write for writing guest bytes [pos, writeEnd) into `count` clusters from `clusterStart` placed at
   * `hostStart`: the partly written first and last clusters, with where their other bytes come from. A
   * partly written cluster that keeps its data in place (COPIED data at the same host) needs none (QEMU's
   * calculate_l2_meta with keep_old). `backingSize`: the backing image's size (0 without one).
   */
  planCopyOnWrite(t: L2Table, clusterStart: number, count: number, hostStart: number, pos: number, writeEnd: number, backingSize: number): CowFill[] {
    const cs = this.clusterSize;
    const lastCluster = clusterStart + (count - 1) * cs;
    const keptInPlace = (guestCluster: number, host: number) => {
      const e = this.entry(t, guestCluster);
      return e.kind === "normal" && e.copied && e.hostOffset === host;
    };
    const head = pos > clusterStart && !keptInPlace(clusterStart, hostStart);
    const tail = writeEnd < clusterStart + count * cs && !keptInPlace(lastCluster, hostStart + (count - 1) * cs);
    const fill = (guestCluster: number): CowFill => {
      const ranges: Array<[number, number]> = [];
      if (pos > guestCluster) ranges.push([guestCluster, pos]);
      if (writeEnd < guestCluster + cs) ranges.push([writeEnd, guestCluster + cs]);
      return { guestCluster, source: this.cowSource(this.entry(t, guestCluster), guestCluster, backingSize), ranges };
    };
    if (count === 1) return head || tail ? [fill(clusterStart)] : [];
    const fills: CowFill[] = [];
    if (head) fills.push(fill(clusterStart));
    if (tail) fills.push(fill(lastCluster));
    return fills;
  }

  /**
   * Extended L2: writing bytes [from, to) of a cluster whose entry is `e`, either into its own host cluster
   * (`reuse`) or a new one (QEMU's calculate_l2_meta for subclusters).
   */
  planExtended(e: L2Entry, from: number, to: number, reuse: boolean): ExtendedWritePlan {
    const scSize = this.clusterSize / 32;
    const firstSc = Math.floor(from / scSize);
    const lastSc = Math.floor((to - 1) / scSize);
    const movesData = !reuse && (e.kind === "normal" || e.kind === "compressed");
    let alloc = reuse ? e.allocBits : 0;
    let zero = e.zeroBits;
    if (movesData) {
      alloc = e.kind === "compressed" ? 0xffffffff : e.allocBits;
      if (e.kind === "compressed") zero = 0;
      else if (e.allocBits !== 0) {
        // The copy spans from the first allocated or written subcluster to the last one, and all of that span
        // is allocated in the new cluster (its zero subclusters become data).
        const start = Math.min(firstSc, 31 - Math.clz32(e.allocBits & -e.allocBits));
        const end = Math.max(lastSc, 31 - Math.clz32(e.allocBits));
        const span = mask(start, end);
        alloc = (alloc | span) >>> 0;
        zero = (zero & ~span) >>> 0;
      }
    }
    // Partly written subclusters that hold no data yet are filled from the old content (backing file or
    // zeros); partly written ones that hold data keep it.
    const fill: number[] = [];
    for (const sc of firstSc === lastSc ? [firstSc] : [firstSc, lastSc]) {
      const scStart = sc * scSize;
      if ((from > scStart || to < scStart + scSize) && !(alloc & (1 << sc))) fill.push(sc);
    }
    const touched = mask(firstSc, lastSc);
    return { movesData, fill, allocBits: (alloc | touched) >>> 0, zeroBits: (zero & ~touched) >>> 0 };
  }

  // ---------------------------------------------------------------- entry updates

  /**
   * Point `count` standard entries from guest `clusterStart` at new data clusters from `hostStart` (COPIED)
   * and release what they pointed to before (deferred: after the new entries are durable).
   */
  linkRun(t: L2Table, clusterStart: number, count: number, hostStart: number, onUnaligned?: (message: string) => void): void {
    const cs = this.clusterSize;
    const firstIndex = this.map.l2Index(clusterStart);
    // Entries that were unallocated (all zeros) release nothing.
    const releasesNothing = this.map.dataFile || this.nextUsedEntry(t, firstIndex, firstIndex + count) < 0;
    for (let i = 0; i < count; i++) {
      const host = hostStart + i * cs;
      const old = releasesNothing ? undefined : readL2Entry(t.view, firstIndex + i, this.map);
      writeL2Entry(t.view, firstIndex + i, { kind: "normal", hostOffset: host, copied: true }, this.map);
      if (old) this.release(old, host, false, onUnaligned);
    }
    this.map.cache.markDirty(t);
  }

  /** Extended L2: point the entry of the cluster at `guestOffset` at `host` (COPIED) with a new bitmap. */
  linkExtended(t: L2Table, guestOffset: number, host: number, allocBits: number, zeroBits: number): void {
    const index = this.map.l2Index(guestOffset);
    writeL2Entry(t.view, index, { kind: "normal", hostOffset: host, copied: true, allocBits, zeroBits }, this.map);
    this.map.cache.markDirty(t);
  }

  /** Set the entry of the cluster at `guestOffset` (extended tables: the value's bitmap, see `writeL2Entry`). */
  setEntry(t: L2Table, guestOffset: number, value: L2EntryValue): void {
    writeL2Entry(t.view, this.map.l2Index(guestOffset), value, this.map);
    this.map.cache.markDirty(t);
  }

  /** Change only the subcluster bitmap of the entry for `guestOffset`. */
  setBitmap(t: L2Table, guestOffset: number, allocBits: number, zeroBits: number): void {
    writeL2Bitmap(t.view, this.map.l2Index(guestOffset), allocBits, zeroBits);
    this.map.cache.markDirty(t);
  }

  /**
   * A whole cluster's entry made to read as zeros or as unallocated: "zero" drops its host cluster (standard:
   * the zero flag alone; extended: all zero bits), "zero-keep" keeps the host cluster and its other bits
   * (preallocated zero), "unallocated" clears the entry. Returns the old entry when anything changed (the
   * caller releases what it referenced), else undefined.
   */
  clearEntry(t: L2Table, guestOffset: number, to: "zero" | "zero-keep" | "unallocated"): L2Entry | undefined {
    const g = this.map;
    const index = g.l2Index(guestOffset);
    const at = l2EntryPosition(index, g.extendedL2);
    const hi = t.view.getUint32(at);
    const lo = t.view.getUint32(at + 4);
    const old = readL2Entry(t.view, index, g);
    const newHi = to === "zero-keep" ? hi : 0;
    const newLo = to === "zero-keep" ? (lo | (g.extendedL2 ? 0 : 1)) >>> 0 : to === "zero" && !g.extendedL2 ? 1 : 0;
    const newZero = to === "unallocated" ? 0 : 0xffffffff;
    if (newHi === hi && newLo === lo && (!g.extendedL2 || (old.allocBits === 0 && old.zeroBits === newZero))) return undefined;
    setL2Raw(t.view, index, g.extendedL2, newHi, newLo);
    if (g.extendedL2) writeL2Bitmap(t.view, index, 0, newZero);
    g.cache.markDirty(t);
    return old;
  }

  /**
   * Queue the release of the host clusters an old entry referenced, unless it is `keptHost`: every cluster a
   * compressed entry's data touches, the host cluster of a data or preallocated zero entry. An unaligned host
   * offset is not released: `onUnaligned` hears of it (QEMU's non-fatal corruption).
   */
  release(old: L2Entry, keptHost: number, passDiscard = false, onUnaligned?: (message: string) => void): void {
    if (old.kind === "unallocated") return;
    const cs = this.clusterSize;
    if (old.kind !== "compressed" && old.hostOffset % cs !== 0) {
      onUnaligned?.(`Cannot free unaligned cluster 0x${old.hostOffset.toString(16)}`);
      return;
    }
    if (old.kind !== "compressed" && old.hostOffset === keptHost) return;
    const clusters = referencedClusters(old, cs);
    if (clusters) this.allocator.release(clusters[0], clusters[1], passDiscard);
  }
}
