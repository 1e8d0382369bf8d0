/**
 * Transmission-phase replies both ways: the 16-byte simple reply and structured reply chunks (NBD spec
 * "Simple reply message", "Structured reply chunk message", "Structured reply types"). The `write*`
 * functions fill a caller-provided buffer so a server can use pooled memory; the `encode*` ones allocate;
 * the `decode*` ones check what the chunk declares and throw `protocolError` for malformed input.
 */
import { encodeText } from "@qcowkit/spec";
import { decodePeerText, readU16, readU32, readU64, writeU16, writeU32, writeU64 } from "./bytes";
import * as C from "./constants";
import { protocolError } from "./errors";

/** The request fields a reply echoes. */
export interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

/** Simple reply: magic, error, cookie (16 bytes). */
export function writeSimpleReply(b: Uint8Array, at: number, errno: number, cookie: Cookie): void {
  writeU32(b, at, C.NBD_SIMPLE_REPLY_MAGIC);
  writeU32(b, at + 4, errno);
  writeU32(b, at + 8, cookie.cookieHi);
  writeU32(b, at + 12, cookie.cookieLo);
}

/** Structured chunk header: magic, flags, type, cookie, payload length (20 bytes). */
export function writeChunkHeader(
  b: Uint8Array,
  at: number,
  cookie: Cookie,
  type: number,
  done: boolean,
  payloadLength: number,
): void {
  writeU32(b, at, C.NBD_STRUCTURED_REPLY_MAGIC);
  writeU16(b, at + 4, done ? C.NBD_REPLY_FLAG_DONE : 0);
  writeU16(b, at + 6, type);
  writeU32(b, at + 8, cookie.cookieHi);
  writeU32(b, at + 12, cookie.cookieLo);
  writeU32(b, at + 16, payloadLength);
}

/** Bytes of an OFFSET_DATA chunk before its data: header and the 8-byte offset. */
export const OFFSET_DATA_PREFIX_LENGTH = C.STRUCTURED_HEADER_LENGTH + 8;
/** Bytes of a whole OFFSET_HOLE chunk. */
export const OFFSET_HOLE_LENGTH = C.STRUCTURED_HEADER_LENGTH + 12;

/** The part of an OFFSET_DATA chunk that precedes `dataLength` bytes of data read at `offset`. */
export function writeOffsetDataPrefix(
  b: Uint8Array,
  at: number,
  cookie: Cookie,
  offset: number,
  dataLength: number,
  done: boolean,
): void {
  writeChunkHeader(b, at, cookie, C.NBD_REPLY_TYPE_OFFSET_DATA, done, 8 + dataLength);
  writeU64(b, at + C.STRUCTURED_HEADER_LENGTH, offset);
}

/** An OFFSET_HOLE chunk: `holeLength` bytes at `offset` read as zeros. */
export function writeOffsetHole(
  b: Uint8Array,
  at: number,
  cookie: Cookie,
  offset: number,
  holeLength: number,
  done: boolean,
): void {
  writeChunkHeader(b, at, cookie, C.NBD_REPLY_TYPE_OFFSET_HOLE, done, 12);
  writeU64(b, at + C.STRUCTURED_HEADER_LENGTH, offset);
  writeU32(b, at + C.STRUCTURED_HEADER_LENGTH + 8, holeLength);
}

export function encodeSimpleReply(errno: number, cookie: Cookie): Uint8Array {
  const b = new Uint8Array(C.SIMPLE_REPLY_LENGTH);
  writeSimpleReply(b, 0, errno, cookie);
  return b;
}

/** The final NBD_REPLY_TYPE_NONE chunk. */
export function encodeNoneChunk(cookie: Cookie): Uint8Array {
  const b = new Uint8Array(C.STRUCTURED_HEADER_LENGTH);
  writeChunkHeader(b, 0, cookie, C.NBD_REPLY_TYPE_NONE, true, 0);
  return b;
}

/** Longest error message sent (bytes); the field is 16 bits, and short messages are kinder to logs. */
const MAX_ERROR_MESSAGE_BYTES = 4096;

/** A final NBD_REPLY_TYPE_ERROR chunk with an optional message. */
export function encodeErrorChunk(cookie: Cookie, errno: number, message: string): Uint8Array {
  let text = encodeText(message);
  if (text.byteLength > MAX_ERROR_MESSAGE_BYTES) text = text.subarray(0, MAX_ERROR_MESSAGE_BYTES);
  const b = new Uint8Array(C.STRUCTURED_HEADER_LENGTH + 6 + text.byteLength);
  writeChunkHeader(b, 0, cookie, C.NBD_REPLY_TYPE_ERROR, true, 6 + text.byteLength);
  writeU32(b, C.STRUCTURED_HEADER_LENGTH, errno);
  writeU16(b, C.STRUCTURED_HEADER_LENGTH + 4, text.byteLength);
  b.set(text, C.STRUCTURED_HEADER_LENGTH + 6);
  return b;
}

/** One block status descriptor. */
export interface StatusRun {
  /** Bytes (non-zero, at most 2^32 - 1). */
  length: number;
  flags: number;
}

/** An NBD_REPLY_TYPE_BLOCK_STATUS chunk for one context. */
export function encodeBlockStatusChunk(
  cookie: Cookie,
  contextId: number,
  runs: readonly StatusRun[],
  done: boolean,
): Uint8Array {
  const payloadLength = 4 + 8 * runs.length;
  const b = new Uint8Array(C.STRUCTURED_HEADER_LENGTH + payloadLength);
  writeChunkHeader(b, 0, cookie, C.NBD_REPLY_TYPE_BLOCK_STATUS, done, payloadLength);
  writeU32(b, C.STRUCTURED_HEADER_LENGTH, contextId);
  let at = C.STRUCTURED_HEADER_LENGTH + 4;
  for (const run of runs) {
    writeU32(b, at, run.length);
    writeU32(b, at + 4, run.flags);
    at += 8;
  }
  return b;
}

