/**
 * A read-only ByteStore over a Blob (a browser File, or any Blob): reads are `blob.slice(...).arrayBuffer()`,
 * so only the requested range is brought into memory and a multi-GiB file costs nothing to open. Blob is a
 * web standard (browsers, Node 18+, Deno, Bun), so this store is runtime-agnostic. A Blob cannot change size
 * or be written: every mutating call fails with QEMU's read-only error.
 */
import type { ByteStore, StorePreallocation } from "@qcowkit/spec";
import { assertByteRange, closedError, readOnlyError } from "./store-checks";

/** The part of the Blob interface the store uses (so callers may pass their own ranged sources). */
export interface BlobLike {
  readonly size: number;
  slice(start?: number, end?: number): { arrayBuffer(): Promise<ArrayBuffer> };
}

export class BlobStore implements ByteStore {
  readonly readOnly = true;
  private closed = false;

  constructor(
    private readonly blob: BlobLike,
    readonly name: string,
  ) {}

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    assertByteRange(this.name, offset, into.byteLength);
    const size = this.blob.size;
    const end = Math.min(offset + into.byteLength, size);
    let have = 0;
    if (offset < end) {
      const bytes = new Uint8Array(await this.blob.slice(offset, end).arrayBuffer());
      into.set(bytes.subarray(0, end - offset));
      have = bytes.byteLength;
    }
    if (have < into.byteLength) into.fill(0, have);
  }

  async size(): Promise<number> {
    this.assertOpen();
    return this.blob.size;
  }

  async allocatedSize(): Promise<number | undefined> {
    return undefined;
  }

  async flush(): Promise<void> {
    this.assertOpen();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async write(_offset: number, _data: Uint8Array): Promise<void> {
    this.refuse();
  }

  async resize(_size: number, _preallocation?: StorePreallocation): Promise<void> {
    this.refuse();
  }

  async discard(_offset: number, _length: number): Promise<void> {
    this.refuse();
  }

  async writeZeroes(_offset: number, _length: number, _unmap?: boolean): Promise<void> {
    this.refuse();
  }

  private refuse(): never {
    this.assertOpen();
    throw readOnlyError();
  }

  private assertOpen(): void {
    if (this.closed) throw closedError(this.name);
  }
}
