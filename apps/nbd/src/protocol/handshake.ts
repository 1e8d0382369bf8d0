/**
 * Wire codec of the fixed newstyle handshake: the greeting, option headers, option replies, NBD_REP_INFO
 * payloads and the option payloads the server parses (INFO/GO, LIST_META_CONTEXT/SET_META_CONTEXT).
 */
import { decodeNbdString, encodeUtf8, readU16, readU32, writeU16, writeU32, writeU64 } from "./bytes";
import {
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC_HI,
  NBD_MAGIC_LO,
  NBD_MAX_STRING_LENGTH,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
} from "./constants";

/** The server's opening 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(): Uint8Array {
  const b = new Uint8Array(18);
  writeU32(b, 0, NBD_MAGIC_HI);
  writeU32(b, 4, NBD_MAGIC_LO);
  writeU32(b, 8, IHAVEOPT_HI);
  writeU32(b, 12, IHAVEOPT_LO);
  writeU16(b, 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  return b;
}

/** Client flags the server understands; any other bit set means the connection must be dropped. */
export const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

export interface ClientFlags {
  fixedNewstyle: boolean;
  noZeroes: boolean;
}

/** Decodes the client's 32-bit flags; null when an unknown flag is set. */
export function decodeClientFlags(b: Uint8Array, at = 0): ClientFlags | null {
  const flags = readU32(b, at);
  if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) return null;
  return {
    fixedNewstyle: (flags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0,
    noZeroes: (flags & NBD_FLAG_C_NO_ZEROES) !== 0,
  };
}

export interface OptionHeader {
  option: number;
  /** Bytes of option data that follow. */
  length: number;
}

/** Decodes a 16-byte option header; null when the IHAVEOPT magic is wrong. */
export function decodeOptionHeader(b: Uint8Array, at = 0): OptionHeader | null {
  if (readU32(b, at) !== IHAVEOPT_HI || readU32(b, at + 4) !== IHAVEOPT_LO) return null;
  return { option: readU32(b, at + 8), length: readU32(b, at + 12) };
}

/** One option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, replyType: number, data?: Uint8Array): Uint8Array {
  const dataLength = data?.byteLength ?? 0;
  const b = new Uint8Array(20 + dataLength);
  writeU32(b, 0, OPTION_REPLY_MAGIC_HI);
  writeU32(b, 4, OPTION_REPLY_MAGIC_LO);
  writeU32(b, 8, option);
  writeU32(b, 12, replyType >>> 0);
  writeU32(b, 16, dataLength);
  if (data) b.set(data, 20);
  return b;
}

/** An error reply carrying a human-readable message. */
export function encodeOptionError(option: number, replyType: number, message: string): Uint8Array {
  return encodeOptionReply(option, replyType, encodeUtf8(truncateString(message)));
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(exportSize: number, transmissionFlags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(noZeroes ? 10 : 134);
  writeU64(b, 0, exportSize);
  writeU16(b, 8, transmissionFlags);
  return b;
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT. */
export function encodeInfoExport(exportSize: number, transmissionFlags: number): Uint8Array {
  const b = new Uint8Array(12);
  writeU16(b, 0, NBD_INFO_EXPORT);
  writeU64(b, 2, exportSize);
  writeU16(b, 10, transmissionFlags);
  return b;
}

function encodeInfoString(infoType: number, text: string): Uint8Array {
  const s = encodeUtf8(truncateString(text));
  const b = new Uint8Array(2 + s.byteLength);
  writeU16(b, 0, infoType);
  b.set(s, 2);
  return b;
}

/** NBD_REP_INFO data for NBD_INFO_NAME. */
export function encodeInfoName(name: string): Uint8Array {
  return encodeInfoString(NBD_INFO_NAME, name);
}

/** NBD_REP_INFO data for NBD_INFO_DESCRIPTION. */
export function encodeInfoDescription(description: string): Uint8Array {
  return encodeInfoString(NBD_INFO_DESCRIPTION, description);
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE (minimum, preferred, maximum payload; bytes). */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximumPayload: number): Uint8Array {
  const b = new Uint8Array(14);
  writeU16(b, 0, NBD_INFO_BLOCK_SIZE);
  writeU32(b, 2, minimum);
  writeU32(b, 6, preferred);
  writeU32(b, 10, maximumPayload);
  return b;
}

/** NBD_REP_SERVER data: name length, name, then the description as the free-form detail. */
export function encodeServerEntry(name: string, description: string): Uint8Array {
  const n = encodeUtf8(name);
  const d = encodeUtf8(truncateString(description));
  const b = new Uint8Array(4 + n.byteLength + d.byteLength);
  writeU32(b, 0, n.byteLength);
  b.set(n, 4);
  b.set(d, 4 + n.byteLength);
  return b;
}

/** NBD_REP_META_CONTEXT data: context id and name. */
export function encodeMetaContext(contextId: number, name: string): Uint8Array {
  const n = encodeUtf8(name);
  const b = new Uint8Array(4 + n.byteLength);
  writeU32(b, 0, contextId);
  b.set(n, 4);
  return b;
}

/** The 32-bit length and export name that open INFO/GO and meta-context data, followed by at least `after` bytes. */
function decodeLeadingName(data: Uint8Array, after: number): { exportName: string; nameLength: number } | string {
  if (data.byteLength < 4 + after) return "option length too short";
  const nameLength = readU32(data, 0);
  if (nameLength > data.byteLength - 4 - after) return "export name length exceeds option length";
  if (nameLength > NBD_MAX_STRING_LENGTH) return "export name too long";
  const exportName = decodeNbdString(data.subarray(4, 4 + nameLength));
  if (exportName === null) return "export name is not a valid string";
  return { exportName, nameLength };
}

export interface InfoRequest {
  exportName: string;
  /** NBD_INFO_* types the client asked for. */
  infoTypes: number[];
}

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; a string explaining the fault when malformed. */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | string {
  const name = decodeLeadingName(data, 2);
  if (typeof name === "string") return name;
  const { exportName, nameLength } = name;
  const count = readU16(data, 4 + nameLength);
  if (data.byteLength !== 6 + nameLength + 2 * count) return "information request count does not match option length";
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(readU16(data, 6 + nameLength + 2 * i));
  return { exportName, infoTypes };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Parses NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data; a string when malformed. */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest | string {
  const name = decodeLeadingName(data, 4);
  if (typeof name === "string") return name;
  const { exportName, nameLength } = name;
  let at = 4 + nameLength;
  const count = readU32(data, at);
  at += 4;
  // Each query takes at least its 4-byte length: a count beyond that cannot be honest.
  if (count > (data.byteLength - at) / 4) return "query count exceeds option length";
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.byteLength - at < 4) return "query length exceeds option length";
    const queryLength = readU32(data, at);
    at += 4;
    if (queryLength > data.byteLength - at) return "query length exceeds option length";
    if (queryLength > NBD_MAX_STRING_LENGTH) return "query too long";
    const query = decodeNbdString(data.subarray(at, at + queryLength));
    if (query === null) return "query is not a valid string";
    queries.push(query);
    at += queryLength;
  }
  if (at !== data.byteLength) return "trailing bytes after queries";
  return { exportName, queries };
}

/** Cuts a string so its UTF-8 form fits the NBD string limit (messages and descriptions). */
export function truncateString(text: string, limitBytes = NBD_MAX_STRING_LENGTH): string {
  if (text.length * 3 <= limitBytes) return text;
  let out = text;
  while (encodeUtf8(out).byteLength > limitBytes) out = out.slice(0, Math.floor(out.length * 0.9));
  return out;
}
