/**
 * The allocating write path. `@qcowkit/cluster` (`MetadataOwner.clusters`) plans: L2 tables made writable,
 * clusters allocated, which copy-on-write each partial cluster needs, entries linked and old clusters
 * released. This module performs the data I/O of those plans; crash-safe ordering is the metadata owner's
 * (`MetadataOwner.writeback`).
 */
import type { CowFill, L2Entry, L2Table } from "@qcowkit/cluster";
import { Qcow2Error, SubclusterType } from "@qcowkit/spec";
import { RangeLocks, RwLock } from "../lock";
import { StoreSlice, type Payload } from "../store-slice";
import type { EngineHost } from "./host";
import type { ReadPath } from "./read-path";

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

/** A run of an allocating write, placed: `count` clusters from guest `clusterStart` go to host `hostStart`. */
interface PlacedRun {
  clusterStart: number;
  count: number;
  hostStart: number;
  /** Guest offset where the run's written bytes start. */
  pos: number;
  fills: CowFill[];
}

/** A piece of a write that runs beside others (`writeShared`): in place, or a placed run to link afterwards. */
type SharedPiece = { pos: number; end: number } & ({ inPlace: true; hostOffset: number } | { inPlace: false; run: PlacedRun; fresh: boolean });

export class WritePath {
  /** Guest clusters of allocating writes in flight beside others (`writeShared`). */
  private readonly inFlight = new RangeLocks();
  /** Turns at the metadata for allocating writes in flight beside others (placing, then linking): one at a time. */
  private readonly metadataTurn = new RwLock();

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

  /**
   * A write that needs no exclusive lock (the caller holds it shared): in place, or allocating beside others
   * (`writeShared`). False: the exclusive path (`writeUnlocked`) takes it.
   */
  async writeBesideOthers(guestOffset: number, data: Payload): Promise<boolean> {
    return (await this.tryWriteInPlace(guestOffset, data).catch(invalidEntryToAllocatingPath)) || this.writeShared(guestOffset, data);
  }

  /**
   * The allocating write beside other writes and reads (the caller holds the lock shared), for what a fresh
   * image sees most: clusters that are unallocated, plain zero or COPIED data, so nothing the write does
   * releases a cluster someone may be reading. As QEMU does, only the metadata steps take turns: host clusters
   * are placed (and L2 tables made writable), the data and its copy-on-write are written with no turn held,
   * then the entries are linked. A write touching a cluster another one is placing waits for it (the later
   * one then finds the cluster allocated). Returns false, having changed nothing the exclusive path depends
   * on, for every other write: standard L2 only, no encryption, no cluster to release.
   */
  async writeShared(guestOffset: number, data: Payload): Promise<boolean> {
    if (this.h.extendedL2 || this.h.encryption) return false;
    const cs = this.h.clusterSize;
    const end = guestOffset + data.byteLength;
    const leave = await this.inFlight.enter(Math.floor(guestOffset / cs) * cs, Math.ceil(end / cs) * cs);
    try {
      const pieces = await this.metadataTurn.write(async () => ((await this.sharedEligible(guestOffset, end)) ? this.placeShared(guestOffset, end) : undefined));
      if (!pieces) return false;
      try {
        await Promise.all(
          pieces.map((p) =>
            p.inPlace
              ? this.writeData(p.hostOffset, data.subarray(p.pos - guestOffset, p.end - guestOffset), p.pos)
              : this.writeRunData(p.run, data.subarray(p.pos - guestOffset, p.end - guestOffset)),
          ),
        );
      } catch (e) {
        await this.metadataTurn.write(() => this.giveBack(pieces));
        throw e;
      }
      await this.metadataTurn.write(() => this.linkShared(pieces));
      return true;
    } finally {
      leave();
    }
  }

