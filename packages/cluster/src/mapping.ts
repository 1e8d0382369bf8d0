/**
 * Guest offset -> host offset translation (docs/interop/qcow2.txt, "Cluster mapping"):
 *   l2_entries = cluster_size / entry_size, l1_index = (offset / cluster_size) / l2_entries,
 *   l2_index = (offset / cluster_size) % l2_entries.
 * `mapRun` answers with the longest run of uniform (sub)cluster type and contiguous host offsets that
 * starts at a guest offset and stays inside one L2 table. Corruption that QEMU reports while mapping is
 * raised as Qcow2Error "CORRUPT" with QEMU's message.
 */
import {
  Qcow2Error,
  SubclusterType,
  classifySubcluster,
  decodeCompressedDescriptor,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2HostOffset,
  l2IsCopied,
  type CompressedDescriptor,
  type L2Format,
} from "@qcowkit/spec";
import type { ClusterGeometry } from "./entry";
import type { L1Table } from "./l1-table";
import type { L2Cache, L2Table } from "./l2-cache";

export type { ClusterGeometry };

export interface MappedRun {
  guestOffset: number;
  byteLength: number;
  type: SubclusterType;
  /** Host byte offset of `guestOffset` for NORMAL, ZERO_ALLOC and UNALLOCATED_ALLOC runs, else 0. */
  hostOffset: number;
  /** COMPRESSED runs (never longer than one cluster): where the compressed data is. */
  compressed?: CompressedDescriptor;
  /** All clusters of the run have COPIED set. */
  copied: boolean;
}