// ---- decoding (the client side) ---------------------------------------------------------------------

export interface SimpleReply extends Cookie {
  /** NBD error value; 0 for success. */
  errno: number;
}

/** A simple reply (16 bytes at `at`, magic already checked by the caller that chose this decoder). */
export function decodeSimpleReply(b: Uint8Array, at = 0): SimpleReply {
  return { errno: readU32(b, at + 4), cookieHi: readU32(b, at + 8), cookieLo: readU32(b, at + 12) };
}

export interface ChunkHeader extends Cookie {
  /** NBD_REPLY_FLAG_* bits. */
  flags: number;
  /** NBD_REPLY_TYPE_*. */
  type: number;
  /** Bytes of payload that follow. */
  length: number;
  /** The DONE flag: the last chunk of its request. */
  done: boolean;
}

/** A structured chunk header (20 bytes at `at`; magic checked by the caller). */
export function decodeChunkHeader(b: Uint8Array, at = 0): ChunkHeader {
  const flags = readU16(b, at + 4);
  return {
    flags,
    type: readU16(b, at + 6),
    cookieHi: readU32(b, at + 8),
    cookieLo: readU32(b, at + 12),
    length: readU32(b, at + 16),
    done: (flags & C.NBD_REPLY_FLAG_DONE) !== 0,
  };
}

/** Longest error chunk payload accepted: the 16-bit message length plus the fixed fields. */
export const MAX_ERROR_CHUNK_LENGTH = 6 + 0xffff + 8;

/**
 * Checks the payload length a chunk header declares against what its type allows, before any payload is
 * read (so a hostile length never sizes a buffer); throws for a chunk no server may send. Types this codec
 * does not know are left to the caller.
 */
export function checkChunkLength(h: ChunkHeader): void {
  const { type, length } = h;
  if (type === C.NBD_REPLY_TYPE_NONE) {
    if (length !== 0) throw protocolError(`NONE chunk with a payload of ${length} bytes`);
    if (!h.done) throw protocolError("NONE chunk without the DONE flag");
  } else if (type === C.NBD_REPLY_TYPE_OFFSET_DATA) {
    if (length < 9) throw protocolError(`OFFSET_DATA chunk with a payload of ${length} bytes`);
  } else if (type === C.NBD_REPLY_TYPE_OFFSET_HOLE) {
    if (length !== 12) throw protocolError(`OFFSET_HOLE chunk with a payload of ${length} bytes`);
  } else if (type === C.NBD_REPLY_TYPE_BLOCK_STATUS) {
    if (length < 12 || (length - 4) % 8 !== 0 || (length - 4) / 8 > C.NBD_MAX_STATUS_DESCRIPTORS) {
      throw protocolError(`BLOCK_STATUS chunk with a payload of ${length} bytes`);
    }
  } else if ((type & C.NBD_REPLY_TYPE_ERROR_BIT) !== 0) {
    const fixed = type === C.NBD_REPLY_TYPE_ERROR_OFFSET ? 14 : 6;
    if (length < fixed || length > MAX_ERROR_CHUNK_LENGTH) throw protocolError(`Error chunk with a payload of ${length} bytes`);
  }
}

/** The payload of an OFFSET_HOLE chunk (12 bytes); throws for a hole of 0 bytes. */
export function decodeOffsetHole(payload: Uint8Array): { offset: number; length: number } {
  const length = readU32(payload, 8);
  if (length === 0) throw protocolError("OFFSET_HOLE chunk of 0 bytes");
  return { offset: readU64(payload, 0), length };
}

export interface ErrorChunk {
  /** NBD error value (never 0). */
  errno: number;
  /** The server's message, one line. */
  message: string;
  /** ERROR_OFFSET: where the error happened. */
  offset?: number;
}

/** The payload of an error chunk of `type`; throws for error value 0 or a message longer than the chunk. */
export function decodeErrorChunk(type: number, payload: Uint8Array): ErrorChunk {
  const fixed = type === C.NBD_REPLY_TYPE_ERROR_OFFSET ? 14 : 6;
  const errno = readU32(payload, 0);
  const messageLength = readU16(payload, 4);
  if (errno === 0) throw protocolError("Error chunk with error value 0");
  if (messageLength > payload.byteLength - fixed) throw protocolError("Error chunk message longer than the chunk");
  const message = decodePeerText(payload.subarray(6, 6 + messageLength));
  return type === C.NBD_REPLY_TYPE_ERROR_OFFSET ? { errno, message, offset: readU64(payload, 6 + messageLength) } : { errno, message };
}

/**
 * The payload of a BLOCK_STATUS chunk: its context id and descriptors, as far as they cover `limit` bytes
 * (the last one clipped to it; what lies beyond is not the requester's). Throws for a descriptor of 0 bytes.
 */
export function decodeBlockStatusChunk(payload: Uint8Array, limit = Number.MAX_SAFE_INTEGER): { contextId: number; runs: StatusRun[] } {
  const count = (payload.byteLength - 4) / 8;
  const runs: StatusRun[] = [];
  let total = 0;
  for (let i = 0; i < count && total < limit; i++) {
    const length = readU32(payload, 4 + 8 * i);
    if (length === 0) throw protocolError("BLOCK_STATUS descriptor of 0 bytes");
    const clipped = Math.min(length, limit - total);
    runs.push({ length: clipped, flags: readU32(payload, 8 + 8 * i) });
    total += clipped;
  }
  return { contextId: readU32(payload, 0), runs };
}
