/**
 * Reading an internal snapshot in place of the active image (QEMU's bdrv_snapshot_load_tmp, used by
 * qemu-img convert -l): on an image opened read-only, the snapshot's L1 table replaces the active one in
 * memory. Nothing is written; the virtual size stays the active one, as in QEMU.
 */
import { L1Table } from "@qcowkit/cluster";
import { MAX_L1_TABLE_BYTES, Qcow2Error } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { Qcow2Image } from "./qcow2-image";
import { findSnapshot, findSnapshotByIdAndName } from "./snapshot-ops";

/** Which snapshot: by id and/or name, or one string tried as an id first, then as a name. */
export type SnapshotSelector = { id?: string; name?: string } | { idOrName: string };

export async function loadSnapshotReadOnly(image: BlockImage, which: SnapshotSelector): Promise<void> {
  if (!(image instanceof Qcow2Image)) {
    throw new Qcow2Error("NOT_SUPPORTED", `Block driver '${image.format}' does not support internal snapshots`, { errno: "ENOTSUP" });
  }
  if (!image.readOnly) throw new Qcow2Error("INVALID_ARGUMENT", "A snapshot can only be loaded on an image opened read-only");
  const index =
    "idOrName" in which ? findSnapshot(image, which.idOrName) : findSnapshotByIdAndName(image, which.id, which.name);
  if (index < 0) throw new Qcow2Error("NOT_FOUND", "Can't find snapshot", { errno: "ENOENT" });
  const sn = image.metadata.snapshots[index]!;
  if (sn.l1Size * 8 > MAX_L1_TABLE_BYTES) throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table too large", { errno: "EFBIG" });
  if (sn.l1TableOffset % image.clusterSize !== 0) {
    throw new Qcow2Error("INVALID_IMAGE", "Snapshot L1 table offset invalid", { errno: "EINVAL" });
  }
  image.metadata.replaceL1(await L1Table.load(image.metadata.meta, sn.l1TableOffset, sn.l1Size));
}
