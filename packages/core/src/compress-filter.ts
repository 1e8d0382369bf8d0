/**
 * QEMU's `compress` filter driver: every write to it is stored compressed by the image below. Requests are
 * aligned to the child's clusters (QEMU's request alignment for this filter): the clusters a write only
 * partly covers are read, completed with the write's bytes and written whole. Everything else passes through.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent, ResizeOptions, WriteOptions, ZeroOptions } from "./block-image";

export class CompressFilter implements BlockImage {
  /** The driver's name, as QEMU's qemu-io `info` prints it. */
  readonly driver = "compress";

  private constructor(readonly child: BlockImage) {}

  /** Put the filter over `child`; only formats that store compressed clusters can be under it. */
  static open(child: BlockImage): CompressFilter {
    if (child.format !== "qcow2") {
      throw new Qcow2Error("NOT_SUPPORTED", `Compression is not supported for underlying format: ${child.format}`, { errno: "ENOTSUP" });
    }
    return new CompressFilter(child);
  }

  get format(): BlockImage["format"] {
    return this.child.format;
  }
  get virtualSize(): number {
    return this.child.virtualSize;
  }
  get readOnly(): boolean {
    return this.child.readOnly;
  }
  get clusterSize(): number {
    return this.child.clusterSize;
  }
  get filename(): string {
    return this.child.filename;
  }

  read(guestOffset: number, into: Uint8Array): Promise<void> {
    return this.child.read(guestOffset, into);
  }

  async write(guestOffset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    if (data.byteLength === 0) return;
    const cs = this.child.clusterSize;
    const start = Math.floor(guestOffset / cs) * cs;
    // The last cluster of a disk whose size is not a cluster multiple is written short.
    const end = Math.min(Math.ceil((guestOffset + data.byteLength) / cs) * cs, Math.max(this.child.virtualSize, guestOffset + data.byteLength));
    let whole = data;
    const headPartial = start < guestOffset;
    const tailPartial = end > guestOffset + data.byteLength;
    if (headPartial || tailPartial) {
      whole = new Uint8Array(end - start);
      // The clusters the write only partly covers: their other bytes as they are now.
      const lastStart = Math.floor((end - 1) / cs) * cs;
      if (headPartial) await this.child.read(start, whole.subarray(0, Math.min(cs, end - start)));
      if (tailPartial && !(headPartial && lastStart === start)) await this.child.read(lastStart, whole.subarray(lastStart - start));
      whole.set(data, guestOffset - start);
    }
    await this.child.write(start, whole, { ...opts, compressed: true });
  }

  writeZeroes(guestOffset: number, byteLength: number, opts?: ZeroOptions): Promise<void> {
    return this.child.writeZeroes(guestOffset, byteLength, opts);
  }
  discard(guestOffset: number, byteLength: number): Promise<void> {
    return this.child.discard(guestOffset, byteLength);
  }
  flush(): Promise<void> {
    return this.child.flush();
  }
  blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    return this.child.blockStatus(guestOffset, byteLength);
  }
  resize(newVirtualSize: number, opts?: ResizeOptions): Promise<void> {
    return this.child.resize(newVirtualSize, opts);
  }
  close(): Promise<void> {
    return this.child.close();
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
