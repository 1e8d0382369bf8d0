/**
 * An image's guest disk seen as a byte store: what lets one format sit on top of another (QEMU's
 * `file.driver=qcow2`, a qcow2 image whose file is the guest disk of another qcow2 image). Unlike a file, a
 * guest disk does not grow: a write that ends past its end fails with EIO, as QEMU fails it on a format node.
 */
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";

export class ImageStore implements ByteStore {
  readonly name: string;

  constructor(readonly image: BlockImage) {
    this.name = image.filename;
  }

  get readOnly(): boolean {
    return this.image.readOnly;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    // Bytes past the end of the disk read as zeros (the ByteStore contract).
    const inside = Math.max(0, Math.min(into.byteLength, this.image.virtualSize - offset));
    if (inside > 0) await this.image.read(offset, into.subarray(0, inside));
    into.fill(0, inside);
  }

  private checkInside(offset: number, length: number): void {
    if (offset + length > this.image.virtualSize) throw new Qcow2Error("IO_ERROR", "Input/output error", { errno: "EIO" });
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkInside(offset, data.byteLength);
    await this.image.write(offset, data);
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.checkInside(offset, length);
    await this.image.writeZeroes(offset, length, { unmap });
  }

  async discard(offset: number, length: number): Promise<void> {
    // Nothing past the end to discard; a discard is advisory.
    const inside = Math.max(0, Math.min(length, this.image.virtualSize - offset));
    if (inside > 0) await this.image.discard(offset, inside);
  }

  async flush(): Promise<void> {
    await this.image.flush();
  }

  async size(): Promise<number> {
    return this.image.virtualSize;
  }

  /** An explicit resize (a truncate of the file) resizes the disk, as QEMU truncates a format node. */
  async resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    if (size === this.image.virtualSize) return;
    await this.image.resize(size, { shrink: true, preallocation });
  }

  /** The disk's allocation: unallocated ranges and zero clusters are holes. */
  async allocationStatus(offset: number, length: number): Promise<{ offset: number; length: number; data: boolean }[]> {
    const inside = Math.max(0, Math.min(length, this.image.virtualSize - offset));
    const out = inside > 0 ? (await this.image.blockStatus(offset, inside)).map((e) => ({ offset: e.offset, length: e.length, data: e.present && !e.zero })) : [];
    if (inside < length) out.push({ offset: offset + inside, length: length - inside, data: false });
    return out;
  }

  async close(): Promise<void> {
    await this.image.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
