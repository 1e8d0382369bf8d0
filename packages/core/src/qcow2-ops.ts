/**
 * The public operations on an open qcow2 image (snapshots, persistent dirty bitmaps, check and repair), typed on
 * `Qcow2Image`. The modules that do the work take the engine surface (`EngineImage`, engine-image.ts) and
 * `qcow2-image.ts` itself uses some of them, so they cannot name the class: core has no import cycles, type-only
 * ones included. This file imports both and is imported only by the entry points, so the class's internal
 * members (left out of the published declarations) never appear in a public signature.
 */
import type { Qcow2Image } from "./qcow2-image";
import type { AddBitmapOptions } from "./bitmaps";
import type { BitmapInfo } from "./block-image";
import type { CheckOptions, CheckReport } from "./check";
import type { CheckResult, RepairMode, RepairOptions } from "./repair";
import type { NewSnapshotOptions } from "./snapshot-ops";
import type { SnapshotInfo } from "./snapshots";
import * as bitmaps from "./bitmaps";
import * as check from "./check";
import * as repair from "./repair";
import * as snapshots from "./snapshot-ops";

// ---------------------------------------------------------------- internal snapshots

/** The internal snapshots of an image (none for an image with an external data file, as in QEMU). */
export function listSnapshots(image: Qcow2Image): SnapshotInfo[] {
  return snapshots.listSnapshots(image);
}

/** Index (in `listSnapshots`) of the snapshot whose id is `idOrName`, else of the first so named; -1 if none. */
export function findSnapshot(image: Qcow2Image, idOrName: string): number {
  return snapshots.findSnapshot(image, idOrName);
}

/** Index of the first snapshot matching both the given id and name (either may be omitted); -1 if none. */
export function findSnapshotByIdAndName(image: Qcow2Image, id: string | undefined, name: string | undefined): number {
  return snapshots.findSnapshotByIdAndName(image, id, name);
}

/** Take an internal snapshot named `name` of the image's current state (qemu-img snapshot -c). */
export function createSnapshot(image: Qcow2Image, name: string, opts?: NewSnapshotOptions): Promise<SnapshotInfo> {
  return snapshots.createSnapshot(image, name, opts);
}

/**
 * Revert the image to snapshot `idOrName` (an id first, then a name; qemu-img snapshot -a). The snapshot
 * stays. An image of a different size takes the snapshot's size.
 */
export function applySnapshot(image: Qcow2Image, idOrName: string): Promise<void> {
  return snapshots.applySnapshot(image, idOrName);
}

/** Delete the first snapshot matching `id` and `name`, either of which may be omitted (qemu-img snapshot -d). */
export function deleteSnapshot(image: Qcow2Image, which: { id?: string; name?: string }): Promise<void> {
  return snapshots.deleteSnapshot(image, which);
}

// ---------------------------------------------------------------- persistent dirty bitmaps

/** Add a persistent dirty bitmap (qemu-img bitmap --add). The image must be writable. */
export function addBitmap(image: Qcow2Image, name: string, opts?: AddBitmapOptions): Promise<void> {
  return bitmaps.addBitmap(image, name, opts);
}

/** Remove a bitmap: it leaves the file at once (directory rewritten, clusters freed), as in QEMU. */
export function removeBitmap(image: Qcow2Image, name: string): Promise<void> {
  return bitmaps.removeBitmap(image, name);
}

/** Mark every bit of bitmap `name` clean (qemu-img bitmap --clear). */
export function clearBitmap(image: Qcow2Image, name: string): Promise<void> {
  return bitmaps.clearBitmap(image, name);
}

/** Let bitmap `name` record writes again (qemu-img bitmap --enable). */
export function enableBitmap(image: Qcow2Image, name: string): Promise<void> {
  return bitmaps.enableBitmap(image, name);
}

/** Stop bitmap `name` from recording writes (qemu-img bitmap --disable). */
export function disableBitmap(image: Qcow2Image, name: string): Promise<void> {
  return bitmaps.disableBitmap(image, name);
}

/** Set in bitmap `name` of `image` every range dirty in bitmap `sourceName` of `source` (may be `image`). */
export function mergeBitmap(image: Qcow2Image, name: string, source: Qcow2Image, sourceName: string): Promise<void> {
  return bitmaps.mergeBitmap(image, name, source, sourceName);
}

/** The persistent bitmaps of an image, with QEMU's info flags ("in-use", "auto"). */
export function listBitmaps(image: Qcow2Image): Promise<BitmapInfo[]> {
  return bitmaps.listBitmaps(image);
}

/**
 * Dirty and clean runs of bitmap `name` over guest bytes [guestOffset, +byteLength), contiguous and clipped to
 * the range (what an NBD client reads as qemu:dirty-bitmap:NAME).
 */
export function bitmapStatus(image: Qcow2Image, name: string, guestOffset: number, byteLength: number): Promise<Array<{ offset: number; length: number; dirty: boolean }>> {
  return bitmaps.bitmapStatus(image, name, guestOffset, byteLength);
}

// ---------------------------------------------------------------- check and repair

/** Check an image without changing it (qemu-img check): open it read-only with `checkMode: true`. */
export function checkImage(image: Qcow2Image, opts?: Omit<CheckOptions, "fix">): Promise<CheckReport> {
  return check.checkImage(image, opts);
}

/**
 * One check with fixes: the image must be open read-write with `checkMode: true`. The dirty and corrupt
 * bits are cleared when no corruption and no check error is left.
 */
export function repairImage(image: Qcow2Image, mode: RepairMode, opts?: RepairOptions): Promise<CheckReport> {
  return repair.repairImage(image, mode, opts);
}

/** qemu-img check [-r leaks|all] on an open image (read-write in check mode to repair, else read-only). */
export function checkAndRepairImage(image: Qcow2Image, mode: RepairMode | undefined, opts?: RepairOptions): Promise<CheckResult> {
  return repair.checkAndRepairImage(image, mode, opts);
}
