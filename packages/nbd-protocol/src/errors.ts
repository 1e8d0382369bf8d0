/**
 * Errors both ways: NBD error values from and to errnos, option refusals in QEMU 7.2's wording (its NBD
 * client's messages, with the server's own text on a second "server reported:" line), and the typed error a
 * decoder throws for malformed input.
 */
import { Qcow2Error, isQcow2Error, type Errno, type Qcow2ErrorCode } from "@qcowkit/spec";
import { oneLine } from "./bytes";
import * as C from "./constants";
import { optionNames } from "./constants";

/**
 * A Qcow2Error with QEMU's follow-up line (printed by frontends after the message, without a prefix);
 * `optionRefused` when the server refused an option (the client then ends with NBD_OPT_ABORT).
 */
export type NbdError = Qcow2Error & { readonly hint?: string; readonly optionRefused?: boolean };

export function nbdError(code: Qcow2ErrorCode, message: string, opts: { errno?: Errno; hint?: string; cause?: unknown } = {}): NbdError {
  const e = new Qcow2Error(code, message, {
    ...(opts.errno !== undefined ? { errno: opts.errno } : {}),
    ...(opts.cause !== undefined ? { cause: opts.cause } : {}),
  });
  return opts.hint !== undefined ? Object.assign(e, { hint: opts.hint }) : e;
}

/** What every decoder throws for bytes that break the protocol: IO_ERROR, errno EIO, the fault in one line. */
export function protocolError(message: string): NbdError {
  return nbdError("IO_ERROR", message, { errno: "EIO" });
}
/** "7 (go)": an option as QEMU names it in messages. */
export function optionLabel(option: number): string {
  const name = optionNames[option];
  return `${option} (${name !== undefined ? name.toLowerCase().replace(/_/g, " ") : "<unknown>"})`;
}

const replyNames: Readonly<Record<number, string>> = {
  [C.NBD_REP_ACK]: "ack",
  [C.NBD_REP_SERVER]: "server",
  [C.NBD_REP_INFO]: "info",
  [C.NBD_REP_META_CONTEXT]: "meta context",
  [C.NBD_REP_ERR_UNSUP]: "unsupported",
  [C.NBD_REP_ERR_POLICY]: "denied by policy",
  [C.NBD_REP_ERR_INVALID]: "invalid",
  [C.NBD_REP_ERR_PLATFORM]: "platform lacks support",
  [C.NBD_REP_ERR_TLS_REQD]: "TLS required",
  [C.NBD_REP_ERR_UNKNOWN]: "export unknown",
  [C.NBD_REP_ERR_SHUTDOWN]: "server shutting down",
  [C.NBD_REP_ERR_BLOCK_SIZE_REQD]: "block size required",
  [C.NBD_REP_ERR_TOO_BIG]: "option too big",
};

/** "3 (info)": an option reply type as QEMU names it. */
export function replyLabel(replyType: number): string {
  return `${replyType >>> 0} (${replyNames[replyType >>> 0] ?? "<unknown>"})`;
}

/**
 * The error for an option the server refused with `replyType` (bit 31 set), `serverText` its message.
 * QEMU 7.2's wording; the server's text follows on the hint line.
 */
