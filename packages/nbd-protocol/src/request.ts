/**
 * Transmission-phase requests: the 28-byte header both ways, and checking a request against the export
 * before anything is done (NBD spec "Request message", "Command flags", "Error values").
 */
import { readU16, readU32, readU64, writeU16, writeU32, writeU64 } from "./bytes";
import * as C from "./constants";
import { protocolError } from "./errors";

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

/** Writes a request header at `at` (28 bytes). */
export function writeRequestHeader(b: Uint8Array, at: number, req: NbdRequest): void {
  writeU32(b, at, C.NBD_REQUEST_MAGIC);
  writeU16(b, at + 4, req.flags);
  writeU16(b, at + 6, req.type);
  writeU32(b, at + 8, req.cookieHi);
  writeU32(b, at + 12, req.cookieLo);
  writeU64(b, at + 16, req.offset);
  writeU32(b, at + 24, req.length);
}

/** Decodes a request header at `at`; throws when the magic is wrong (the stream cannot be trusted after it). */
export function decodeRequestHeader(b: Uint8Array, at = 0): NbdRequest {
  if (readU32(b, at) !== C.NBD_REQUEST_MAGIC) throw protocolError("bad request magic");
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
    case C.NBD_CMD_READ:
      return C.NBD_CMD_FLAG_FUA | (structuredReplies ? C.NBD_CMD_FLAG_DF : 0);
    case C.NBD_CMD_WRITE_ZEROES:
      return C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_FAST_ZERO;
    case C.NBD_CMD_BLOCK_STATUS:
      return C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_REQ_ONE;
    default:
      return C.NBD_CMD_FLAG_FUA;
  }
}

/** True for the commands this server implements. */
export function isKnownCommand(type: number): boolean {
  return type >= C.NBD_CMD_READ && type <= C.NBD_CMD_BLOCK_STATUS;
}

/**
 * Checks a request against the negotiated state; null when it may be executed. Faults are replied to with
 * the returned error; the connection continues. The order matters: unknown command, bad flags, read-only,
 * payload size, range, then command-specific rules.
 */
export function checkRequest(req: NbdRequest, limits: TransmissionLimits): RequestFault | null {
  const { type, flags, offset, length } = req;
  if (!isKnownCommand(type) || type === C.NBD_CMD_DISC) {
    return type === C.NBD_CMD_DISC ? null : { errno: C.NBD_EINVAL, message: `unsupported command ${type}` };
  }
  const unknownFlags = flags & ~allowedFlags(type, limits.structuredReplies);
  if (unknownFlags !== 0) {
    return { errno: C.NBD_EINVAL, message: `unsupported flags 0x${unknownFlags.toString(16)} for this command` };
  }
  const writes = type === C.NBD_CMD_WRITE || type === C.NBD_CMD_WRITE_ZEROES || type === C.NBD_CMD_TRIM;
  if (writes && limits.readOnly) return { errno: C.NBD_EPERM, message: "export is read-only" };
  if ((type === C.NBD_CMD_READ || type === C.NBD_CMD_WRITE) && length > limits.maximumPayload) {
    return { errno: C.NBD_EINVAL, message: `length ${length} exceeds the maximum payload ${limits.maximumPayload}` };
  }
  if (type === C.NBD_CMD_FLUSH) {
    if (offset !== 0 || length !== 0) return { errno: C.NBD_EINVAL, message: "flush offset and length must be zero" };
    return null;
  }
  if (offset < 0 || length > limits.exportSize - offset) {
    const errno = type === C.NBD_CMD_WRITE || type === C.NBD_CMD_WRITE_ZEROES ? C.NBD_ENOSPC : C.NBD_EINVAL;
    return { errno, message: "request extends beyond the end of the export" };
  }
  if (type === C.NBD_CMD_BLOCK_STATUS) {
    if (limits.contextCount === 0) return { errno: C.NBD_EINVAL, message: "no metadata context selected" };
    if (length === 0) return { errno: C.NBD_EINVAL, message: "block status length must not be zero" };
  }
  return null;
}
