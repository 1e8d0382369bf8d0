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
import { existsSync, fstat, type Stats } from "node:fs";
import { readlink, realpath } from "node:fs/promises";
import { lockingUnavailableReason, type FileStore, type FileStoreLockMode } from "@qcowkit/datafile/node";
import { directoryPrefix, type ReferenceKind } from "@qcowkit/datafile";
import { Qcow2Error } from "@qcowkit/spec";

/** A file name for a one-line message: control characters become "?". */
export function shownName(name: string): string {
  return name.replace(/[\u0000-\u001f\u007f]/g, "?");
}

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
  return `warning: '${shownName(name)}' is opened read-only without a lock (${reason}); a writer elsewhere is not stopped`;
}

/** A referenced file that must lie inside the folder of the image naming it (safe mode, qnbd's default). */
export interface ConfinedReference {
  /** The image that names the file. */
  imagePath: string;
  kind: ReferenceKind;
  /** The name stored in the image (for messages). */
  storedName: string;
  /** "safe mode" or "this server" ... : who refuses, for the message. */
  mode: string;
}

/**
 * After a referenced file was opened: the file actually open on `fd` must be a regular file inside the folder
 * of the image that names it. The path is the descriptor's own (/proc/self/fd/N, resolved by the kernel at
 * open time), not a name checked before the open, so a symbolic link swapped in between cannot get through.
 * Where /proc is missing (not Linux) the name's real path is checked instead. Throws NOT_SUPPORTED/EPERM.
 */
export async function assertOpenedInside(fd: number | undefined, openedPath: string, ref: ConfinedReference): Promise<void> {
  const label = ref.kind === "data-file" ? "data file" : "backing file";
  const refuse = (reason: string) =>
    new Qcow2Error(
      "NOT_SUPPORTED",
      `Refusing ${label} '${shownName(ref.storedName)}' in ${ref.mode}: ${reason}`,
      { errno: "EPERM" },
    );
  let real: string;
  if (fd !== undefined && existsSync(`/proc/self/fd/${fd}`)) {
    const stats = await fstatOf(fd);
    if (!stats.isFile()) throw refuse("it is not a regular file");
    real = await readlink(`/proc/self/fd/${fd}`);
  } else {
    real = await realpath(openedPath);
  }
  const folder = await realpath(directoryPrefix(ref.imagePath) || ".");
  const prefix = folder === "/" ? "/" : `${folder}/`;
  if (!real.startsWith(prefix)) throw refuse("the file opened lies outside the image's folder");
}

function fstatOf(fd: number): Promise<Stats> {
  return new Promise((resolve, reject) => fstat(fd, (error, stats) => (error ? reject(error) : resolve(stats))));
}
