/**
 * The allocating write path: L2 tables made writable, clusters allocated, copy-on-write filled, entries linked
 * and old clusters released; crash-safe ordering is the metadata owner's (`MetadataOwner.writeback`).
 */
import { type L2Table } from "@qcowkit/cluster";
import {
  Qcow2Error,
  SubclusterType,
  classifyCluster,
  decodeCompressedDescriptor,
  firstNonZeroByte,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2HostOffset,
  l2IsCopied,
  setL2Bitmap,
  setL2Entry,
} from "@qcowkit/spec";
import { StoreSlice, type Payload } from "../store-slice";
import type { EngineHost } from "./host";
import type { ReadPath } from "./read-path";

/** Flags of a data cluster the active L1/L2 tables own alone. */
const COPIED = { copied: true } as const;

/**
 * An invalid (extended) L2 entry met while mapping a write for the in-place path: the allocating path, which
 * meets it too, reports it in the words of QEMU's write path.
 */
export function invalidEntryToAllocatingPath(e: unknown): false {
  if (e instanceof Qcow2Error && e.code === "CORRUPT" && e.message.startsWith("Invalid cluster entry found ")) return false;
  throw e;
}

export interface WriteHost extends EngineHost {
  readonly corruptSignalled: boolean;
  readonly reads: ReadPath;
  warn(message: string): void;
  /** Zero-discard's test, injected (it depends on this module). */
  rangeIsZero(guestOffset: number, byteLength: number): Promise<boolean>;
}

export class WritePath {
  constructor(private readonly h: WriteHost) {}

  /** Write when every byte lands in an allocated, COPIED (sub)cluster: no metadata change. */
  async tryWriteInPlace(guestOffset: number, data: Payload): Promise<boolean> {
    const single = this.h.md.map.mapRunCached(guestOffset, data.byteLength);
    if (single && single.byteLength === data.byteLength) {
      if (single.type !== SubclusterType.NORMAL || !single.copied) return false;
      await this.writeData(single.hostOffset, data, guestOffset);
      return true;
    }
    const end = guestOffset + data.byteLength;
    const runs: Array<[host: number, from: number, to: number]> = [];
    let pos = guestOffset;
    while (pos < end) {
      const run = await this.h.md.map.mapRun(pos, end - pos);
      if (run.type !== SubclusterType.NORMAL || !run.copied) return false;
      runs.push([run.hostOffset, pos - guestOffset, pos - guestOffset + run.byteLength]);
      pos += run.byteLength;
    }
    await Promise.all(runs.map(([host, from, to]) => this.writeData(host, data.subarray(from, to), guestOffset + from)));
    return true;
  }

  /** Write guest data at a host offset of the data store, with QEMU's overlap check for the qcow2 file. */
  async writeData(hostOffset: number, bytes: Payload, guestOffset: number): Promise<void> {
    this.h.md.meta.debugEvent?.("write_aio");
    if (bytes instanceof StoreSlice) {
      // Never encrypted (writeFromStores refuses): copied store to store.
      if (!this.h.hasDataFile) this.h.md.checkOverlap(hostOffset, bytes.byteLength);
      await bytes.copyTo(this.h.md.data, hostOffset);
      this.h.md.noteDataWritten();
      return;
    }
    // encryption: what is stored is an encrypted copy in whole sectors (the caller's buffer stays as it is)
    if (this.h.encryption) ({ hostOffset, bytes } = await this.h.encryption.seal(this.h.md.data, hostOffset, guestOffset, bytes));
    if (!this.h.hasDataFile) this.h.md.checkOverlap(hostOffset, bytes.byteLength);
    await this.h.md.data.write(hostOffset, bytes);
    this.h.md.noteDataWritten();
  }

