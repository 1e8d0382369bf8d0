/**
 * An NBD export as a ByteStore, so a qcow2 image stored on an export opens like one in a file (QEMU probes
 * and opens formats over NBD the same way). The export cannot grow: writes past its end fail with EINVAL (as in QEMU),
 * and a resize may only keep or lower the size (which leaves the export as it is, as QEMU's non-exact
 * truncate of an NBD node does).
 */
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { NbdBlockIo } from "./block-io";
import type { NbdClient } from "./client";

export class NbdStore implements ByteStore {
  readonly io: NbdBlockIo;
  private closed = false;

  constructor(
    readonly client: NbdClient,
    readonly name: string,
    readonly readOnly: boolean,
  ) {
    this.io = new NbdBlockIo(client);
  }

  get efficientZeroes(): boolean {
    return this.client.canWriteZeroes;
  }

  private check(offset: number, length: number, write: boolean): void {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Store is closed");
    if (write && this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
    if (write && offset + length > this.client.size) throw new Qcow2Error("OUT_OF_BOUNDS", "Cannot grow NBD nodes", { errno: "EINVAL" });
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.check(offset, into.byteLength, false);
    // Past the end of the export reads as zeros (the ByteStore contract).
    const inside = Math.max(0, Math.min(into.byteLength, this.client.size - offset));
    if (inside > 0) await this.io.read(offset, into.subarray(0, inside));
    if (inside < into.byteLength) into.fill(0, inside);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.byteLength, true);
    await this.io.write(offset, data);
  }

  async flush(): Promise<void> {
    if (!this.readOnly) await this.io.flush();
  }

  async size(): Promise<number> {
    return this.client.size;
  }

  async resize(size: number, preallocation: StorePreallocation = "off"): Promise<void> {
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (preallocation !== "off") {
      throw new Qcow2Error("NOT_SUPPORTED", `Unsupported preallocation mode '${preallocation}'`, { errno: "ENOTSUP" });
    }
    if (size > this.client.size) throw new Qcow2Error("NOT_SUPPORTED", "Cannot grow NBD nodes", { errno: "ENOTSUP" });
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check(offset, length, true);
    await this.io.trim(offset, length);
  }

  async writeZeroes(offset: number, length: number, unmap = false): Promise<void> {
    this.check(offset, length, true);
    await this.io.zero(offset, length, { unmap });
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
