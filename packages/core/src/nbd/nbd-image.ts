/**
 * An NBD export as a BlockImage. QEMU reports an export as a raw image ("file format: raw", no disk size);
 * block status comes from base:allocation: data where the server reports no hole, zero where it reports
 * zeros, every extent present at depth 0 with the export offset as its host offset, as `qemu-img map`
 * shows it.
 */
import { Qcow2Error } from "@qcowkit/spec";
import { mergeExtents, type BlockImage, type BlockStatusExtent, type ResizeOptions, type WriteOptions, type ZeroOptions } from "../block-image";
import { NbdBlockIo } from "./block-io";
import type { NbdClient } from "./client";
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from "@qcowkit/nbd-protocol";

export interface NbdImageOptions {
  /** Name for messages and map output (QEMU's form of the export's URI). */
  filename: string;
  /** Open read-only; a read-write open of a read-only export fails as QEMU's does. */
  readOnly?: boolean;
  /** Take `present` and `depth` from qemu:allocation-depth when the server selected it (qemu-nbd -A). */
  allocationDepth?: boolean;
}

export class NbdImage implements BlockImage {
  readonly format = "raw" as const;
  readonly clusterSize = 512;
  readonly filename: string;
  readonly readOnly: boolean;
  readonly io: NbdBlockIo;
  private readonly useDepth: boolean;
  private closed = false;

  private constructor(
    readonly client: NbdClient,
    opts: NbdImageOptions,
  ) {
    this.filename = opts.filename;
    this.readOnly = opts.readOnly ?? false;
    this.io = new NbdBlockIo(client);
    this.useDepth = opts.allocationDepth ?? false;
  }

  /**
   * An image on a connected client. A read-write open of a read-only export fails with QEMU's "Could not open
   * image: Permission denied" (the client is closed then).
   */
  static async open(client: NbdClient, opts: NbdImageOptions): Promise<NbdImage> {
    if (!opts.readOnly && client.readOnly) {
      await client.close().catch(() => undefined);
      throw new Qcow2Error("READ_ONLY", "Could not open image: Permission denied", { errno: "EACCES" });
    }
    return new NbdImage(client, opts);
  }

  get virtualSize(): number {
    return this.client.size;
  }

  private check(offset: number, length: number, write = false): void {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    if (write && this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    this.check(guestOffset, into.byteLength);
    await this.io.read(guestOffset, into);
  }

  async write(guestOffset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    this.check(guestOffset, data.byteLength, true);
    if (opts.compressed) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    await this.io.write(guestOffset, data, { fua: opts.fua ?? false });
  }

  async writeZeroes(guestOffset: number, byteLength: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(guestOffset, byteLength, true);
    await this.io.zero(guestOffset, byteLength, { unmap: opts.unmap ?? false, fastZero: opts.noFallback ?? false, fua: opts.fua ?? false });
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.check(guestOffset, byteLength, true);
    await this.io.trim(guestOffset, byteLength);
  }

  async flush(): Promise<void> {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    await this.io.flush();
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    this.check(guestOffset, byteLength);
    const extents = await this.io.status(guestOffset, byteLength);
    return mergeExtents(
      extents.map((e) => {
        const present = this.useDepth && e.depth !== undefined ? e.depth > 0 : true;
        const depth = this.useDepth && e.depth !== undefined && e.depth > 0 ? e.depth - 1 : 0;
        return {
          offset: e.offset,
          length: e.length,
          present,
          zero: (e.flags & NBD_STATE_ZERO) !== 0,
          data: (e.flags & NBD_STATE_HOLE) === 0,
          depth,
          hostOffset: e.offset,
          hostFile: this.filename,
        };
      }),
    );
  }

  async resize(_newVirtualSize: number, _opts?: ResizeOptions): Promise<void> {
    throw new Qcow2Error("NOT_SUPPORTED", "Cannot resize NBD nodes", { errno: "ENOTSUP" });
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client.close();
  }
}
