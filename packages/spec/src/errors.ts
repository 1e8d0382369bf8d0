/**
 * The one error type of qcowkit. `message` is a single line in QEMU's wording where QEMU has one
 * (for example "Unsupported qcow2 version 4"); frontends add their own prefix ("qemu-img: Could not
 * open 'x': "). `code` says what kind of failure it is; `errno` is the POSIX name frontends map to
 * exit codes, NBD errors and qemu-io's "Operation not supported" style messages.
 */
export type Qcow2ErrorCode =
  /** The image failed open-time validation (bad header, tables out of range, ...). */
  | "INVALID_IMAGE"
  /** The image uses a feature this implementation does not support (unknown incompatible bit, ...). */
  | "UNSUPPORTED_FEATURE"
  /** Metadata found corrupt while in use (the image is marked corrupt where possible). */
  | "CORRUPT"
  /** The operation is not supported for this image (compressed write with a data file, ...). */
  | "NOT_SUPPORTED"
  /** A caller passed a bad argument or option. */
  | "INVALID_ARGUMENT"
  /** A request reaches beyond the end of the image. */
  | "OUT_OF_BOUNDS"
  /** A write to an image or store opened read-only. */
  | "READ_ONLY"
  /** The underlying storage failed. */
  | "IO_ERROR"
  /** No space left (or an implementation limit on image growth was hit). */
  | "NO_SPACE"
  /** A named file does not exist. */
  | "NOT_FOUND"
  /** Another user holds a conflicting lock on the image. */
  | "LOCKED"
  /** A bug in qcowkit. */
  | "INTERNAL"
  /** The caller cancelled the operation through its AbortSignal (the signal's reason is the `cause`). */
  | "ABORTED";

export type Errno =
  | "EINVAL"
  | "ENOTSUP"
  | "EIO"
  | "ENOSPC"
  | "EPERM"
  | "EACCES"
  | "EROFS"
  | "ENOENT"
  | "EAGAIN"
  | "EFBIG"
  | "EEXIST"
  | "ERANGE"
  | "ENOMEDIUM"
  | "ECANCELED";

const defaultErrno: Record<Qcow2ErrorCode, Errno> = {
  INVALID_IMAGE: "EINVAL",
  UNSUPPORTED_FEATURE: "ENOTSUP",
  CORRUPT: "EIO",
  NOT_SUPPORTED: "ENOTSUP",
  INVALID_ARGUMENT: "EINVAL",
  OUT_OF_BOUNDS: "EINVAL",
  READ_ONLY: "EPERM",
  IO_ERROR: "EIO",
  NO_SPACE: "ENOSPC",
  NOT_FOUND: "ENOENT",
  LOCKED: "EAGAIN",
  INTERNAL: "EIO",
  ABORTED: "ECANCELED",
};

/** POSIX strerror() texts, as QEMU prints them after a colon. */
export const errnoText: Record<Errno, string> = {
  EINVAL: "Invalid argument",
  ENOTSUP: "Operation not supported",
  EIO: "Input/output error",
  ENOSPC: "No space left on device",
  EPERM: "Operation not permitted",
  EACCES: "Permission denied",
  EROFS: "Read-only file system",
  ENOENT: "No such file or directory",
  EAGAIN: "Resource temporarily unavailable",
  EFBIG: "File too large",
  EEXIST: "File exists",
  ERANGE: "Numerical result out of range",
  ENOMEDIUM: "No medium found",
  ECANCELED: "Operation canceled",
};

export interface Qcow2ErrorOptions {
  errno?: Errno;
  cause?: unknown;
}

export class Qcow2Error extends Error {
  override readonly name = "Qcow2Error";
  readonly code: Qcow2ErrorCode;
  readonly errno: Errno;

  constructor(code: Qcow2ErrorCode, message: string, options: Qcow2ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.errno = options.errno ?? defaultErrno[code];
  }
}

/** True for a Qcow2Error, also one thrown by another loaded copy of this package. */
export function isQcow2Error(e: unknown): e is Qcow2Error {
  return e instanceof Qcow2Error || (e instanceof Error && e.name === "Qcow2Error" && "code" in e);
}
