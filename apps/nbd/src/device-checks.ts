import { Qcow2Error } from "@qcowkit/spec";

/** Throws OUT_OF_BOUNDS unless [offset, offset+byteLength) lies inside a device of `size` bytes. */
export function assertInRange(offset: number, byteLength: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(byteLength) || offset < 0 || byteLength < 0) {
    throw new Qcow2Error("OUT_OF_BOUNDS", `invalid request range ${offset}+${byteLength}`);
  }
  if (byteLength > size - offset) {
    throw new Qcow2Error("OUT_OF_BOUNDS", `request ${offset}+${byteLength} beyond the end of the image (${size} bytes)`);
  }
}

/** Throws READ_ONLY when the device is read-only. */
export function assertWritable(readOnly: boolean): void {
  if (readOnly) throw new Qcow2Error("READ_ONLY", "Operation not permitted on a read-only image");
}
