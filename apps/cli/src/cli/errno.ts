/** POSIX errno numbers (Linux) and texts, for QEMU messages that print "-95 (Operation not supported)". */
import { errnoText, isQcow2Error, type Errno } from "@qcowkit/spec";

const ERRNO_NUMBER: Record<Errno, number> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EAGAIN: 11,
  EACCES: 13,
  EEXIST: 17,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENOTSUP: 95,
  ENOMEDIUM: 123,
  ECANCELED: 125,
};

/** The errno of an error (EIO for anything that is not a Qcow2Error). */
export function errnoOf(error: unknown): Errno {
  return isQcow2Error(error) ? error.errno : "EIO";
}

export function errnoNumber(errno: Errno): number {
  return ERRNO_NUMBER[errno];
}

/** strerror() of an error's errno. */
export function strerror(error: unknown): string {
  return errnoText[errnoOf(error)];
}
