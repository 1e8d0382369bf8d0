import { Qcow2Error } from "@qcowkit/spec";
import { printableName } from "../printable-name";
import { fromNativeError, nativeFs, nativeUnavailableReason, type NativeFs } from "./native";

/**
 * QEMU-compatible image locking, as QEMU 7.2's file driver (block/file-posix.c) does it, so that
 * qcowkit and QEMU processes see each other's locks:
 *
 * - Each block permission has a bit (BLK_PERM_* in include/block/block-common.h): consistent read
 *   0x01, write 0x02, write unchanged 0x04, resize 0x08. QEMU 7.2 uses these four.
 * - A holder of permission bit i keeps an open-file-description (OFD) read lock on byte 100 + i; a
 *   holder that does NOT share permission i with others keeps one on byte 200 + i. Read locks never
 *   conflict with each other: the bytes are only ever tested, with F_OFD_GETLK for a write lock.
 * - Taking permissions `perm` while sharing `shared`: lock those bytes first, then for each bit in
 *   `perm` test byte 200 + i (someone refuses to share it: `Failed to get "write" lock`), and for
 *   each bit not in `shared` test byte 100 + i (someone holds it: `Failed to get shared "write"
 *   lock`). On failure every byte taken is released again and the message carries the hint
 *   `Is another process using the image [NAME]?`.
 *
 * What QEMU 7.2 takes on the image file (observed in /proc/locks): a qcow2 image opened read-write
 * holds consistent read, write and resize and shares consistent read and write unchanged; opened
 * read-only it holds consistent read and shares the same; with force-share (-U) it holds consistent
 * read and shares everything. `lockImage` takes the same sets.
 *
 * Locks belong to the open file description, so they conflict with other opens of the file in this
 * process too (as in QEMU) and are released when the file is closed. Without the native addon (or
 * on a platform without OFD locks) nothing is locked: `lockImage` returns a handle whose `active`
 * is false, and FileStore.open refuses a "write" lock (`lockingUnavailableError`) rather than open an
 * image read-write unlocked.
 */

/** QEMU's block permission bits. */
export const blockPermission = {
  consistentRead: 0x01,
  write: 0x02,
  writeUnchanged: 0x04,
  resize: 0x08,
} as const;

/** Every permission bit QEMU 7.2 knows (BLK_PERM_ALL). */
export const allBlockPermissions = 0x0f;

/** The names QEMU prints for the permission bits, by bit number. */
const permissionNames = ["consistent read", "write", "write unchanged", "resize"] as const;

/** Byte holding permission bit i: 100 + i. */
export const lockPermissionBase = 100;
/** Byte meaning "permission bit i not shared": 200 + i. */
export const lockSharedBase = 200;

/** A file descriptor, or anything with one and a name (a FileStore). */
export type LockTarget = number | { readonly fd: number | undefined; readonly name: string };

export interface ImageLockOptions {
  /** Take write and resize permission (an image opened read-write); false for a reader. */
  write: boolean;
  /**
   * Let others write and resize while we hold the lock (QEMU's force-share, `-U`). Default false:
   * like QEMU's qcow2 driver, refuse writers and resizers.
   */
  shareWrite?: boolean;
  /** Name for the hint line; default the FileStore's name, or "fd N". */
  name?: string;
}

/** A set of held lock bytes. */
export interface ImageLock {
  /** False when nothing was locked because the native addon (or OFD locking) is missing. */
  readonly active: boolean;
  /** Permission bits held. */
  readonly permissions: number;
  /** Permission bits shared with others. */
  readonly sharedPermissions: number;
  /** Release the lock bytes (idempotent). Call before closing the file descriptor. */
  unlock(): void;
}

/** A LOCKED Qcow2Error carrying QEMU's hint line, printed by frontends on the line after the message. */
export type ImageLockError = Qcow2Error & { readonly hint: string };

/** The permission sets QEMU's qcow2 driver takes on its image file for a reader or a writer. */
export function imagePermissions(options: Pick<ImageLockOptions, "write" | "shareWrite">): {
  permissions: number;
  sharedPermissions: number;
} {
  const permissions = options.write
    ? blockPermission.consistentRead | blockPermission.write | blockPermission.resize
    : blockPermission.consistentRead;
  const sharedPermissions = options.shareWrite
    ? allBlockPermissions
    : blockPermission.consistentRead | blockPermission.writeUnchanged;
  return { permissions, sharedPermissions };
}

/**
 * Lock an image file the way QEMU does for a reader (`write: false`) or writer (`write: true`).
 * Throws an `ImageLockError` (Qcow2Error LOCKED, errno EAGAIN) such as `Failed to get "write" lock`
 * when another process, QEMU or qcowkit, holds a conflicting lock.
 */
export function lockImage(target: LockTarget, options: ImageLockOptions): ImageLock {
  const { permissions, sharedPermissions } = imagePermissions(options);
  return lockPermissions(target, permissions, sharedPermissions, options.name);
}

