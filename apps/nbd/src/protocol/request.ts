/**
 * Transmission-phase requests: decoding the 28-byte header and checking a request against the export
 * before anything is done (NBD spec "Request message", "Command flags", "Error values").
 */
import { readU16, readU32, readU64 } from "./bytes";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_REQUEST_MAGIC,
} from "./constants";

export interface NbdRequest {
  /** Command flags (NBD_CMD_FLAG_*). */
  flags: number;
  /** Command type (NBD_CMD_*). */
  type: number;
  /** The client's 64-bit cookie, opaque, as two 32-bit halves. */
  cookieHi: number;
  cookieLo: number;
  /** Byte offset; -1 when the wire value is 2^53 or more. */
  offset: number;
  /** Bytes. */
  length: number;
}

/** Decodes a request header at `at`; null when the magic is wrong (the stream cannot be trusted). */
export function decodeRequestHeader(b: Uint8Array, at = 0): NbdRequest | null {
  if (readU32(b, at) !== NBD_REQUEST_MAGIC) return null;
  return {
    flags: readU16(b, at + 4),
    type: readU16(b, at + 6),
    cookieHi: readU32(b, at + 8),
    cookieLo: readU32(b, at + 12),
    offset: readU64(b, at + 16),
    length: readU32(b, at + 24),
  };
}

/** What the connection negotiated, as far as request checking cares. */
export interface TransmissionLimits {
  /** Export size in bytes. */
  exportSize: number;
  readOnly: boolean;
  structuredReplies: boolean;
  /** Number of metadata contexts selected. */
  contextCount: number;
  /** Largest READ/WRITE payload accepted (bytes). */
  maximumPayload: number;
}

export interface RequestFault {
  errno: number;
  message: string;
}

/** Command flags each command accepts (FUA is accepted on every command, as the spec requires). */
function allowedFlags(type: number, structuredReplies: boolean): number {
  switch (type) {
    case NBD_CMD_READ:
      return NBD_CMD_FLAG_FUA | (structuredReplies ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE_ZEROES:
      return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
      return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
      return NBD_CMD_FLAG_FUA;
  }
}

/** True for the commands this server implements. */
export function isKnownCommand(type: number): boolean {
  return type >= NBD_CMD_READ && type <= NBD_CMD_BLOCK_STATUS;
}

/** True when a request of this type carries `length` bytes of payload after its header. */
export function hasPayload(req: NbdRequest): boolean {
  return req.type === NBD_CMD_WRITE;
}

/**
 * Checks a request against the negotiated state; null when it may be executed. Faults are replied to with
 * the returned error; the connection continues. The order matters: unknown command, bad flags, read-only,
 * payload size, range, then command-specific rules.
 */
export function checkRequest(req: NbdRequest, limits: TransmissionLimits): RequestFault | null {
  const { type, flags, offset, length } = req;
  if (!isKnownCommand(type) || type === NBD_CMD_DISC) {
    return type === NBD_CMD_DISC ? null : { errno: NBD_EINVAL, message: `unsupported command ${type}` };
  }
  const unknownFlags = flags & ~allowedFlags(type, limits.structuredReplies);
  if (unknownFlags !== 0) {
    return { errno: NBD_EINVAL, message: `unsupported flags 0x${unknownFlags.toString(16)} for this command` };
  }
  const writes = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES || type === NBD_CMD_TRIM;
  if (writes && limits.readOnly) return { errno: NBD_EPERM, message: "export is read-only" };
  if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > limits.maximumPayload) {
    return { errno: NBD_EINVAL, message: `length ${length} exceeds the maximum payload ${limits.maximumPayload}` };
  }
  if (type === NBD_CMD_FLUSH) {
    if (offset !== 0 || length !== 0) return { errno: NBD_EINVAL, message: "flush offset and length must be zero" };
    return null;
  }
  if (offset < 0 || length > limits.exportSize - offset) {
    const errno = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return { errno, message: "request extends beyond the end of the export" };
  }
  if (type === NBD_CMD_BLOCK_STATUS) {
    if (limits.contextCount === 0) return { errno: NBD_EINVAL, message: "no metadata context selected" };
    if (length === 0) return { errno: NBD_EINVAL, message: "block status length must not be zero" };
  }
  return null;
}