  /**
   * Every cluster of the write is unallocated, plain zero or COPIED data (with a data file: anything but
   * compressed). Damaged metadata also answers false: the exclusive path meets it and reports it.
   */
  private async sharedEligible(guestOffset: number, end: number): Promise<boolean> {
    const map = this.h.md.map;
    const cs = this.h.clusterSize;
    try {
      for (let at = Math.floor(guestOffset / cs) * cs; at < end; ) {
        if (map.l1Index(at) >= map.l1.size) return false;
        const tableEnd = Math.min(end, (map.l1Index(at) + 1) * map.l2Coverage);
        const t = await map.table(at);
        if (!t) {
          at = Math.ceil(tableEnd / cs) * cs;
          continue;
        }
        for (; at < tableEnd; at += cs) {
          const type = map.entryType(t, map.l2Index(at), 0, at);
          if (type === SubclusterType.COMPRESSED) return false;
          if (this.h.hasDataFile || type === SubclusterType.UNALLOCATED_PLAIN || type === SubclusterType.ZERO_PLAIN) continue;
          if (type !== SubclusterType.NORMAL || !this.h.md.clusters.entry(t, at).copied) return false;
        }
      }
      return true;
    } catch {
      return false;
    }
  }

  /** Tables made writable and host clusters placed for every piece of the write (metadata turn held). */
  private async placeShared(guestOffset: number, end: number): Promise<SharedPiece[]> {
    const clusters = this.h.md.clusters;
    const map = this.h.md.map;
    const cs = this.h.clusterSize;
    const pieces: SharedPiece[] = [];
    clusters.beginWrite();
    try {
      for (let pos = guestOffset; pos < end; ) {
        const tableEnd = Math.min(end, (map.l1Index(pos) + 1) * map.l2Coverage);
        const t = await this.l2ForWrite(pos);
        while (pos < tableEnd) {
          const plan = clusters.planStandard(t, pos, tableEnd);
          if (plan.mode === "in-place") {
            pieces.push({ pos, end: plan.end, inPlace: true, hostOffset: plan.hostOffset });
            clusters.continueAt(Math.ceil((plan.hostOffset + (plan.end - pos)) / cs));
            pos = plan.end;
            continue;
          }
          const { hostStart, count, runEnd } = await clusters.placeRun(plan);
          const fills = this.planFills(t, plan.clusterStart, count, hostStart, pos, runEnd);
          pieces.push({ pos, end: runEnd, inPlace: false, fresh: plan.mode === "allocate", run: { clusterStart: plan.clusterStart, count, hostStart, pos, fills } });
          pos = runEnd;
        }
      }
    } catch (e) {
      await this.giveBack(pieces);
      throw e;
    } finally {
      await clusters.endWrite();
    }
    return pieces;
  }

  /** QEMU's allocation abort: the fresh clusters placed for `pieces`, which no entry took, are given back. */
  private async giveBack(pieces: SharedPiece[]): Promise<void> {
    const cs = this.h.clusterSize;
    for (const p of pieces) if (!p.inPlace && p.fresh) await this.h.md.clusters.unallocate(p.run.hostStart / cs, p.run.count).catch(() => undefined);
  }

  /** The placed runs' entries linked, once their data is written (metadata turn held). */
  private async linkShared(pieces: SharedPiece[]): Promise<void> {
    let table: L2Table | undefined;
    for (const p of pieces) {
      if (p.inPlace) continue;
      const { clusterStart, count, hostStart } = p.run;
      // Looked up again: the table may have left the cache while the data was written.
      const t = await this.h.md.clusters.writableTable(clusterStart);
      if (table && table !== t) await this.h.md.maybeWriteback();
      table = t;
      this.h.md.clusters.linkRun(t, clusterStart, count, hostStart, (m) => this.nonFatalCorruption(m));
    }
    if (table) await this.h.md.maybeWriteback();
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
    return this.h.md.clusters.writableTable(guestOffset);
  }