/** Take arbitrary permission and sharing bits (QEMU's raw_handle_perm_lock prepare + commit). */
export function lockPermissions(
  target: LockTarget,
  permissions: number,
  sharedPermissions: number,
  name?: string,
): ImageLock {
  assertPermissionBits(permissions);
  assertPermissionBits(sharedPermissions);
  const { fd, label } = resolveTarget(target, name);
  const native = nativeFs();
  if (!native || !native.features.ofdLocks) return inactiveLock(permissions, sharedPermissions);
  const taken: number[] = [];
  try {
    for (const bit of bitsIn(permissions)) takeByte(native, fd, lockPermissionBase + bit, taken, label);
    for (const bit of bitsIn(allBlockPermissions & ~sharedPermissions)) {
      takeByte(native, fd, lockSharedBase + bit, taken, label);
    }
    for (const bit of bitsIn(permissions)) {
      testByte(native, fd, lockSharedBase + bit, `Failed to get "${permissionNames[bit]}" lock`, label);
    }
    for (const bit of bitsIn(allBlockPermissions & ~sharedPermissions)) {
      testByte(native, fd, lockPermissionBase + bit, `Failed to get shared "${permissionNames[bit]}" lock`, label);
    }
  } catch (error) {
    releaseBytes(native, fd, taken);
    throw error;
  }
  let held = true;
  return {
    active: true,
    permissions,
    sharedPermissions,
    unlock(): void {
      if (!held) return;
      held = false;
      releaseBytes(native, fd, taken);
    },
  };
}

/**
 * Why QEMU-compatible image locks cannot be taken in this process (`native` false: by a store opened
 * without the addon), or undefined when they can.
 */
export function lockingUnavailableReason(native = true): string | undefined {
  if (!native) return "the store was opened without the native addon";
  const addon = nativeFs();
  if (!addon) return `the native addon is not loaded: ${nativeUnavailableReason ?? "unknown reason"}`;
  if (!addon.features.ofdLocks) return "this platform has no open file description locks";
  return undefined;
}

/**
 * The error for a read-write open that needs a lock it cannot take: never a silent open that QEMU could be
 * writing to at the same time. It names the opt-out in the API and on the command line.
 */
export function lockingUnavailableError(name: string, reason: string): Qcow2Error {
  return new Qcow2Error(
    "NOT_SUPPORTED",
    `Cannot lock '${printableName(name)}' for writing (${reason}); to open it without a lock, turn locking off: locking: "off" in the API, file.locking=off on the command line`,
    { errno: "ENOTSUP" },
  );
}

/** Which permissions other open files hold, and which they refuse to share, as seen from `target`. */
export function probeImageLocks(target: LockTarget): { permissions: number; unsharedPermissions: number } | undefined {
  const { fd, label } = resolveTarget(target, undefined);
  const native = nativeFs();
  if (!native || !native.features.ofdLocks) return undefined;
  let permissions = 0;
  let unsharedPermissions = 0;
  for (const bit of bitsIn(allBlockPermissions)) {
    if (heldElsewhere(native, fd, lockPermissionBase + bit, label)) permissions |= 1 << bit;
    if (heldElsewhere(native, fd, lockSharedBase + bit, label)) unsharedPermissions |= 1 << bit;
  }
  return { permissions, unsharedPermissions };
}

/** QEMU's hint line for a lock conflict on `name`. */
export function lockConflictHint(name: string): string {
  return `Is another process using the image [${printableName(name)}]?`;
}

function resolveTarget(target: LockTarget, name: string | undefined): { fd: number; label: string } {
  const fd = typeof target === "number" ? target : target.fd;
  if (fd === undefined || !Number.isInteger(fd) || fd < 0) {
    throw new Qcow2Error("INTERNAL", `${name ?? (typeof target === "number" ? "image" : target.name)}: no file descriptor to lock`);
  }
  return { fd, label: name ?? (typeof target === "number" ? `fd ${fd}` : target.name) };
}

function assertPermissionBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < 0 || (bits & ~allBlockPermissions) !== 0) {
    throw new Qcow2Error("INTERNAL", `invalid block permission bits ${String(bits)}`);
  }
}

function* bitsIn(mask: number): Generator<number> {
  for (let bit = 0; 1 << bit <= allBlockPermissions; bit++) if (mask & (1 << bit)) yield bit;
}

function takeByte(native: NativeFs, fd: number, byte: number, taken: number[], label: string): void {
  let acquired: boolean;
  try {
    acquired = native.setLock(fd, "read", byte, 1);
  } catch (error) {
    throw withHint(fromNativeError(error, `Failed to lock byte ${byte}`), label);
  }
  if (!acquired) throw lockError(`Failed to lock byte ${byte}`, label);
  taken.push(byte);
}

function testByte(native: NativeFs, fd: number, byte: number, message: string, label: string): void {
  let conflict: boolean;
  try {
    conflict = native.getLock(fd, "write", byte, 1) !== null;
  } catch (error) {
    throw withHint(fromNativeError(error, message), label);
  }
  // QEMU reports EAGAIN without the strerror() suffix.
  if (conflict) throw lockError(message, label);
}

function heldElsewhere(native: NativeFs, fd: number, byte: number, label: string): boolean {
  try {
    return native.getLock(fd, "write", byte, 1) !== null;
  } catch (error) {
    throw fromNativeError(error, `Could not test lock byte ${byte} of '${printableName(label)}'`);
  }
}

function releaseBytes(native: NativeFs, fd: number, bytes: number[]): void {
  for (const byte of bytes) {
    try {
      native.setLock(fd, "unlock", byte, 1);
    } catch {
      // Unlocking cannot conflict; a closed descriptor has released its locks already.
    }
  }
  bytes.length = 0;
}

/** A conflict (EAGAIN): QEMU prints no strerror() text after these messages. */
function lockError(message: string, label: string): ImageLockError {
  return withHint(new Qcow2Error("LOCKED", message, { errno: "EAGAIN" }), label);
}

function withHint(error: Qcow2Error, label: string): ImageLockError {
  return Object.assign(error, { hint: lockConflictHint(label) });
}

/** A lock that holds nothing (no addon, no OFD locks). */
export function inactiveLock(permissions: number, sharedPermissions: number): ImageLock {
  return { active: false, permissions, sharedPermissions, unlock: () => undefined };
}
