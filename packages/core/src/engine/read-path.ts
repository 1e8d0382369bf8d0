/**
 * The read path: guest reads through the cluster map (data store, zeros, compressed clusters, backing image).
 */
import {
  SubclusterType,
  type CompressionType,
} from "@qcowkit/spec";
import { getCodec, type CompressionCodec } from "../compression";
import type { EngineHost } from "./host";

export interface ReadHost extends EngineHost {
  readonly compressionType: CompressionType;
  /** The running request is the only one holding the image's lock (see RwLock.soleReader). */
  readonly soleReader: boolean;
}

export class ReadPath {
  constructor(private readonly h: ReadHost) {}

  /** The common case without extra awaits: one cached run of data (or zeros) covers the whole request. */
  readFast(guestOffset: number, into: Uint8Array): Promise<void> | undefined {
    const run = this.h.md.map.mapRunCached(guestOffset, into.byteLength);
    if (!run || run.byteLength !== into.byteLength) return undefined;
    if (run.type === SubclusterType.NORMAL) return this.readData(run.hostOffset, guestOffset, into);
    if (run.type === SubclusterType.ZERO_PLAIN || run.type === SubclusterType.ZERO_ALLOC) {
      into.fill(0);
      return Promise.resolve();
    }
    // Unallocated with nothing beneath (a fresh image): zeros, as readBacking gives them.
    if ((run.type === SubclusterType.UNALLOCATED_PLAIN || run.type === SubclusterType.UNALLOCATED_ALLOC) && !this.h.backing) {
      into.fill(0);
      return Promise.resolve();
    }
    return undefined;
  }

  /** Read through the current mapping; the caller holds the lock. */
  async readUnlocked(guestOffset: number, into: Uint8Array): Promise<void> {
    const end = guestOffset + into.byteLength;
    const pending: Promise<void>[] = [];
    let pos = guestOffset;
    // Engine edits by the fuzz owner: reads already started are awaited before an error propagates (they
    // were left as unhandled rejections, which end a Node process with a stack trace), and host offsets no
    // store can address (2^53 and more, from damaged L2 entries) read as zeros, as QEMU reads past the end
    // of the file.
    try {
      while (pos < end) {
        const run = await this.h.md.map.mapRun(pos, end - pos);
        const dst = into.subarray(pos - guestOffset, pos - guestOffset + run.byteLength);
        switch (run.type) {
          case SubclusterType.NORMAL:
            if (!Number.isSafeInteger(run.hostOffset + dst.byteLength)) dst.fill(0);
            else pending.push(this.readData(run.hostOffset, pos, dst));
            break;
          case SubclusterType.ZERO_PLAIN:
          case SubclusterType.ZERO_ALLOC:
            dst.fill(0);
            break;
          case SubclusterType.COMPRESSED: {
            const cluster = await this.readCompressedCluster(run.compressed!);
            const inCluster = pos % this.h.clusterSize;
            dst.set(cluster.subarray(inCluster, inCluster + run.byteLength));
            break;
          }
          default:
            pending.push(this.readBacking(pos, dst));
        }
        pos += run.byteLength;
        if (pending.length >= 64) await Promise.all(pending.splice(0));
      }
    } catch (e) {
      await Promise.allSettled(pending);
      throw e;
    }
    await Promise.all(pending);
    // A read alone under the lock holds no table once done: the dropped tables' bytes can be reused.
    this.h.md.l2Cache.trim(this.h.soleReader);
  }

  /** encryption: guest data read from the data store is decrypted (whole sectors are read for it). */
  private readData(hostOffset: number, guestOffset: number, dst: Uint8Array): Promise<void> {
    this.h.md.meta.debugEvent?.("read_aio");
    if (this.h.encryption) return this.h.encryption.read(this.h.md.data, hostOffset, guestOffset, dst);
    return this.h.md.data.read(hostOffset, dst);
  }

  private async readBacking(guestOffset: number, dst: Uint8Array): Promise<void> {
    const b = this.h.backing;
    if (!b || guestOffset >= b.virtualSize) {
      dst.fill(0);
      return;
    }
    const inBacking = Math.min(dst.byteLength, b.virtualSize - guestOffset);
    await b.read(guestOffset, dst.subarray(0, inBacking));
    if (inBacking < dst.byteLength) dst.fill(0, inBacking);
  }

  async compression(): Promise<CompressionCodec> {
    this.codec ??= await getCodec(this.h.compressionType);
    return this.codec;
  }

  private async readCompressedCluster(desc: { hostOffset: number; byteLength: number }): Promise<Uint8Array> {
    if (this.decompressed?.key === desc.hostOffset) return this.decompressed.bytes;
    const compressed = new Uint8Array(desc.byteLength);
    await this.h.md.meta.read(desc.hostOffset, compressed);
    const codec = await this.compression();
    const bytes = await codec.decompress(compressed, this.h.clusterSize);
    this.decompressed = { key: desc.hostOffset, bytes };
    return bytes;
  }

  private codec: CompressionCodec | undefined;

  private decompressed: { key: number; bytes: Uint8Array } | undefined;
}