  /** The L2 table for `guestOffset`, allocated (or copied from a shared one) so it can be changed in place. */
  async l2ForWrite(guestOffset: number): Promise<L2Table> {
    await this.h.md.markDirty();
    const l1Index = this.h.md.map.l1Index(guestOffset);
    if (l1Index >= this.h.md.l1.size) throw new Qcow2Error("INTERNAL", "L1 table too small for the write");
    const old = this.h.md.map.l2TableOffset(l1Index);
    if (old !== 0 && this.h.md.l1.copied(l1Index)) return this.h.md.l2Cache.get(old);
    const newOffset = (await this.h.md.allocateMetadata(1, "L2 table")) * this.h.clusterSize;
    // Like QEMU's l2_allocate: the refcounts (the new table's included) reach disk before the table is used,
    // even with lazy refcounts.
    await this.h.md.refcounts.writeBack();
    await this.h.md.meta.flush();
    const bytes = new Uint8Array(this.h.clusterSize);
    if (old !== 0) bytes.set((await this.h.md.l2Cache.get(old)).bytes);
    this.h.md.meta.debugEvent?.("l2_alloc_write");
    const table = this.h.md.l2Cache.create(newOffset, bytes);
    this.h.md.l1.set(l1Index, newOffset, true);
    this.h.md.noteL2Table(newOffset);
    if (old !== 0) this.h.md.refcounts.deferFree(old / this.h.clusterSize, 1);
    return table;
  }

  /** The allocating write path (exclusive lock held). */
  async writeUnlocked(guestOffset: number, data: Payload): Promise<void> {
    this.allocHint = -1;
    try {
      await this.writeUnlockedRuns(guestOffset, data);
    } finally {
      // Clusters of an extended L2 run allocated for a write that failed before it reached them go back.
      const left = this.extendedRun;
      this.extendedRun = undefined;
      if (left && left.count > 0) await this.h.md.refcounts.update(left.next, left.count, -1).catch(() => undefined);
    }
  }

  /**
   * Host cluster where the next allocation of the write being made should go: right after the host range of
   * its previous piece (QEMU's qcow2_alloc_host_offset keeps the host range of one write contiguous), -1 none.
   */
  private allocHint = -1;
  /** Extended L2: clusters allocated together for a run of clusters that all need new ones, not yet used. */
  private extendedRun: { next: number; count: number } | undefined;

  /**
   * QEMU's do_alloc_cluster_offset: `count` new clusters at the allocation hint when free there (as many as
   * are: qcow2_alloc_clusters_at), else where the allocator places them. Returns the first and how many.
   */
  private async allocateRun(count: number): Promise<[first: number, count: number]> {
    const refcounts = this.h.md.refcounts;
    const hint = this.allocHint;
    if (hint > 0) {
      let n = 0;
      while (n < count && (await refcounts.get(hint + n)) === 0) n++;
      if (n > 0) {
        await refcounts.allocateAt(hint, n);
        return [hint, n];
      }
    }
    return [await refcounts.allocate(count), count];
  }

  /** Extended L2: a new host cluster for the cluster at `pos`, from a run allocated for the clusters up to `tableEnd` that need one. */
  private async extendedHostCluster(t: L2Table, pos: number, tableEnd: number): Promise<number> {
    if (!this.extendedRun || this.extendedRun.count === 0) {
      const cs = this.h.clusterSize;
      let count = 0;
      for (let at = Math.floor(pos / cs) * cs; at < tableEnd; at += cs) {
        const [hi, lo] = this.entryHalves(t, this.h.md.map.l2Index(at));
        const kind = classifyCluster(hi, lo, this.h.md.map.format);
        if (kind === "normal" && l2IsCopied(hi)) break;
        count++;
      }
      const [next, n] = await this.allocateRun(Math.max(1, count));
      this.extendedRun = { next, count: n };
    }
    const run = this.extendedRun;
    run.count--;
    return run.next++;
  }

