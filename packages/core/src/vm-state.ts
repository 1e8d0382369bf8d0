/**
 * The VM state area of a qcow2 image (QEMU's qcow2_save_vmstate / qcow2_load_vmstate): guest address space
 * past the disk, from the first L1 entry that maps no disk byte (qcow2_vm_state_offset). Writes there
 * allocate clusters like disk writes, and grow the L1 table when they reach past it; an internal snapshot
 * taken afterwards keeps them, as it keeps the whole L1 table. qemu-io's `read -b` and `write -b`.
 */
import { Qcow2Error, l1EntriesForSize } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { Qcow2Image } from "./qcow2-image";

function qcow2(image: BlockImage): Qcow2Image {
  if (!(image instanceof Qcow2Image)) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
  return image;
}

/** Guest offset where the VM state area starts: the start of the first L1 entry past the disk. */
export function vmStateOffset(image: Qcow2Image): number {
  return l1EntriesForSize(image.virtualSize, image.clusterBits, image.extendedL2) * image.metadata.map.l2Coverage;
}

function checkRange(image: Qcow2Image, offset: number, byteLength: number): number {
  const start = vmStateOffset(image) + offset;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(byteLength) || offset < 0 || byteLength < 0 || !Number.isSafeInteger(start + byteLength)) {
    throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
  }
  return start;
}

/** Read `into.byteLength` bytes at `offset` of the VM state area (unwritten bytes read as zeros). */
export async function readVmState(image: BlockImage, offset: number, into: Uint8Array): Promise<void> {
  const img = qcow2(image);
  const start = checkRange(img, offset, into.byteLength);
  if (into.byteLength === 0) return;
  await img.lock.read(() => img.readUnlocked(start, into));
}

/** Write `data` at `offset` of the VM state area. */
export async function writeVmState(image: BlockImage, offset: number, data: Uint8Array): Promise<void> {
  const img = qcow2(image);
  if (img.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  const start = checkRange(img, offset, data.byteLength);
  if (data.byteLength === 0) return;
  await img.lock.write(async () => {
    const needed = img.metadata.map.l1Index(start + data.byteLength - 1) + 1;
    if (needed > img.metadata.l1.size) await img.metadata.growL1(needed);
    await img.writeUnlocked(start, data);
  });
}
