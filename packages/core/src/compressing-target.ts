/**
 * An image whose writes are stored as compressed clusters (qemu-img convert -c), for writers that do not
 * write whole clusters in order, such as `streamToImage`: bytes are gathered per cluster of the target; a
 * cluster goes to the target, compressed, as soon as all its bytes have come. A cluster still waiting when
 * more than `maxPending` are, when the image is resized or read, or at `finish()`, goes out with its missing
 * bytes taken from what the target reads there now (zeros in a new image, or its backing file's data).
 * A cluster that is all zeros is written as zeros; one that the target holds already (written again after it
 * went out incomplete) is written plain. Memory: at most `maxPending` clusters.
 */
import { Qcow2Error, isAllZero } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent, ResizeOptions, WriteOptions, ZeroOptions } from "./block-image";

const SECTOR = 512;

interface PendingCluster {
  bytes: Uint8Array;
  /** Per 512-byte sector: whether it has been written. */
  have: Uint8Array;
  count: number;
  /** Written byte ranges that do not cover whole sectors. */
  parts: Array<[number, number]>;
}

export class CompressingTarget implements BlockImage {
  readonly format: "qcow2" | "raw";
  readonly readOnly = false;
  readonly clusterSize: number;
  readonly filename: string;
  private readonly pending = new Map<number, PendingCluster>();

  constructor(
    readonly target: BlockImage,
    private readonly maxPending = 32,
  ) {
    if (target.format !== "qcow2") throw new Qcow2Error("NOT_SUPPORTED", "Compression not supported for this file format");
    this.format = target.format;
    this.clusterSize = target.clusterSize;
    this.filename = target.filename;
  }

  get virtualSize(): number {
    return this.target.virtualSize;
  }

  async write(guestOffset: number, data: Uint8Array, _opts?: WriteOptions): Promise<void> {
    const cs = this.clusterSize;
    let at = guestOffset;
    const end = guestOffset + data.byteLength;
    while (at < end) {
      const cluster = Math.floor(at / cs);
      const clusterStart = cluster * cs;
      if (at === clusterStart && !this.pending.has(cluster) && end - at >= cs) {
        // Whole clusters nobody is gathering: written compressed in one call (compressed in parallel).
        let n = Math.floor((end - at) / cs) * cs;
        for (let c = cluster + 1; c < cluster + n / cs; c++) {
          if (this.pending.has(c)) {
            n = (c - cluster) * cs;
            break;
          }
        }
        await this.writeWhole(at, data.subarray(at - guestOffset, at - guestOffset + n));
        at += n;
        continue;
      }
      const n = Math.min(end, clusterStart + cs) - at;
      await this.gather(cluster, at - clusterStart, data.subarray(at - guestOffset, at - guestOffset + n));
      at += n;
    }
  }

  async writeZeroes(guestOffset: number, byteLength: number, opts?: ZeroOptions): Promise<void> {
    const cs = this.clusterSize;
    const end = guestOffset + byteLength;
    let at = guestOffset;
    while (at < end) {
      const cluster = Math.floor(at / cs);
      const clusterStart = cluster * cs;
      if (at === clusterStart && end - at >= cs) {
        // Whole clusters: zeroed in the target; clusters being gathered there are dropped.
        const n = Math.floor((end - at) / cs) * cs;
        for (const c of [...this.pending.keys()]) if (c >= cluster && c < cluster + n / cs) this.pending.delete(c);
        await this.target.writeZeroes(at, n, opts);
        at += n;
        continue;
      }
      const n = Math.min(end, clusterStart + cs) - at;
      await this.gather(cluster, at - clusterStart, new Uint8Array(n));
      at += n;
    }
  }

  private async writeWhole(at: number, data: Uint8Array): Promise<void> {
    if (isAllZero(data)) {
      await this.target.writeZeroes(at, data.byteLength);
      return;
    }
    // A compressed write cannot replace a cluster the target already holds (a cluster written again, after
    // it went out with bytes missing): such a range is written plain.
    const held = (await this.target.blockStatus(at, data.byteLength)).some((e) => e.depth === 0 && e.data);
    await this.target.write(at, data, held ? {} : { compressed: true });
  }

  private async gather(cluster: number, offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    let p = this.pending.get(cluster);
    if (!p) {
      if (this.pending.size >= this.maxPending) await this.pushOut(Math.min(...this.pending.keys()));
      p = { bytes: new Uint8Array(cs), have: new Uint8Array(cs / SECTOR), count: 0, parts: [] };
      this.pending.set(cluster, p);
    }
    p.bytes.set(data, offset);
    // Only whole sectors count as written; the bytes of a partly written one are remembered as a range.
    const end = offset + data.byteLength;
    if (offset % SECTOR !== 0 || end % SECTOR !== 0) p.parts.push([offset, end]);
    for (let s = Math.ceil(offset / SECTOR); s < Math.floor((offset + data.byteLength) / SECTOR); s++) {
      if (!p.have[s]) {
        p.have[s] = 1;
        p.count++;
      }
    }
    // Complete: out now. (The last cluster of an image whose size is not whole clusters waits for finish().)
    if (p.count === cs / SECTOR && (cluster + 1) * cs <= this.virtualSize) await this.pushOut(cluster);
  }

  /** Write one gathered cluster, its missing sectors read from the target first. */
  private async pushOut(cluster: number): Promise<void> {
    const p = this.pending.get(cluster);
    if (!p) return;
    this.pending.delete(cluster);
    const cs = this.clusterSize;
    const start = cluster * cs;
    const len = Math.min(cs, this.virtualSize - start);
    if (len <= 0) return;
    let bytes = p.bytes.subarray(0, len);
    if (p.count < Math.ceil(len / SECTOR)) {
      // What the target reads now, with every byte written since on top (`bytes` holds the latest of each).
      const now = new Uint8Array(len);
      await this.target.read(start, now);
      for (let s = 0; s * SECTOR < len; s++) if (p.have[s]) now.set(bytes.subarray(s * SECTOR, Math.min(len, (s + 1) * SECTOR)), s * SECTOR);
      for (const [from, to] of p.parts) if (from < len) now.set(bytes.subarray(from, Math.min(len, to)), from);
      bytes = now;
    }
    await this.writeWhole(start, bytes);
  }

  /** Write every cluster still being gathered. */
  async finish(): Promise<void> {
    for (const c of [...this.pending.keys()].sort((a, b) => a - b)) await this.pushOut(c);
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    await this.finish();
    await this.target.read(guestOffset, into);
  }

  async resize(newVirtualSize: number, opts?: ResizeOptions): Promise<void> {
    await this.finish();
    await this.target.resize(newVirtualSize, opts);
  }

  async flush(): Promise<void> {
    await this.finish();
    await this.target.flush();
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    await this.finish();
    await this.target.discard(guestOffset, byteLength);
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    await this.finish();
    return this.target.blockStatus(guestOffset, byteLength);
  }

  /** Writes what is gathered; the target stays open (it belongs to the caller). */
  async close(): Promise<void> {
    await this.finish();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