  private async writeUnlockedRuns(guestOffset: number, data: Payload): Promise<void> {
    const end = guestOffset + data.byteLength;
    const cs = this.h.clusterSize;
    let pos = guestOffset;
    while (pos < end) {
      const tableEnd = Math.min(end, (this.h.md.map.l1Index(pos) + 1) * this.h.md.map.l2Coverage);
      const t = await this.l2ForWrite(pos);
      while (pos < tableEnd) {
        if (this.h.extendedL2) {
          const clusterEnd = Math.min(tableEnd, (Math.floor(pos / cs) + 1) * cs);
          const piece = data.subarray(pos - guestOffset, clusterEnd - guestOffset);
          await this.writeClusterExtended(t, pos, piece instanceof StoreSlice ? await piece.bytes() : piece, tableEnd);
          pos = clusterEnd;
        } else {
          pos = await this.writeRunStandard(t, pos, tableEnd, data.subarray(pos - guestOffset, tableEnd - guestOffset));
        }
      }
      this.h.md.l2Cache.markDirty(t);
      await this.h.md.maybeWriteback();
    }
  }

  /**
   * Index of the first standard L2 entry of `[from, to)` that is not all zeros (unallocated, no flags), or -1:
   * the entries of a fresh table are skimmed in bulk instead of decoded one by one.
   */
  nextUsedEntry(t: L2Table, from: number, to: number): number {
    const at = firstNonZeroByte(t.bytes, from * 8, to * 8);
    return at < 0 ? -1 : at >>> 3;
  }

  entryHalves(t: L2Table, l2Index: number): [number, number] {
    const at = l2EntryPosition(l2Index, this.h.extendedL2);
    return [t.view.getUint32(at), t.view.getUint32(at + 4)];
  }

