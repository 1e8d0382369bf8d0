/**
 * Block status: allocation, zero and data flags of guest ranges, as QEMU's qcow2_co_block_status reports them.
 */
import {
  SubclusterType,
} from "@qcowkit/spec";
import { mergeExtents, type BlockStatusExtent } from "../block-image";
import { allocationRuns } from "../allocation";
import { withoutHostOffsets } from "../crypto/image-encryption";
import type { EngineHost } from "./host";

function file(name: string | undefined): { hostFile?: string } {
  return name === undefined ? {} : { hostFile: name };
}

export interface StatusHost extends EngineHost {
  readonly filename: string;
  readonly dataFileName: string | undefined;
}

export class BlockStatusReader {
  constructor(private readonly h: StatusHost) {}

  /**
   * The common case without awaits: one cached mapping run covers the whole range and answers it alone (data,
   * or zeros of this image). Undefined when anything more must be asked: a table not in the cache, several
   * runs, a backing file, compressed or encrypted clusters, or data clusters of a qcow2 file that may be
   * preallocated (decided by the first full call). The extents equal what `blockStatusUnlocked` returns.
   */
  blockStatusCached(guestOffset: number, byteLength: number): BlockStatusExtent[] | undefined {
    if (this.h.encryption) return undefined;
    const run = this.h.md.map.mapRunCached(guestOffset, byteLength);
    if (!run || run.byteLength !== byteLength) return undefined;
    switch (run.type) {
      case SubclusterType.NORMAL: {
        if (!this.h.hasDataFile && this.preallocationDetected !== false) return undefined;
        const hostFile = this.h.hasDataFile ? this.h.dataFileName : this.h.filename;
        return [{ offset: guestOffset, length: byteLength, depth: 0, present: true, zero: false, data: true, hostOffset: run.hostOffset, ...file(hostFile) }];
      }
      case SubclusterType.ZERO_ALLOC: {
        const hostFile = this.h.hasDataFile ? this.h.dataFileName : this.h.filename;
        return [{ offset: guestOffset, length: byteLength, depth: 0, present: true, zero: true, data: false, hostOffset: run.hostOffset, ...file(hostFile) }];
      }
      case SubclusterType.ZERO_PLAIN:
        return [{ offset: guestOffset, length: byteLength, depth: 0, present: true, zero: true, data: false }];
      default:
        return undefined;
    }
  }

  /** Status of this layer only: undefined entries fall through to the backing chain. */
  async blockStatusUnlocked(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    const end = guestOffset + byteLength;
    const out: BlockStatusExtent[] = [];
    let pos = guestOffset;
    const hostFile = this.h.hasDataFile ? this.h.dataFileName : this.h.filename;
    while (pos < end) {
      const run = await this.h.md.map.mapRun(pos, end - pos);
      const base = { offset: pos, length: run.byteLength, depth: 0 };
      switch (run.type) {
        case SubclusterType.NORMAL:
          // encryption: host holes say nothing about encrypted data (QEMU gives no host offset to look at)
          if (!this.h.hasDataFile && !this.h.encryption && (await this.metadataPreallocated())) {
            // Preallocated clusters never written are holes of the qcow2 file: they read as zeros.
            for (const r of (await allocationRuns(this.h.md.meta, run.hostOffset, run.byteLength))!) {
              const guest = pos + (r.offset - run.hostOffset);
              out.push({ offset: guest, length: r.length, depth: 0, present: true, zero: !r.data, data: true, hostOffset: r.offset, ...file(hostFile) });
            }
            break;
          }
          out.push({ ...base, present: true, zero: false, data: true, hostOffset: run.hostOffset, ...file(hostFile) });
          break;
        case SubclusterType.ZERO_ALLOC:
          out.push({ ...base, present: true, zero: true, data: false, hostOffset: run.hostOffset, ...file(hostFile) });
          break;
        case SubclusterType.ZERO_PLAIN:
          out.push({ ...base, present: true, zero: true, data: false });
          break;
        case SubclusterType.COMPRESSED:
          out.push({ ...base, present: true, zero: false, data: true, compressed: true });
          break;
        default: {
          const withOffset =
            run.type === SubclusterType.UNALLOCATED_ALLOC ? { hostOffset: run.hostOffset, ...file(hostFile) } : {};
          const b = this.h.backing;
          if (!b || pos >= b.virtualSize) {
            out.push({ ...base, present: false, zero: true, data: false, ...withOffset });
          } else {
            const inBacking = Math.min(run.byteLength, b.virtualSize - pos);
            for (const e of await b.blockStatus(pos, inBacking)) out.push({ ...e, depth: e.depth + 1 });
            if (inBacking < run.byteLength) {
              out.push({ offset: pos + inBacking, length: run.byteLength - inBacking, depth: 0, present: false, zero: true, data: false });
            }
          }
        }
      }
      pos += run.byteLength;
    }
    // encryption: no host offsets for encrypted images (QEMU's map omits "offset")
    return mergeExtents(this.h.encryption ? withoutHostOffsets(out) : out);
  }

  private preallocationDetected: boolean | undefined;

  /**
   * QEMU's metadata-preallocation heuristic: when clearly more clusters are refcounted than the qcow2 file
   * has allocated on disk, block status asks the file system which data clusters are holes (they read as
   * zeros). Needs a store that reports holes; decided once per open.
   */
  private async metadataPreallocated(): Promise<boolean> {
    if (this.preallocationDetected !== undefined) return this.preallocationDetected;
    let detected = false;
    if (this.h.md.meta.allocationStatus && this.h.md.meta.allocatedSize) {
      const allocated = await this.h.md.meta.allocatedSize();
      if (allocated !== undefined) {
        const realClusters = Math.floor(allocated / this.h.clusterSize);
        const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
        const endCluster = Math.ceil((await this.h.md.meta.size()) / this.h.clusterSize);
        detected = (await this.h.md.refcounts.countReferenced(endCluster, threshold)) >= threshold;
      }
    }
    this.preallocationDetected = detected;
    return detected;
  }
}
