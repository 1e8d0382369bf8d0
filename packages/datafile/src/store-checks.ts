import { Qcow2Error } from "@qcowkit/spec";

/**
 * Checks shared by every ByteStore implementation. Offsets and lengths must be safe non-negative
 * integers and their sum must stay safe: a bigint, fraction or value above 2^53 would otherwise
 * reach the backend as the wrong offset (Node 20's positional fs calls silently fall back to the
 * file cursor for such values).
 */

/** Throws Qcow2Error INTERNAL unless `offset` and `offset + byteLength` are safe non-negative integers. */
export function assertByteRange(storeName: string, offset: number, byteLength: number): void {
  if (!isByteCount(offset)) {
    throw new Qcow2Error("INTERNAL", `${storeName}: invalid byte offset ${describe(offset)}`);
  }
  if (!isByteCount(byteLength)) {
    throw new Qcow2Error("INTERNAL", `${storeName}: invalid byte length ${describe(byteLength)}`);
  }
  if (!Number.isSafeInteger(offset + byteLength)) {
    throw new Qcow2Error(
      "INTERNAL",
      `${storeName}: byte range ${offset}+${byteLength} ends beyond 2^53`,
    );
  }
}

/** Throws Qcow2Error INTERNAL unless `byteSize` is a safe non-negative integer. */
export function assertByteSize(storeName: string, byteSize: number): void {
  if (!isByteCount(byteSize)) {
    throw new Qcow2Error("INTERNAL", `${storeName}: invalid size ${describe(byteSize)}`);
  }
}

/** Throws Qcow2Error INVALID_ARGUMENT for an unknown preallocation mode. */
export function assertPreallocation(storeName: string, mode: unknown): void {
  if (mode !== "off" && mode !== "falloc" && mode !== "full") {
    throw new Qcow2Error("INVALID_ARGUMENT", `${storeName}: invalid preallocation mode ${describe(mode)}`);
  }
}

/** The error for a write, resize, discard or write-zeroes on a read-only store (QEMU's wording). */
export function readOnlyError(): Qcow2Error {
  return new Qcow2Error("READ_ONLY", "Block node is read-only");
}

/** The error for any call on a closed store. */
export function closedError(storeName: string): Qcow2Error {
  return new Qcow2Error("INTERNAL", `${storeName}: store is closed`);
}

/** The error for shrinking with preallocation (QEMU's file driver wording, errno ENOTSUP). */
export function shrinkPreallocationError(): Qcow2Error {
  return new Qcow2Error("NOT_SUPPORTED", "Cannot use preallocation for shrinking files");
}

function isByteCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function describe(value: unknown): string {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "string") return JSON.stringify(value);
  return String(value);
}