  /**
   * Standard L2 entries: handle the clusters from `pos` that share one way of writing (in place, or a fresh
   * contiguous allocation, or one reused cluster) and return where the next step starts. `data` holds the
   * guest bytes of [pos, tableEnd).
   */
  private async writeRunStandard(t: L2Table, pos: number, tableEnd: number, data: Payload): Promise<number> {
    const cs = this.h.clusterSize;
    const fmt = this.h.md.map.format;
    const clusterStart = Math.floor(pos / cs) * cs;
    const [hi, lo] = this.entryHalves(t, this.h.md.map.l2Index(pos));
    const kind = classifyCluster(hi, lo, fmt);
    const copied = l2IsCopied(hi);
    const oldHost = kind === "compressed" ? 0 : l2HostOffset(hi, lo);
    if (kind === "normal") this.h.md.map.entryType(t, this.h.md.map.l2Index(pos), 0, clusterStart); // validates
    // With a data file, preallocated zero clusters keep their own path (their host is their guest offset).
    const keptRun =
      (kind === "normal" || (kind === "zero-alloc" && !this.h.hasDataFile)) && copied
        ? this.keptRun(t, clusterStart, tableEnd, oldHost, this.h.hasDataFile)
        : undefined;
    if (keptRun && !keptRun.zeros) {
      // In place, extended over following clusters with contiguous hosts.
      await this.writeData(oldHost + (pos - clusterStart), data.subarray(0, keptRun.end - pos), pos);
      this.allocHint = Math.ceil((oldHost + (keptRun.end - clusterStart)) / cs);
      return keptRun.end;
    }
    const reuse = this.h.hasDataFile || keptRun !== undefined;
    if (reuse && !this.h.hasDataFile && oldHost % cs !== 0) {
      const at = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`);
      throw new Qcow2Error("CORRUPT", `Preallocated zero cluster offset ${at(oldHost)} unaligned (guest offset: ${at(pos)})`);
    }
    // A run of clusters that all need the same treatment.
    let runEnd = Math.min(tableEnd, clusterStart + cs);
    if (!reuse) {
      while (runEnd < tableEnd) {
        // Unallocated entries (all zeros) join the run: skipped in bulk up to the next entry that is not.
        const index = this.h.md.map.l2Index(runEnd);
        const used = this.nextUsedEntry(t, index, index + Math.ceil((tableEnd - runEnd) / cs));
        if (used < 0) {
          runEnd = tableEnd;
          break;
        }
        runEnd += (used - index) * cs;
        const [nhi, nlo] = this.entryHalves(t, used);
        const nkind = classifyCluster(nhi, nlo, fmt);
        if ((nkind === "normal" || nkind === "zero-alloc") && l2IsCopied(nhi)) break;
        runEnd = Math.min(tableEnd, runEnd + cs);
      }
    } else if (!this.h.hasDataFile) {
      // Preallocated zero clusters and data clusters kept in place, with contiguous hosts: written as one
      // request, as QEMU's handle_copied keeps them together.
      runEnd = keptRun!.end;
    } else {
      while (runEnd < tableEnd) {
        const [nhi, nlo] = this.entryHalves(t, this.h.md.map.l2Index(runEnd));
        const nkind = classifyCluster(nhi, nlo, fmt);
        if (nkind === "normal" && l2IsCopied(nhi)) break;
        if (nkind === "compressed") break;
        runEnd = Math.min(tableEnd, runEnd + cs);
      }
    }
    let count = Math.ceil((runEnd - clusterStart) / cs);
    let hostStart: number;
    if (this.h.hasDataFile) hostStart = clusterStart;
    else if (reuse) hostStart = oldHost;
    else {
      const [first, n] = await this.allocateRun(count);
      hostStart = first * cs;
      if (n < count) {
        count = n;
        runEnd = Math.min(runEnd, clusterStart + n * cs);
      }
    }
    if (!this.h.hasDataFile) this.allocHint = hostStart / cs + count;
    try {
      await this.writeAllocatedRun(t, clusterStart, count, hostStart, pos, data.subarray(0, runEnd - pos));
    } catch (e) {
      // QEMU's allocation abort: fresh clusters whose data write failed before the L2 entries took them are given back.
      const fresh = !this.h.hasDataFile && !reuse && l2HostOffset(...this.entryHalves(t, this.h.md.map.l2Index(clusterStart))) !== hostStart;
      if (fresh) await this.h.md.refcounts.update(hostStart / cs, count, -1).catch(() => undefined);
      throw e;
    }
    return runEnd;
  }

  /**
   * The run of clusters from `clusterStart` (below `tableEnd`) that keep their host clusters: data or
   * preallocated zero clusters with the COPIED flag whose hosts follow `host` contiguously (QEMU's
   * count_single_write_clusters), and how many of them are preallocated zero clusters.
   */
  private keptRun(t: L2Table, clusterStart: number, tableEnd: number, host: number, dataOnly = false): { end: number; zeros: number } {
    const cs = this.h.clusterSize;
    let end = clusterStart;
    let zeros = 0;
    while (end < tableEnd) {
      const [hi, lo] = this.entryHalves(t, this.h.md.map.l2Index(end));
      const kind = classifyCluster(hi, lo, this.h.md.map.format);
      if ((kind !== "normal" && (kind !== "zero-alloc" || dataOnly)) || !l2IsCopied(hi)) break;
      if (l2HostOffset(hi, lo) !== host + (end - clusterStart)) break;
      if (kind === "zero-alloc") zeros++;
      end = Math.min(tableEnd, end + cs);
    }
    return { end, zeros };
  }

  /**
   * Write guest bytes `data` at guest `pos` into `count` clusters starting at guest `clusterStart`, newly
   * placed at `hostStart`, filling the unwritten head and tail from the old content (copy-on-write), then
   * point the L2 entries at them and free what they pointed to before.
   */
  private async writeAllocatedRun(
    t: L2Table,
    clusterStart: number,
    count: number,
    hostStart: number,
    pos: number,
    data: Payload,
  ): Promise<void> {
    const cs = this.h.clusterSize;
    const writeEnd = pos + data.byteLength;
    const runEndGuest = clusterStart + count * cs;
    const lastCluster = clusterStart + (count - 1) * cs;
    // A partial head or tail cluster that keeps its data in place needs no copy-on-write (QEMU's
    // calculate_l2_meta with keep_old): only the written bytes change there.
    const headPartial = pos > clusterStart && !this.keptInPlace(t, clusterStart, hostStart);
    const tailPartial = writeEnd < runEndGuest && !this.keptInPlace(t, lastCluster, hostStart + (count - 1) * cs);
    const writes: Promise<void>[] = [];
    const fillCluster = async (guestCluster: number) => {
      const buf = new Uint8Array(cs);
      const oldIsZero = await this.readsAsZero(t, guestCluster);
      if (!oldIsZero) await this.h.reads.readUnlocked(guestCluster, buf);
      const from = Math.max(pos, guestCluster);
      const to = Math.min(writeEnd, guestCluster + cs);
      const part = data.subarray(from - pos, to - pos);
      buf.set(part instanceof StoreSlice ? await part.bytes() : part, from - guestCluster);
      const host = hostStart + (guestCluster - clusterStart);
      // The whole cluster is written, zeros included, so the file holds no hole that block status would
      // report as zero (QEMU writes the copy-on-write regions explicitly too).
      await this.writeData(host, buf, guestCluster);
    };
    // encryption: zeroed host clusters would not read as zeros, so encrypted images always fill
    if ((headPartial || tailPartial) && this.h.md.data.efficientZeroes && !this.h.encryption && (await this.cowIsZero(t, clusterStart, count, headPartial, tailPartial))) {
      // Zero the clusters without writing zero bytes, from the start of the copy-on-write head (or of the data)
      // to the end of the tail (or of the data), then write only the data (QEMU's handle_alloc_space). Data
      // clusters kept in place between them are overwritten whole.
      const zeroFrom = headPartial ? hostStart : hostStart + (pos - clusterStart);
      const zeroTo = tailPartial ? hostStart + count * cs : hostStart + (writeEnd - clusterStart);
      await this.h.md.data.writeZeroes(zeroFrom, zeroTo - zeroFrom, false);
      await this.writeData(hostStart + (pos - clusterStart), data, pos);
    } else if (count === 1 && (headPartial || tailPartial)) {
      await fillCluster(clusterStart);
    } else {
      let midFrom = pos;
      let midTo = writeEnd;
      if (headPartial) {
        writes.push(fillCluster(clusterStart));
        midFrom = clusterStart + cs;
      }
      if (tailPartial) {
        writes.push(fillCluster(lastCluster));
        midTo = lastCluster;
      }
      if (midTo > midFrom) {
        writes.push(this.writeData(hostStart + (midFrom - clusterStart), data.subarray(midFrom - pos, midTo - pos), midFrom));
      }
      await Promise.all(writes);
    }
    // Link: new entries first, then the old clusters are freed (after the new entries are durable).
    const firstIndex = this.h.md.map.l2Index(clusterStart);
    // Entries that were unallocated (all zeros) release nothing.
    const freesNothing = this.h.hasDataFile || this.nextUsedEntry(t, firstIndex, firstIndex + count) < 0;
    for (let i = 0; i < count; i++) {
      const l2Index = firstIndex + i;
      const host = hostStart + i * cs;
      const old = freesNothing ? undefined : this.entryHalves(t, l2Index);
      setL2Entry(t.view, l2Index, false, host, COPIED);
      if (old) this.freeEntryCluster(old[0], old[1], host);
    }
    this.h.md.l2Cache.markDirty(t);
  }

  /** Guest cluster `guestCluster` is a data cluster with the COPIED flag at `host` (its data stays in place). */
  private keptInPlace(t: L2Table, guestCluster: number, host: number): boolean {
    const [hi, lo] = this.entryHalves(t, this.h.md.map.l2Index(guestCluster));
    return classifyCluster(hi, lo, this.h.md.map.format) === "normal" && l2IsCopied(hi) && l2HostOffset(hi, lo) === host;
  }

  /** The copy-on-write head and tail of a new allocation all read as zeros. */
  private async cowIsZero(t: L2Table, clusterStart: number, count: number, head: boolean, tail: boolean): Promise<boolean> {
    if (head && !(await this.readsAsZero(t, clusterStart))) return false;
    if (tail && !(await this.readsAsZero(t, clusterStart + (count - 1) * this.h.clusterSize))) return false;
    return true;
  }

  /** True when guest cluster `guestCluster` reads as zeros with no I/O (unallocated without backing, or zero). */
  private async readsAsZero(t: L2Table, guestCluster: number): Promise<boolean> {
    const [hi, lo] = this.entryHalves(t, this.h.md.map.l2Index(guestCluster));
    const kind = classifyCluster(hi, lo, this.h.md.map.format);
    if (kind === "zero-plain" || kind === "zero-alloc") return true;
    if (kind === "unallocated") return !this.h.backing || guestCluster >= this.h.backing.virtualSize;
    return false;
  }

  /**
   * Queue the release of the host cluster an old entry (hi, lo) referenced, unless it is `keptHost`.
   * Compressed entries release every host cluster their data touches.
   */
  freeEntryCluster(hi: number, lo: number, keptHost: number, passDiscard = false): void {
    const kind = classifyCluster(hi, lo, this.h.md.map.format);
    const cs = this.h.clusterSize;
    if (kind === "compressed") {
      const d = decodeCompressedDescriptor(hi, lo, this.h.clusterBits);
      const first = Math.floor(d.hostOffset / cs);
      const last = Math.floor((d.hostOffset + d.byteLength - 1) / cs);
      this.h.md.refcounts.deferFree(first, last - first + 1, passDiscard);
      return;
    }
    if (kind === "normal" || kind === "zero-alloc") {
      const host = l2HostOffset(hi, lo);
      if (host % cs !== 0) this.nonFatalCorruption(`Cannot free unaligned cluster 0x${host.toString(16)}`);
      else if (host !== keptHost && host !== 0) this.h.md.refcounts.deferFree(host / cs, 1, passDiscard);
    }
  }

  private nonFatalSignalled = false;

  /** QEMU's qcow2_signal_corruption with fatal=false: reported once, the image stays usable and unmarked. */
  private nonFatalCorruption(message: string): void {
    if (this.nonFatalSignalled || this.h.corruptSignalled) return;
    this.nonFatalSignalled = true;
    this.h.warn(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`);
  }

