import { isQcow2Error } from "@qcowkit/spec";
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from "./constants";

/**
 * POSIX errno names to the NBD error values (the same table QEMU's server uses: EROFS is EPERM, EFBIG and
 * EDQUOT are ENOSPC, anything else known is EINVAL).
 */
const nbdErrnoByName: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EROFS: NBD_EPERM,
  EACCES: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/**
 * The NBD error value for an error thrown by the device: a Qcow2Error by its `errno`, a Node system
 * error by its `code`; anything unrecognised (a bug, a foreign exception) is EIO.
 */
export function nbdErrnoOf(error: unknown): number {
  let name: unknown;
  if (isQcow2Error(error)) name = error.errno;
  else if (error instanceof Error) name = (error as { code?: unknown }).code;
  if (typeof name !== "string") return NBD_EIO;
  return nbdErrnoByName[name] ?? (/^E[A-Z0-9]+$/.test(name) ? NBD_EINVAL : NBD_EIO);
}

/** One line describing the error, for NBD_REPLY_TYPE_ERROR messages (at most `limit` UTF-8 bytes). */
export function errorMessageOf(error: unknown, limit = 1024): string {
  const text = error instanceof Error ? error.message : String(error);
  const line = text.split("\n", 1)[0] ?? "";
  return line.length > limit ? line.slice(0, limit) : line;
}