/** C's "%#x", which QEMU's messages use: no "0x" before 0 (fix by the repair owner: "L1 index: 0x0"). */
const hex = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`);

export class ClusterMap {
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly dataFile: boolean;
  readonly l2Entries: number;
  readonly subclusterBits: number;
  readonly format: L2Format;

  constructor(
    geometry: ClusterGeometry,
    public l1: L1Table,
    readonly cache: L2Cache,
  ) {
    this.clusterBits = geometry.clusterBits;
    this.clusterSize = 2 ** geometry.clusterBits;
    this.extendedL2 = geometry.extendedL2;
    this.dataFile = geometry.dataFile;
    this.l2Entries = this.clusterSize / (geometry.extendedL2 ? 16 : 8);
    this.subclusterBits = geometry.extendedL2 ? geometry.clusterBits - 5 : geometry.clusterBits;
    this.format = { extendedL2: geometry.extendedL2, dataFile: geometry.dataFile };
  }

  /** Guest bytes covered by one L2 table. */
  get l2Coverage(): number {
    return this.clusterSize * this.l2Entries;
  }

  l1Index(guestOffset: number): number {
    return Math.floor(guestOffset / this.l2Coverage);
  }

  l2Index(guestOffset: number): number {
    return Math.floor(guestOffset / this.clusterSize) % this.l2Entries;
  }

  /** Host offset of the L2 table for `l1Index` (0 when unallocated), checked for alignment. */
  l2TableOffset(l1Index: number): number {
    const offset = this.l1.l2Offset(l1Index);
    if (offset % this.clusterSize !== 0) {
      throw new Qcow2Error("CORRUPT", `L2 table offset ${hex(offset)} unaligned (L1 index: ${hex(l1Index)})`);
    }
    return offset;
  }

  /** The L2 table covering `guestOffset`, or undefined when unallocated. */
  async table(guestOffset: number): Promise<L2Table | undefined> {
    const offset = this.l2TableOffset(this.l1Index(guestOffset));
    return offset === 0 ? undefined : this.cache.get(offset);
  }

  /**
   * Classify subcluster/cluster at `l2Index` of `t`, validating as QEMU does when it maps. `allocating`: for
   * QEMU's allocating write path, whose message for an invalid entry has one space where the read path's has two.
   */
  entryType(t: L2Table, l2Index: number, sc: number, guestClusterOffset: number, allocating = false): SubclusterType {
    const at = l2EntryPosition(l2Index, this.extendedL2);
    const hi = t.view.getUint32(at);
    const lo = t.view.getUint32(at + 4);
    const alloc = this.extendedL2 ? l2BitmapAlloc(t.view, l2Index) : 0;
    const zero = this.extendedL2 ? l2BitmapZero(t.view, l2Index) : 0;
    const type = classifySubcluster(hi, lo, alloc, zero, sc, this.format);
    if (type === SubclusterType.INVALID) {
      throw new Qcow2Error(
        "CORRUPT",
        `Invalid cluster entry found ${allocating ? "" : " "}(L2 offset: ${hex(t.hostOffset)}, L2 index: ${hex(l2Index)})`,
      );
    }
    if (type === SubclusterType.COMPRESSED) {
      if (this.dataFile) {
        throw new Qcow2Error(
          "CORRUPT",
          `Compressed cluster entry found in image with external data file (L2 offset: ${hex(t.hostOffset)}, L2 index: ${hex(l2Index)})`,
        );
      }
      return type;
    }
    if (type === SubclusterType.NORMAL || type === SubclusterType.ZERO_ALLOC || type === SubclusterType.UNALLOCATED_ALLOC) {
      const host = l2HostOffset(hi, lo);
      if (host % this.clusterSize !== 0) {
        if (type === SubclusterType.ZERO_ALLOC) return type; // QEMU reads preallocated zero clusters regardless
        throw new Qcow2Error(
          "CORRUPT",
          `Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${hex(t.hostOffset)}, L2 index: ${hex(l2Index)})`,
        );
      }
      if (this.dataFile && host !== guestClusterOffset) {
        throw new Qcow2Error(
          "CORRUPT",
          `External data file host cluster offset ${hex(host)} does not match guest cluster offset: ${hex(guestClusterOffset)}, L2 index: ${hex(l2Index)})`,
        );
      }
    }
    return type;
  }

  /**
   * The longest run starting at `guestOffset`, at most `maxBytes` long, inside one L2 table, of one type
   * and (where there is a host offset) contiguous host offsets.
   */
  async mapRun(guestOffset: number, maxBytes: number): Promise<MappedRun> {
    const coverageEnd = (this.l1Index(guestOffset) + 1) * this.l2Coverage;
    const limit = Math.min(guestOffset + maxBytes, coverageEnd);
    const t = await this.table(guestOffset);
    if (!t) {
      return {
        guestOffset,
        byteLength: limit - guestOffset,
        type: SubclusterType.UNALLOCATED_PLAIN,
        hostOffset: 0,
        copied: false,
      };
    }
    return this.mapRunInTable(t, guestOffset, limit);
  }

  /**
   * `mapRun` without I/O: the answer when the L2 table is cached (or unallocated), undefined when it would
   * have to be read. Lets hot paths stay synchronous.
   */
  mapRunCached(guestOffset: number, maxBytes: number): MappedRun | undefined {
    const coverageEnd = (this.l1Index(guestOffset) + 1) * this.l2Coverage;
    const limit = Math.min(guestOffset + maxBytes, coverageEnd);
    const offset = this.l2TableOffset(this.l1Index(guestOffset));
    if (offset === 0) {
      return { guestOffset, byteLength: limit - guestOffset, type: SubclusterType.UNALLOCATED_PLAIN, hostOffset: 0, copied: false };
    }
    const t = this.cache.peek(offset);
    return t ? this.mapRunInTable(t, guestOffset, limit) : undefined;
  }

  /** `mapRun` within a known table; `limit` must not pass the table's coverage. */
  mapRunInTable(t: L2Table, guestOffset: number, limit: number): MappedRun {
    const cs = this.clusterSize;
    const scSize = 2 ** this.subclusterBits;
    const first = this.describe(t, guestOffset);
    let end = Math.min(limit, this.unitEnd(guestOffset));
    if (first.type === SubclusterType.COMPRESSED) {
      end = Math.min(limit, (Math.floor(guestOffset / cs) + 1) * cs);
      return { ...first, byteLength: end - guestOffset };
    }
    if (!this.extendedL2 && end < limit) end = this.sameRunEnd(t, guestOffset, first.type, end, limit);
    while (end < limit) {
      const next = this.describe(t, end);
      if (next.type !== first.type || next.copied !== first.copied) break;
      if (hasHost(first.type) && next.hostOffset !== first.hostOffset + (end - guestOffset)) break;
      end = Math.min(limit, end + (this.extendedL2 ? scSize : cs));
    }
    return { ...first, byteLength: end - guestOffset };
  }

  /**
   * Standard L2 entries only: from cluster boundary `end`, skip the entries that are exactly what continues
   * the run starting at `guestOffset`: the same flag bits and the next host cluster (or all zero after an
   * all-zero entry). Such an entry has the first one's type and passes the same checks, so comparing the raw
   * words is enough, without decoding each entry (runs of thousands of clusters in large copies). Returns
   * where the first other entry starts; the caller decodes from there.
   */
  private sameRunEnd(t: L2Table, guestOffset: number, type: SubclusterType, end: number, limit: number): number {
    const cs = this.clusterSize;
    const view = t.view;
    const at0 = l2EntryPosition(this.l2Index(guestOffset), false);
    const hi0 = view.getUint32(at0);
    const lo0 = view.getUint32(at0 + 4);
    let at = l2EntryPosition(this.l2Index(end), false);
    if (type === SubclusterType.UNALLOCATED_PLAIN) {
      if (hi0 !== 0 || lo0 !== 0) return end;
      while (end < limit && view.getUint32(at) === 0 && view.getUint32(at + 4) === 0) {
        end = Math.min(limit, end + cs);
        at += 8;
      }
      return end;
    }
    // Only plain allocated entries (no zero flag, not compressed, no reserved bits) continue by address.
    if (type !== SubclusterType.NORMAL || (lo0 & 0x1ff) !== 0 || (hi0 & 0x7f000000) !== 0) return end;
    const flagsHi = hi0 & 0x80000000;
    const base = l2HostOffset(hi0, lo0);
    if (base % cs !== 0) return end;
    let host = base + (end - (Math.floor(guestOffset / cs) * cs));
    while (end < limit) {
      const highWord = Math.floor(host / 4294967296);
      if (highWord > 0x00ffffff) break;
      if (view.getUint32(at) !== ((flagsHi | highWord) >>> 0) || view.getUint32(at + 4) !== host % 4294967296) break;
      end = Math.min(limit, end + cs);
      host += cs;
      at += 8;
    }
    return end;
  }

  /** End of the (sub)cluster containing `guestOffset`. */
  private unitEnd(guestOffset: number): number {
    const unit = 2 ** this.subclusterBits;
    return (Math.floor(guestOffset / unit) + 1) * unit;
  }

  private describe(t: L2Table, guestOffset: number): Omit<MappedRun, "byteLength"> {
    const cs = this.clusterSize;
    const l2Index = this.l2Index(guestOffset);
    const clusterStart = Math.floor(guestOffset / cs) * cs;
    const sc = this.extendedL2 ? Math.floor((guestOffset - clusterStart) / 2 ** this.subclusterBits) : 0;
    const type = this.entryType(t, l2Index, sc, clusterStart);
    const at = l2EntryPosition(l2Index, this.extendedL2);
    const hi = t.view.getUint32(at);
    const lo = t.view.getUint32(at + 4);
    const copied = l2IsCopied(hi);
    if (type === SubclusterType.COMPRESSED) {
      return { guestOffset, type, hostOffset: 0, compressed: decodeCompressedDescriptor(hi, lo, this.clusterBits), copied: false };
    }
    const host = hasHost(type) ? l2HostOffset(hi, lo) + (guestOffset - clusterStart) : 0;
    return { guestOffset, type, hostOffset: host, copied };
  }
}

function hasHost(type: SubclusterType): boolean {
  return type === SubclusterType.NORMAL || type === SubclusterType.ZERO_ALLOC || type === SubclusterType.UNALLOCATED_ALLOC;
}