  /** The allocating write path (exclusive lock held). */
  async writeUnlocked(guestOffset: number, data: Payload): Promise<void> {
    this.h.md.clusters.beginWrite();
    try {
      await this.writeUnlockedRuns(guestOffset, data);
    } finally {
      await this.h.md.clusters.endWrite();
    }
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
   * Standard L2 entries: write the clusters from `pos` that share one way of writing (in place, or a fresh
   * contiguous allocation, or clusters that keep their hosts; `@qcowkit/cluster` plans which) and return where
   * the next step starts. `data` holds the guest bytes of [pos, tableEnd).
   */
  private async writeRunStandard(t: L2Table, pos: number, tableEnd: number, data: Payload): Promise<number> {
    const cs = this.h.clusterSize;
    const clusters = this.h.md.clusters;
    const plan = clusters.planStandard(t, pos, tableEnd);
    if (plan.mode === "in-place") {
      // In place, extended over following clusters with contiguous hosts.
      await this.writeData(plan.hostOffset, data.subarray(0, plan.end - pos), pos);
      clusters.continueAt(Math.ceil((plan.hostOffset + (plan.end - pos)) / cs));
      return plan.end;
    }
    const clusterStart = plan.clusterStart;
    const { hostStart, count, runEnd } = await clusters.placeRun(plan);
    try {
      await this.writeAllocatedRun(t, clusterStart, count, hostStart, pos, data.subarray(0, runEnd - pos));
    } catch (e) {
      // QEMU's allocation abort: fresh clusters whose data write failed before the L2 entries took them are given back.
      const fresh = plan.mode === "allocate" && clusters.entry(t, clusterStart).hostOffset !== hostStart;
      if (fresh) await clusters.unallocate(hostStart / cs, count).catch(() => undefined);
      throw e;
    }
    return runEnd;
  }

  /**
   * Write guest bytes `data` at guest `pos` into `count` clusters starting at guest `clusterStart`, newly
   * placed at `hostStart`, filling the unwritten head and tail from the old content (copy-on-write, as
   * `@qcowkit/cluster` plans it), then point the L2 entries at them and release what they pointed to before.
   */
  private async writeAllocatedRun(
    t: L2Table,
    clusterStart: number,
    count: number,
    hostStart: number,
    pos: number,
    data: Payload,
  ): Promise<void> {
    const fills = this.planFills(t, clusterStart, count, hostStart, pos, pos + data.byteLength);
    await this.writeRunData({ clusterStart, count, hostStart, pos, fills }, data);
    // Link: new entries first, then the old clusters are released (after the new entries are durable).
    this.h.md.clusters.linkRun(t, clusterStart, count, hostStart, (m) => this.nonFatalCorruption(m));
  }

  private planFills(t: L2Table, clusterStart: number, count: number, hostStart: number, pos: number, writeEnd: number): CowFill[] {
    const backingSize = this.h.backing ? this.h.backing.virtualSize : 0;
    return this.h.md.clusters.planCopyOnWrite(t, clusterStart, count, hostStart, pos, writeEnd, backingSize);
  }

  /**
   * The data I/O of an allocated run: guest bytes `data` at guest `run.pos`, with the copy-on-write of the
   * partly written first and last clusters (`run.fills`) from zeros or their old content.
   */
  private async writeRunData(run: PlacedRun, data: Payload): Promise<void> {
    const { clusterStart, count, hostStart, pos, fills } = run;
    const cs = this.h.clusterSize;
    const writeEnd = pos + data.byteLength;
    const fillCluster = async (fill: CowFill) => {
      const guestCluster = fill.guestCluster;
      const buf = new Uint8Array(cs);
      if (fill.source !== "zeros") await this.h.reads.readUnlocked(guestCluster, buf);
      const from = Math.max(pos, guestCluster);
      const to = Math.min(writeEnd, guestCluster + cs);
      const part = data.subarray(from - pos, to - pos);
      buf.set(part instanceof StoreSlice ? await part.bytes() : part, from - guestCluster);
      const host = hostStart + (guestCluster - clusterStart);
      // The whole cluster is written, zeros included, so the file holds no hole that block status would
      // report as zero (QEMU writes the copy-on-write regions explicitly too).
      await this.writeData(host, buf, guestCluster);
    };
    const head = fills.find((f) => f.guestCluster === clusterStart && f.ranges.some(([from]) => from === clusterStart));
    const tail = fills.find((f) => f.ranges.some(([, to]) => to === f.guestCluster + cs));
    // encryption: zeroed host clusters would not read as zeros, so encrypted images always fill
    if (fills.length > 0 && this.h.md.data.efficientZeroes && !this.h.encryption && fills.every((f) => f.source === "zeros")) {
      // Zero the clusters without writing zero bytes, from the start of the copy-on-write head (or of the data)
      // to the end of the tail (or of the data), then write only the data (QEMU's handle_alloc_space). Data
      // clusters kept in place between them are overwritten whole.
      const zeroFrom = head ? hostStart : hostStart + (pos - clusterStart);
      const zeroTo = tail ? hostStart + count * cs : hostStart + (writeEnd - clusterStart);
      await this.h.md.data.writeZeroes(zeroFrom, zeroTo - zeroFrom, false);
      await this.writeData(hostStart + (pos - clusterStart), data, pos);
    } else if (count === 1 && fills.length > 0) {
      await fillCluster(fills[0]!);
    } else {
      const writes: Promise<void>[] = [];
      let midFrom = pos;
      let midTo = writeEnd;
      if (head) {
        writes.push(fillCluster(head));
        midFrom = clusterStart + cs;
      }
      if (tail) {
        writes.push(fillCluster(tail));
        midTo = tail.guestCluster;
      }
      if (midTo > midFrom) {
        writes.push(this.writeData(hostStart + (midFrom - clusterStart), data.subarray(midFrom - pos, midTo - pos), midFrom));
      }
      await Promise.all(writes);
    }
  }

  /**
   * Queue the release of the host clusters an old entry referenced, unless it is `keptHost` (compressed
   * entries: every host cluster their data touches).
   */
  releaseEntry(old: L2Entry, keptHost: number, passDiscard = false): void {
    this.h.md.clusters.release(old, keptHost, passDiscard, (m) => this.nonFatalCorruption(m));
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
    const clusters = this.h.md.clusters;
    const clusterStart = Math.floor(pos / cs) * cs;
    const l2Index = this.h.md.map.l2Index(pos);
    const e = clusters.entry(t, pos);
    if (e.kind !== "compressed" && e.kind !== "unallocated") this.h.md.map.entryType(t, l2Index, 0, clusterStart, true);
    // QEMU's calculate_l2_meta: the subclusters where the write starts and ends are valid.
    if (e.kind !== "compressed") {
      for (const sc of [Math.floor((pos - clusterStart) / scSize), Math.floor((pos - clusterStart + data.byteLength - 1) / scSize)]) {
        this.h.md.map.entryType(t, l2Index, sc, clusterStart, true);
      }
    }
    const { host, reuse } = await clusters.extendedHost(t, pos, tableEnd, e);
    const from = pos - clusterStart;
    const to = from + data.byteLength;
    const plan = clusters.planExtended(e, from, to, reuse);
    const buf = new Uint8Array(cs);
    // Data that must move to a new host cluster: every allocated subcluster (all of a compressed cluster).
    if (plan.movesData) await this.h.reads.readUnlocked(clusterStart, buf);
    for (const sc of plan.fill) {
      await this.h.reads.readUnlocked(clusterStart + sc * scSize, buf.subarray(sc * scSize, (sc + 1) * scSize));
    }
    buf.set(data, from);
    if (plan.movesData) {
      await this.writeData(host, buf, clusterStart);
    } else {
      // Only the written subclusters (plus the filled parts of partial ones) are written.
      const firstSc = Math.floor(from / scSize);
      const lastSc = Math.floor((to - 1) / scSize);
      const filled = new Set(plan.fill);
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
    clusters.linkExtended(t, pos, host, plan.allocBits, plan.zeroBits);
    if (!this.h.hasDataFile && !reuse) this.releaseEntry(e, host);
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
