/** Format probing as QEMU does it, for every runtime's open function. */
import type { ByteStore } from "@qcowkit/spec";

export type ImageFormat = "qcow2" | "raw";

const QCOW2_MAGIC = [0x51, 0x46, 0x49, 0xfb];

/** Decide the format of an open store: qcow2 when it starts with the qcow2 magic and version >= 2, raw otherwise. */
export async function probeFormat(store: ByteStore): Promise<ImageFormat> {
  const head = new Uint8Array(8);
  await store.read(0, head);
  // QEMU's qcow2 probe wants the magic and a version of at least 2.
  const version = ((head[4]! << 24) | (head[5]! << 16) | (head[6]! << 8) | head[7]!) >>> 0;
  return QCOW2_MAGIC.every((b, i) => head[i] === b) && version >= 2 ? "qcow2" : "raw";
}
