import { expect } from "vitest";

/** Big-endian 16- and 32-bit fields, for building wire messages by hand. */
export const u16 = (v: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
export const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};

/** The message of the error `fn` throws; fails the test unless it throws a Qcow2Error (EIO, IO_ERROR). */
export function fault(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toMatchObject({ name: "Qcow2Error", code: "IO_ERROR", errno: "EIO" });
    return (e as Error).message;
  }
  throw new Error("expected the decoder to throw");
}
