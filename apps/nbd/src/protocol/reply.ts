/**
 * Transmission-phase replies: the 16-byte simple reply and structured reply chunks (NBD spec "Simple reply
 * message", "Structured reply chunk message", "Structured reply types"). The `write*` functions fill a
 * caller-provided buffer so the server can use pooled memory; the `encode*` ones allocate.
 */
import { encodeUtf8, writeU16, writeU32, writeU64 } from "./bytes";
import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  SIMPLE_REPLY_LENGTH,
  STRUCTURED_HEADER_LENGTH,
} from "./constants";

/** The request fields a reply echoes. */
export interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

/** Simple reply: magic, error, cookie (16 bytes). */
export function writeSimpleReply(b: Uint8Array, at: number, errno: number, cookie: Cookie): void {
  writeU32(b, at, NBD_SIMPLE_REPLY_MAGIC);
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
  writeU32(b, at, NBD_STRUCTURED_REPLY_MAGIC);
  writeU16(b, at + 4, done ? NBD_REPLY_FLAG_DONE : 0);
  writeU16(b, at + 6, type);
  writeU32(b, at + 8, cookie.cookieHi);
  writeU32(b, at + 12, cookie.cookieLo);
  writeU32(b, at + 16, payloadLength);
}

/** Bytes of an OFFSET_DATA chunk before its data: header and the 8-byte offset. */
export const OFFSET_DATA_PREFIX_LENGTH = STRUCTURED_HEADER_LENGTH + 8;
/** Bytes of a whole OFFSET_HOLE chunk. */
export const OFFSET_HOLE_LENGTH = STRUCTURED_HEADER_LENGTH + 12;

/** The part of an OFFSET_DATA chunk that precedes `dataLength` bytes of data read at `offset`. */
export function writeOffsetDataPrefix(
  b: Uint8Array,
  at: number,
  cookie: Cookie,
  offset: number,
  dataLength: number,
  done: boolean,
): void {
  writeChunkHeader(b, at, cookie, NBD_REPLY_TYPE_OFFSET_DATA, done, 8 + dataLength);
  writeU64(b, at + STRUCTURED_HEADER_LENGTH, offset);
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
  writeChunkHeader(b, at, cookie, NBD_REPLY_TYPE_OFFSET_HOLE, done, 12);
  writeU64(b, at + STRUCTURED_HEADER_LENGTH, offset);
  writeU32(b, at + STRUCTURED_HEADER_LENGTH + 8, holeLength);
}

export function encodeSimpleReply(errno: number, cookie: Cookie): Uint8Array {
  const b = new Uint8Array(SIMPLE_REPLY_LENGTH);
  writeSimpleReply(b, 0, errno, cookie);
  return b;
}

/** The final NBD_REPLY_TYPE_NONE chunk. */
export function encodeNoneChunk(cookie: Cookie): Uint8Array {
  const b = new Uint8Array(STRUCTURED_HEADER_LENGTH);
  writeChunkHeader(b, 0, cookie, NBD_REPLY_TYPE_NONE, true, 0);
  return b;
}

/** Longest error message sent (bytes); the field is 16 bits, and short messages are kinder to logs. */
const MAX_ERROR_MESSAGE_BYTES = 4096;

/** A final NBD_REPLY_TYPE_ERROR chunk with an optional message. */
export function encodeErrorChunk(cookie: Cookie, errno: number, message: string): Uint8Array {
  let text = encodeUtf8(message);
  if (text.byteLength > MAX_ERROR_MESSAGE_BYTES) text = text.subarray(0, MAX_ERROR_MESSAGE_BYTES);
  const b = new Uint8Array(STRUCTURED_HEADER_LENGTH + 6 + text.byteLength);
  writeChunkHeader(b, 0, cookie, NBD_REPLY_TYPE_ERROR, true, 6 + text.byteLength);
  writeU32(b, STRUCTURED_HEADER_LENGTH, errno);
  writeU16(b, STRUCTURED_HEADER_LENGTH + 4, text.byteLength);
  b.set(text, STRUCTURED_HEADER_LENGTH + 6);
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
  const b = new Uint8Array(STRUCTURED_HEADER_LENGTH + payloadLength);
  writeChunkHeader(b, 0, cookie, NBD_REPLY_TYPE_BLOCK_STATUS, done, payloadLength);
  writeU32(b, STRUCTURED_HEADER_LENGTH, contextId);
  let at = STRUCTURED_HEADER_LENGTH + 4;
  for (const run of runs) {
    writeU32(b, at, run.length);
    writeU32(b, at + 4, run.flags);
    at += 8;
  }
  return b;
}
