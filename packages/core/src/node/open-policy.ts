/**
 * Node-side open policy (used by node.ts): which QEMU-compatible lock an open takes, and safe mode's check
 * that a referenced file really lies inside the image's folder once symbolic links are followed.
 *
 * Locks, as QEMU 7.2 takes them on the image file (see @qcowkit/datafile's lock.ts for the bytes):
 * - read-write open (also `qemu-img check -r`): "write"; a second writer fails with
 *   `Failed to get "write" lock`, a reader of an image in use with `Failed to get shared "write" lock`;
 * - read-only open (backing files included): "read";
 * - force-share (`-U`, OpenImageOptions.shareRW): "shared", read-only opens only.
 * External data files are not locked (QEMU 7.2 does not lock them either).
 */
import { realpath } from "node:fs/promises";
import { lockingUnavailableReason, type FileStore, type FileStoreLockMode } from "@qcowkit/datafile/node";
import { directoryPrefix, type ReferenceKind } from "@qcowkit/datafile";
import { Qcow2Error } from "@qcowkit/spec";

/** QEMU's file.locking: "on" (default) takes the lock, "off" takes none. */
export type LockingMode = "on" | "off";

/**
 * The lock an image open takes. With locking on, a read-write open that cannot lock (no native addon) fails
 * in FileStore.open; a read-only one goes ahead with an inactive lock (see `lockWarning`).
 */
export function imageLockMode(readOnly: boolean, shareRW: boolean | undefined, locking: LockingMode = "on"): FileStoreLockMode {
  if (locking !== "on" && locking !== "off") {
    throw new Qcow2Error("INVALID_ARGUMENT", `Invalid locking option '${String(locking)}' (on or off)`);
  }
  if (shareRW) {
    if (!readOnly) {
      throw new Qcow2Error("INVALID_ARGUMENT", "force-share=on can only be used with read-only images");
    }
    return "shared";
  }
  if (locking === "off") return "none";
  return readOnly ? "read" : "write";
}

/** The warning for a read-only open whose lock could not be taken, or undefined when it is held (or not wanted). */
export function lockWarning(store: FileStore, name: string): string | undefined {
  const lock = store.imageLock;
  if (!lock || lock.active) return undefined;
  const reason = lockingUnavailableReason() ?? lockingUnavailableReason(store.usesNative) ?? "locks are not available";
  return `warning: '${name.replace(/[\u0000-\u001f\u007f]/g, "?")}' is opened read-only without a lock (${reason}); a writer elsewhere is not stopped`;
}

/**
 * Safe mode, after the lexical check of `checkSafeReference`: with symbolic links followed, `targetPath`
 * must still lie inside the folder of `imagePath`. A target that does not exist is left to the open to
 * report.
 */
export async function assertRealPathInside(
  imagePath: string,
  targetPath: string,
  kind: ReferenceKind,
  storedName: string,
): Promise<void> {
  let target: string;
  try {
    target = await realpath(targetPath);
  } catch {
    return;
  }
  const folder = await realpath(directoryPrefix(imagePath) || ".");
  const prefix = folder === "/" ? "/" : `${folder}/`;
  if (!target.startsWith(prefix)) {
    const label = kind === "data-file" ? "data file" : "backing file";
    throw new Qcow2Error(
      "NOT_SUPPORTED",
      `Refusing ${label} '${storedName.replace(/[\u0000-\u001f\u007f]/g, "?")}' in safe mode: it resolves outside the image's folder through a symbolic link`,
      { errno: "EPERM" },
    );
  }
}