  /** Extended L2: write the part of one cluster given by `data` at guest `pos`. */
  private async writeClusterExtended(t: L2Table, pos: number, data: Uint8Array, tableEnd = pos + data.byteLength): Promise<void> {
    const cs = this.h.clusterSize;
    const scSize = cs / 32;
    const clusterStart = Math.floor(pos / cs) * cs;
    const l2Index = this.h.md.map.l2Index(pos);
    const [hi, lo] = this.entryHalves(t, l2Index);
    const alloc = l2BitmapAlloc(t.view, l2Index);
    const zero = l2BitmapZero(t.view, l2Index);
    const kind = classifyCluster(hi, lo, this.h.md.map.format);
    if (kind !== "compressed" && kind !== "unallocated") this.h.md.map.entryType(t, l2Index, 0, clusterStart, true);
    // QEMU's calculate_l2_meta: the subclusters where the write starts and ends are valid.
    if (kind !== "compressed") {
      for (const sc of [Math.floor((pos - clusterStart) / (cs / 32)), Math.floor((pos - clusterStart + data.byteLength - 1) / (cs / 32))]) {
        this.h.md.map.entryType(t, l2Index, sc, clusterStart, true);
      }
    }
    const copied = l2IsCopied(hi);
    const oldHost = kind === "compressed" ? 0 : l2HostOffset(hi, lo);
    const reuse = this.h.hasDataFile || (kind === "normal" && copied);
    const host = this.h.hasDataFile ? clusterStart : reuse ? oldHost : (await this.extendedHostCluster(t, pos, tableEnd)) * cs;
    if (!this.h.hasDataFile) this.allocHint = host / cs + 1;
    const from = pos - clusterStart;
    const to = from + data.byteLength;
    const firstSc = Math.floor(from / scSize);
    const lastSc = Math.floor((to - 1) / scSize);
    const buf = new Uint8Array(cs);
    let newAlloc = reuse ? alloc : 0;
    let newZero = zero;
    // Data that must move to a new host cluster: every allocated subcluster (all of a compressed cluster).
    if (!reuse && (kind === "normal" || kind === "compressed")) {
      await this.h.reads.readUnlocked(clusterStart, buf);
      newAlloc = kind === "compressed" ? 0xffffffff : alloc;
      if (kind === "compressed") newZero = 0;
      else if (alloc !== 0) {
        // QEMU's calculate_l2_meta: the copy spans from the first allocated or written subcluster to the last
        // one, and all of that span is allocated in the new cluster (its zero subclusters become data).
        const start = Math.min(firstSc, 31 - Math.clz32(alloc & -alloc));
        const end = Math.max(lastSc, 31 - Math.clz32(alloc));
        const span = ((end - start + 1 >= 32 ? 0xffffffff : (1 << (end - start + 1)) - 1) << start) >>> 0;
        newAlloc = (newAlloc | span) >>> 0;
        newZero = (newZero & ~span) >>> 0;
      }
    }
    // Fill the untouched part of partially written subclusters that hold no data yet from the old content
    // (backing file or zeros); partially written subclusters that hold data keep it.
    const filled = new Set<number>();
    for (const sc of new Set([firstSc, lastSc])) {
      const scStart = sc * scSize;
      const partial = from > scStart || to < scStart + scSize;
      if (partial && !(newAlloc & (1 << sc))) {
        await this.h.reads.readUnlocked(clusterStart + scStart, buf.subarray(scStart, scStart + scSize));
        filled.add(sc);
      }
    }
    buf.set(data, from);
    const touched = (((lastSc - firstSc + 1 >= 32 ? 0xffffffff : (1 << (lastSc - firstSc + 1)) - 1) << firstSc) >>> 0);
    newAlloc = (newAlloc | touched) >>> 0;
    newZero = (newZero & ~touched) >>> 0;
    const movesData = !reuse && (kind === "normal" || kind === "compressed");
    if (movesData) {
      await this.writeData(host, buf, clusterStart);
    } else {
      // Only the written subclusters (plus the filled parts of partial ones) are written.
      const spanStart = filled.has(firstSc) ? firstSc * scSize : from;
      const spanEnd = filled.has(lastSc) ? (lastSc + 1) * scSize : to;
      const fillIsZero = filled.size > 0 && (await this.subclustersReadZero(clusterStart, filled, scSize));
      // encryption: no zeroing of host bytes for encrypted images (see writeAllocatedRun)
      if (fillIsZero && this.h.md.data.efficientZeroes && !this.h.encryption) {
        await this.h.md.data.writeZeroes(host + spanStart, spanEnd - spanStart, false);
        await this.writeData(host + from, data, pos);
      } else {
        await this.writeData(host + spanStart, buf.subarray(spanStart, spanEnd), clusterStart + spanStart);
      }
    }
    setL2Entry(t.view, l2Index, true, host, { copied: true });
    setL2Bitmap(t.view, l2Index, newAlloc, newZero);
    if (!this.h.hasDataFile && !reuse) this.freeEntryCluster(hi, lo, host);
    this.h.md.l2Cache.markDirty(t);
  }

  /** The given subclusters of the cluster at `clusterStart` read as zeros (before the write changes them). */
  private async subclustersReadZero(clusterStart: number, subclusters: Set<number>, scSize: number): Promise<boolean> {
    for (const sc of subclusters) {
      if (!(await this.h.rangeIsZero(clusterStart + sc * scSize, Math.min(scSize, this.h.virtualSize - clusterStart - sc * scSize)))) {
        return false;
      }
    }
    return true;
  }
}
