/**
 * How NBD failures read: QEMU 7.2's wording for refused options and broken handshakes (its NBD client's
 * messages, with the server's own text on a second "server reported:" line), and NBD error values as errnos.
 */
import { Qcow2Error, type Errno, type Qcow2ErrorCode } from "@qcowkit/spec";
import {
  NBD_REP_ACK,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from "./constants";

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

const optionNames: Readonly<Record<number, string>> = {
  1: "export name",
  2: "abort",
  3: "list",
  4: "peek export",
  5: "starttls",
  6: "info",
  7: "go",
  8: "structured reply",
  9: "list meta context",
  10: "set meta context",
  11: "extended headers",
};

/** "7 (go)": an option as QEMU names it in messages. */
export function optionLabel(option: number): string {
  return `${option} (${optionNames[option] ?? "<unknown>"})`;
}

const replyNames: Readonly<Record<number, string>> = {
  [NBD_REP_ACK]: "ack",
  [NBD_REP_SERVER]: "server",
  [NBD_REP_INFO]: "info",
  [NBD_REP_META_CONTEXT]: "meta context",
  [NBD_REP_ERR_UNSUP]: "unsupported",
  [NBD_REP_ERR_POLICY]: "denied by policy",
  [NBD_REP_ERR_INVALID]: "invalid",
  [NBD_REP_ERR_PLATFORM]: "platform lacks support",
  [NBD_REP_ERR_TLS_REQD]: "TLS required",
  [NBD_REP_ERR_UNKNOWN]: "export unknown",
  [NBD_REP_ERR_SHUTDOWN]: "server shutting down",
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: "block size required",
  [NBD_REP_ERR_TOO_BIG]: "option too big",
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
    case NBD_REP_ERR_UNSUP:
      message = `Unsupported option ${label}`;
      errno = "ENOTSUP";
      break;
    case NBD_REP_ERR_POLICY:
      message = `Denied by server for option ${label}`;
      errno = "EPERM";
      break;
    case NBD_REP_ERR_INVALID:
      message = `Invalid parameters for option ${label}`;
      break;
    case NBD_REP_ERR_PLATFORM:
      message = `Server lacks support for option ${label}`;
      errno = "ENOTSUP";
      break;
    case NBD_REP_ERR_TLS_REQD:
      message = `TLS negotiation required before option ${label}`;
      extra = "Did you forget a valid tls-creds?";
      errno = "EPERM";
      break;
    case NBD_REP_ERR_UNKNOWN:
      message = "Requested export not available";
      errno = "ENOENT";
      break;
    case NBD_REP_ERR_SHUTDOWN:
      message = `Server shutting down before option ${label}`;
      errno = "EIO";
      break;
    case NBD_REP_ERR_BLOCK_SIZE_REQD:
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

/** Control characters of server-provided text become spaces (messages stay one line each). */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]/g, " ");
}

/**
 * NBD error values as errnos (the NBD spec's list). Values the spec does not name are EINVAL, as the spec
 * tells clients to treat them; ENOMEM, EOVERFLOW and ESHUTDOWN have no Errno of their own here and read
 * as EIO.
 */
export function errnoOfNbdError(value: number): Errno {
  switch (value) {
    case 1:
      return "EPERM";
    case 5:
    case 12:
    case 75:
    case 108:
      return "EIO";
    case 28:
      return "ENOSPC";
    case 95:
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