export function optionRefusal(option: number, replyType: number, serverText: string): NbdError {
  const label = optionLabel(option);
  let message: string;
  let extra: string | undefined;
  let errno: Errno = "EINVAL";
  switch (replyType >>> 0) {
    case C.NBD_REP_ERR_UNSUP:
      message = `Unsupported option ${label}`;
      errno = "ENOTSUP";
      break;
    case C.NBD_REP_ERR_POLICY:
      message = `Denied by server for option ${label}`;
      errno = "EPERM";
      break;
    case C.NBD_REP_ERR_INVALID:
      message = `Invalid parameters for option ${label}`;
      break;
    case C.NBD_REP_ERR_PLATFORM:
      message = `Server lacks support for option ${label}`;
      errno = "ENOTSUP";
      break;
    case C.NBD_REP_ERR_TLS_REQD:
      message = `TLS negotiation required before option ${label}`;
      extra = "Did you forget a valid tls-creds?";
      errno = "EPERM";
      break;
    case C.NBD_REP_ERR_UNKNOWN:
      message = "Requested export not available";
      errno = "ENOENT";
      break;
    case C.NBD_REP_ERR_SHUTDOWN:
      message = `Server shutting down before option ${label}`;
      errno = "EIO";
      break;
    case C.NBD_REP_ERR_BLOCK_SIZE_REQD:
      message = `Server requires INFO_BLOCK_SIZE for option ${label}`;
      break;
    default:
      message = `Unknown error code when asking for option ${label}`;
  }
  const lines = [...(extra !== undefined ? [extra] : []), ...(serverText !== "" ? [`server reported: ${oneLine(serverText)}`] : [])];
  const e = nbdError(errno === "ENOENT" ? "NOT_FOUND" : "IO_ERROR", message, {
    errno,
    ...(lines.length > 0 ? { hint: lines.join("\n") } : {}),
  });
  return Object.assign(e, { optionRefused: true });
}


/**
 * NBD error values as errnos (the NBD spec's list). Values the spec does not name are EINVAL, as the spec
 * tells clients to treat them; ENOMEM, EOVERFLOW and ESHUTDOWN have no Errno of their own here and read
 * as EIO.
 */
export function errnoOfNbdError(value: number): Errno {
  switch (value) {
    case C.NBD_EPERM:
      return "EPERM";
    case C.NBD_EIO:
    case C.NBD_ENOMEM:
    case C.NBD_EOVERFLOW:
    case C.NBD_ESHUTDOWN:
      return "EIO";
    case C.NBD_ENOSPC:
      return "ENOSPC";
    case C.NBD_ENOTSUP:
      return "ENOTSUP";
    default:
      return "EINVAL";
  }
}

/** The Qcow2Error code that goes with an errno from the server. */
export function codeOfErrno(errno: Errno): Qcow2ErrorCode {
  switch (errno) {
    case "ENOSPC":
      return "NO_SPACE";
    case "ENOTSUP":
      return "NOT_SUPPORTED";
    default:
      return "IO_ERROR";
  }
}

/**
 * POSIX errno names to NBD error values (the table QEMU's server uses: EROFS is EPERM, EFBIG and EDQUOT are
 * ENOSPC, any other errno is EINVAL).
 */
const nbdErrnoByName: Readonly<Record<string, number>> = {
  EPERM: C.NBD_EPERM,
  EROFS: C.NBD_EPERM,
  EACCES: C.NBD_EPERM,
  EIO: C.NBD_EIO,
  ENOMEM: C.NBD_ENOMEM,
  EINVAL: C.NBD_EINVAL,
  ENOSPC: C.NBD_ENOSPC,
  EFBIG: C.NBD_ENOSPC,
  EDQUOT: C.NBD_ENOSPC,
  EOVERFLOW: C.NBD_EOVERFLOW,
  ENOTSUP: C.NBD_ENOTSUP,
  EOPNOTSUPP: C.NBD_ENOTSUP,
  ESHUTDOWN: C.NBD_ESHUTDOWN,
};

/**
 * The NBD error value for an error a device threw: a Qcow2Error by its `errno`, a runtime error by its `code`
 * (Node's system errors); anything unrecognised (a bug, a foreign exception) is EIO.
 */
export function nbdErrnoOf(error: unknown): number {
  let name: unknown;
  if (isQcow2Error(error)) name = error.errno;
  else if (error instanceof Error) name = (error as { code?: unknown }).code;
  if (typeof name !== "string") return C.NBD_EIO;
  return nbdErrnoByName[name] ?? (/^E[A-Z0-9]+$/.test(name) ? C.NBD_EINVAL : C.NBD_EIO);
}

/** One line describing the error, for NBD_REPLY_TYPE_ERROR messages (at most `limit` characters). */
export function errorMessageOf(error: unknown, limit = 1024): string {
  const text = error instanceof Error ? error.message : String(error);
  const line = text.split("\n", 1)[0] ?? "";
  return line.length > limit ? line.slice(0, limit) : line;
}
