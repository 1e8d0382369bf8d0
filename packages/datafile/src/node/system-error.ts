import { Qcow2Error, type Errno, type Qcow2ErrorCode } from "@qcowkit/spec";
import { printableName } from "../printable-name";

/**
 * Node system errors (`err.code` such as "ENOENT") turned into one-line Qcow2Errors whose text is
 * the glibc strerror() wording QEMU prints ("No such file or directory"), not libuv's lower-case
 * wording.
 */

interface SystemErrorKind {
  code: Qcow2ErrorCode;
  errno: Errno;
  text: string;
}

const kinds: Record<string, SystemErrorKind> = {
  ENOENT: { code: "NOT_FOUND", errno: "ENOENT", text: "No such file or directory" },
  ENOTDIR: { code: "NOT_FOUND", errno: "ENOENT", text: "Not a directory" },
  ENXIO: { code: "NOT_FOUND", errno: "ENOENT", text: "No such device or address" },
  ENODEV: { code: "NOT_FOUND", errno: "ENOENT", text: "No such device" },
  // The Errno union has no EACCES: EPERM is the nearest errno frontends map.
  EACCES: { code: "IO_ERROR", errno: "EPERM", text: "Permission denied" },
  EPERM: { code: "IO_ERROR", errno: "EPERM", text: "Operation not permitted" },
  EROFS: { code: "READ_ONLY", errno: "EROFS", text: "Read-only file system" },
  ETXTBSY: { code: "IO_ERROR", errno: "EPERM", text: "Text file busy" },
  ENOSPC: { code: "NO_SPACE", errno: "ENOSPC", text: "No space left on device" },
  EDQUOT: { code: "NO_SPACE", errno: "ENOSPC", text: "Disk quota exceeded" },
  EFBIG: { code: "NO_SPACE", errno: "EFBIG", text: "File too large" },
  EISDIR: { code: "INVALID_ARGUMENT", errno: "EINVAL", text: "Is a directory" },
  EINVAL: { code: "INVALID_ARGUMENT", errno: "EINVAL", text: "Invalid argument" },
  ENAMETOOLONG: { code: "INVALID_ARGUMENT", errno: "EINVAL", text: "File name too long" },
  ELOOP: { code: "INVALID_ARGUMENT", errno: "EINVAL", text: "Too many levels of symbolic links" },
  EEXIST: { code: "INVALID_ARGUMENT", errno: "EINVAL", text: "File exists" },
  ENOTSUP: { code: "NOT_SUPPORTED", errno: "ENOTSUP", text: "Operation not supported" },
  EOPNOTSUPP: { code: "NOT_SUPPORTED", errno: "ENOTSUP", text: "Operation not supported" },
  EAGAIN: { code: "IO_ERROR", errno: "EAGAIN", text: "Resource temporarily unavailable" },
  EWOULDBLOCK: { code: "IO_ERROR", errno: "EAGAIN", text: "Resource temporarily unavailable" },
  EBUSY: { code: "IO_ERROR", errno: "EIO", text: "Device or resource busy" },
  EMFILE: { code: "IO_ERROR", errno: "EIO", text: "Too many open files" },
  ENFILE: { code: "IO_ERROR", errno: "EIO", text: "Too many open files in system" },
  EBADF: { code: "IO_ERROR", errno: "EIO", text: "Bad file descriptor" },
  EIO: { code: "IO_ERROR", errno: "EIO", text: "Input/output error" },
};

/** The strerror() text for a Node system error code, or undefined when not known here. */
export function systemErrorText(code: string): string | undefined {
  return kinds[code]?.text;
}

/**
 * A Qcow2Error for a failed system call. `prefix` comes first, then ": " and the strerror text, as
 * in "Could not open 'x.qcow2': No such file or directory". Errors that already are Qcow2Errors
 * pass through unchanged.
 */
export function fromSystemError(error: unknown, prefix: string): Error {
  if (error instanceof Qcow2Error) return error;
  const systemCode = (error as { code?: unknown } | null)?.code;
  const kind = typeof systemCode === "string" ? kinds[systemCode] : undefined;
  if (kind) {
    return new Qcow2Error(kind.code, `${prefix}: ${kind.text}`, { errno: kind.errno, cause: error });
  }
  const detail =
    typeof systemCode === "string"
      ? `system error ${systemCode}`
      : printableName(error instanceof Error ? error.message : String(error));
  return new Qcow2Error("IO_ERROR", `${prefix}: ${detail}`, { cause: error });
}

/** `Could not open 'NAME'`, QEMU's prefix for open failures. */
export function couldNotOpen(name: string): string {
  return `Could not open '${printableName(name)}'`;
}

/** `Could not create 'NAME'`, QEMU's prefix for failures creating an image file. */
export function couldNotCreate(name: string): string {
  return `Could not create '${printableName(name)}'`;
}
