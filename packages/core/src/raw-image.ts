/** A raw image: guest offset == file offset, every byte present. */
import { Qcow2Error, type ByteStore } from "@qcowkit/spec";
import { allocationRuns } from "./allocation";
import { StoreSlice, type StoreRun } from "./store-slice";
import { PROBE_BYTES, probeFormatName } from "./probe";
import { mergeExtents, type BlockImage, type BlockStatusExtent, type ResizeOptions, type WriteOptions, type ZeroOptions } from "./block-image";

export class RawImage implements BlockImage {
  readonly format = "raw" as const;
  readonly clusterSize = 512;
  readonly filename: string;
  private size: number;
  private closed = false;

  private constructor(
    readonly store: ByteStore,
    size: number,
    private readonly probed: boolean,
  ) {
    this.size = size;
    this.filename = store.name;
  }

  /**
   * A raw image is whole 512-byte sectors: a file of 1000 bytes is a 1024-byte disk whose tail reads zeros.
   * `probed`: the format was guessed, so (as in QEMU) a write that would make the first sector probe as
   * another format fails with EPERM: a guest cannot turn its disk into an image that names host files.
   */
  static async open(store: ByteStore, opts: { probed?: boolean } = {}): Promise<RawImage> {
    return new RawImage(store, Math.ceil((await store.size()) / 512) * 512, opts.probed ?? false);
  }

  /** For a probed image: refuse a write at `guestOffset` that would make the first sector probe as another format. */
  private async checkProbedWrite(guestOffset: number, data: Uint8Array): Promise<void> {
    if (!this.probed || guestOffset >= PROBE_BYTES || data.byteLength === 0) return;
    const head = new Uint8Array(PROBE_BYTES);
    await this.store.read(0, head);
    head.set(data.subarray(0, PROBE_BYTES - guestOffset), guestOffset);
    if (probeFormatName(head, "") !== "raw") throw new Qcow2Error("READ_ONLY", "Operation not permitted", { errno: "EPERM" });
  }

  get virtualSize(): number {
    return this.size;
  }

  get readOnly(): boolean {
    return this.store.readOnly;
  }

  private check(offset: number, length: number, write = false): void {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    if (write && this.store.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    this.check(guestOffset, into.byteLength);
    await this.store.read(guestOffset, into);
  }

  async write(guestOffset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    this.check(guestOffset, data.byteLength, true);
    if (opts.compressed) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    await this.checkProbedWrite(guestOffset, data);
    await this.store.write(guestOffset, data);
    if (opts.fua) await this.store.flush();
  }

  /**
   * Write guest data that lives in byte stores, copied store to store (see StoreSlice); with `scan`, its zero
   * sectors are marked as the copy goes (see StoreSlice.copyTo).
   */
  async writeFromStores(guestOffset: number, data: StoreSlice, scan?: Uint8Array): Promise<boolean> {
    this.check(guestOffset, data.byteLength, true);
    // The first sector of a probed image is checked by `write`, which needs the bytes.
    if (!StoreSlice.canCopyInto(this.store) || (this.probed && guestOffset < PROBE_BYTES)) return false;
    await data.copyTo(this.store, guestOffset, scan);
    return true;
  }

  /** A raw image's guest bytes are its file's bytes (past the end of the file: zeros, as the store reads them). */
  async storeRuns(guestOffset: number, byteLength: number): Promise<StoreRun[] | undefined> {
    this.check(guestOffset, byteLength);
    return byteLength === 0 ? [] : [{ store: this.store, offset: guestOffset, length: byteLength }];
  }

  async writeZeroes(guestOffset: number, byteLength: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(guestOffset, byteLength, true);
    if (opts.noFallback && !opts.unmap && !this.store.efficientZeroes) {
      // NBD FAST_ZERO: only when zeroing is cheaper than writing zero bytes.
      throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    }
    await this.store.writeZeroes(guestOffset, byteLength, opts.unmap ?? false);
    if (opts.fua) await this.store.flush();
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.check(guestOffset, byteLength, true);
    await this.store.discard(guestOffset, byteLength);
  }

  async flush(): Promise<void> {
    if (!this.store.readOnly) await this.store.flush();
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    this.check(guestOffset, byteLength);
    if (byteLength === 0) return [];
    const base = { present: true, depth: 0, hostFile: this.filename };
    const runs = await allocationRuns(this.store, guestOffset, byteLength);
    if (runs) {
      // Holes of the file read as zeros (QEMU asks the file system with SEEK_DATA/SEEK_HOLE).
      return mergeExtents(
        runs.map((r) => ({ ...base, offset: r.offset, length: r.length, zero: !r.data, data: r.data, hostOffset: r.offset })),
      );
    }
    return [{ ...base, offset: guestOffset, length: byteLength, zero: false, data: true, hostOffset: guestOffset }];
  }

  async resize(newVirtualSize: number, opts: ResizeOptions = {}): Promise<void> {
    if (this.store.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (newVirtualSize < this.size && !opts.shrink) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Use the --shrink option to perform a shrink operation.");
    }
    const p = opts.preallocation ?? "off";
    await this.store.resize(newVirtualSize, p === "metadata" ? "off" : p);
    this.size = newVirtualSize;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.store.close();
  }
}
