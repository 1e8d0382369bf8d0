/**
 * QEMU's null-co driver as a ByteStore: a fixed size; writes and everything else are accepted and dropped;
 * reads return zeros with `readZeroes`, else leave the caller's buffer as it was (as QEMU's, which fills
 * nothing). For tests that need a large image without the space (null-co://, driver=null-co).
 */
import { Qcow2Error, type ByteStore } from "@qcowkit/spec";

/** null-co's default size: 1 GiB. */
export const NULL_CO_DEFAULT_SIZE = 2 ** 30;

export class NullStore implements ByteStore {
  readonly readOnly: boolean;
  readonly efficientZeroes = true;

  constructor(
    private readonly bytes: number = NULL_CO_DEFAULT_SIZE,
    readonly name = "null-co://",
    readOnly = false,
    private readonly readZeroes = false,
  ) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new Qcow2Error("INVALID_ARGUMENT", "null-co: invalid size");
    this.readOnly = readOnly;
  }

  async read(_offset: number, into: Uint8Array): Promise<void> {
    if (this.readZeroes) into.fill(0);
  }

  async write(): Promise<void> {}

  async flush(): Promise<void> {}

  async size(): Promise<number> {
    return this.bytes;
  }

  async resize(): Promise<void> {
    throw new Qcow2Error("NOT_SUPPORTED", "null-co images cannot be resized", { errno: "ENOTSUP" });
  }

  async discard(): Promise<void> {}

  async writeZeroes(): Promise<void> {}

  async close(): Promise<void> {}
}
