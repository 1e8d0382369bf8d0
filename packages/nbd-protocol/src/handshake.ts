/**
 * Wire codec of the handshake, both sides (NBD spec "Handshake", "Option types", "Option reply types"):
 * greeting, client flags, options and option replies, NBD_REP_INFO payloads, INFO/GO and meta-context
 * requests, NBD_REP_META_CONTEXT and NBD_REP_SERVER payloads, the NBD_OPT_EXPORT_NAME and oldstyle replies.
 * Decoders check every length against what the message declares and throw `protocolError` for malformed
 * input; the texts are the ones both peers log or send back (QEMU's wording where the client follows QEMU).
 */
import { encodeText } from "@qcowkit/spec";
import { decodeNbdString, decodePeerText, hexU64, readU16, readU32, readU64, truncateString, writeU16, writeU32, writeU64 } from "./bytes";
import * as C from "./constants";
import { protocolError } from "./errors";

// ---- greeting and flags ---------------------------------------------------------------------------

/** The newstyle server's opening 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle, no zeroes). */
export function encodeGreeting(handshakeFlags = C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES): Uint8Array {
  const b = new Uint8Array(18);
  writeU32(b, 0, C.NBD_MAGIC_HI);
  writeU32(b, 4, C.NBD_MAGIC_LO);
  writeU32(b, 8, C.IHAVEOPT_HI);
  writeU32(b, 12, C.IHAVEOPT_LO);
  writeU16(b, 16, handshakeFlags);
  return b;
}

/**
 * The first 16 bytes from a server: "newstyle" (16-bit handshake flags follow) or "oldstyle" (the export
 * follows). Throws on any other magic, with QEMU's messages.
 */
export function decodeGreeting(b: Uint8Array): "newstyle" | "oldstyle" {
  if (readU32(b, 0) !== C.NBD_MAGIC_HI || readU32(b, 4) !== C.NBD_MAGIC_LO) {
    throw protocolError(`Bad initial magic received: 0x${hexU64(b, 0)}`);
  }
  if (readU32(b, 8) === C.IHAVEOPT_HI && readU32(b, 12) === C.IHAVEOPT_LO) return "newstyle";
  if (readU32(b, 8) === C.OLDSTYLE_MAGIC_HI && readU32(b, 12) === C.OLDSTYLE_MAGIC_LO) return "oldstyle";
  throw protocolError(`Bad server magic received: 0x${hexU64(b, 8)}`);
}

/** Client flags a server understands; any other bit set means the connection must be dropped. */
export const KNOWN_CLIENT_FLAGS = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES;

export interface ClientFlags {
  fixedNewstyle: boolean;
  noZeroes: boolean;
}

/** The client's 32-bit flags. */
export function encodeClientFlags(flags: ClientFlags): Uint8Array {
  const b = new Uint8Array(4);
  writeU32(b, 0, (flags.fixedNewstyle ? C.NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (flags.noZeroes ? C.NBD_FLAG_C_NO_ZEROES : 0));
  return b;
}

/** Decodes the client's 32-bit flags; throws when an unknown flag is set. */
export function decodeClientFlags(b: Uint8Array, at = 0): ClientFlags {
  const flags = readU32(b, at);
  if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) throw protocolError(`unknown client flags 0x${flags.toString(16)}`);
  return {
    fixedNewstyle: (flags & C.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0,
    noZeroes: (flags & C.NBD_FLAG_C_NO_ZEROES) !== 0,
  };
}

// ---- options ----------------------------------------------------------------------------------------

export interface OptionHeader {
  option: number;
  /** Bytes of option data that follow. */
  length: number;
}

/** One client option: IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(C.OPTION_HEADER_LENGTH + data.byteLength);
  writeU32(b, 0, C.IHAVEOPT_HI);
  writeU32(b, 4, C.IHAVEOPT_LO);
  writeU32(b, 8, option);
  writeU32(b, 12, data.byteLength);
  b.set(data, C.OPTION_HEADER_LENGTH);
  return b;
}

/** Decodes a 16-byte option header; throws when the IHAVEOPT magic is wrong. */
export function decodeOptionHeader(b: Uint8Array, at = 0): OptionHeader {
  if (readU32(b, at) !== C.IHAVEOPT_HI || readU32(b, at + 4) !== C.IHAVEOPT_LO) throw protocolError("bad option magic");
  return { option: readU32(b, at + 8), length: readU32(b, at + 12) };
}

export interface OptionReplyHeader {
  option: number;
  replyType: number;
  /** Bytes of reply data that follow. */
  length: number;
}

/** One option reply: magic, option, reply type, length, data. */
export function encodeOptionReply(option: number, replyType: number, data?: Uint8Array): Uint8Array {
  const dataLength = data?.byteLength ?? 0;
  const b = new Uint8Array(C.OPTION_REPLY_HEADER_LENGTH + dataLength);
  writeU32(b, 0, C.OPTION_REPLY_MAGIC_HI);
  writeU32(b, 4, C.OPTION_REPLY_MAGIC_LO);
  writeU32(b, 8, option);
  writeU32(b, 12, replyType >>> 0);
  writeU32(b, 16, dataLength);
  if (data) b.set(data, C.OPTION_REPLY_HEADER_LENGTH);
  return b;
}

/** Decodes the 20-byte header of an option reply; throws when the magic is wrong. */
export function decodeOptionReplyHeader(b: Uint8Array, at = 0): OptionReplyHeader {
  if (readU32(b, at) !== C.OPTION_REPLY_MAGIC_HI || readU32(b, at + 4) !== C.OPTION_REPLY_MAGIC_LO) {
    throw protocolError("Unexpected option reply magic");
  }
  return { option: readU32(b, at + 8), replyType: readU32(b, at + 12), length: readU32(b, at + 16) };
}

/** An error reply carrying a human-readable message. */
export function encodeOptionError(option: number, replyType: number, message: string): Uint8Array {
  return encodeOptionReply(option, replyType, encodeText(truncateString(message, C.NBD_MAX_STRING_LENGTH)));
}

// ---- the export -------------------------------------------------------------------------------------

export interface ExportInfo {
  /** Bytes; -1 when the wire value is 2^53 or more. */
  size: number;
  /** NBD_FLAG_* transmission flags. */
  transmissionFlags: number;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(exportSize: number, transmissionFlags: number, noZeroes: boolean): Uint8Array {
  const b = new Uint8Array(noZeroes ? 10 : 134);
  writeU64(b, 0, exportSize);
  writeU16(b, 8, transmissionFlags);
  return b;
}

/** The first 10 bytes of the NBD_OPT_EXPORT_NAME reply. */
export function decodeExportNameReply(b: Uint8Array): ExportInfo {
  return { size: readU64(b, 0), transmissionFlags: readU16(b, 8) };
}

/** What an oldstyle server sends after its magic: size and 32 bits of flags (transmission flags in the low half). */
export function decodeOldstyleExport(b: Uint8Array): ExportInfo {
  return { size: readU64(b, 0), transmissionFlags: readU32(b, 8) & 0xffff };
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT. */
export function encodeInfoExport(exportSize: number, transmissionFlags: number): Uint8Array {
  const b = new Uint8Array(12);
  writeU16(b, 0, C.NBD_INFO_EXPORT);
  writeU64(b, 2, exportSize);
  writeU16(b, 10, transmissionFlags);
  return b;
}

function encodeInfoString(infoType: number, text: string): Uint8Array {
  const s = encodeText(truncateString(text, C.NBD_MAX_STRING_LENGTH));
  const b = new Uint8Array(2 + s.byteLength);
  writeU16(b, 0, infoType);
  b.set(s, 2);
  return b;
}

/** NBD_REP_INFO data for NBD_INFO_NAME. */
export function encodeInfoName(name: string): Uint8Array {
  return encodeInfoString(C.NBD_INFO_NAME, name);
}

/** NBD_REP_INFO data for NBD_INFO_DESCRIPTION. */
export function encodeInfoDescription(description: string): Uint8Array {
  return encodeInfoString(C.NBD_INFO_DESCRIPTION, description);
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE (minimum, preferred, maximum payload; bytes). */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximumPayload: number): Uint8Array {
  const b = new Uint8Array(14);
  writeU16(b, 0, C.NBD_INFO_BLOCK_SIZE);
  writeU32(b, 2, minimum);
  writeU32(b, 6, preferred);
  writeU32(b, 10, maximumPayload);
  return b;
}

/** One decoded NBD_REP_INFO payload; information types this codec does not know come back as `other`. */
export type InfoReply =
  | ({ kind: "export" } & ExportInfo)
  | { kind: "block-size"; minimum: number; preferred: number; maximumPayload: number }
  | { kind: "name" | "description"; text: string }
  | { kind: "other"; infoType: number };

/** Decodes NBD_REP_INFO data; throws when it is shorter than its type requires (QEMU's messages). */
export function decodeInfo(data: Uint8Array): InfoReply {
  if (data.byteLength < 2) throw protocolError(`info reply of ${data.byteLength} bytes is too short`);
  const infoType = readU16(data, 0);
  const rest = data.byteLength - 2;
  const expect = (n: number) => {
    if (rest !== n) throw protocolError(`remaining export info len ${rest} is unexpected size`);
  };
  switch (infoType) {
    case C.NBD_INFO_EXPORT:
      expect(10);
      return { kind: "export", size: readU64(data, 2), transmissionFlags: readU16(data, 10) };
    case C.NBD_INFO_BLOCK_SIZE:
      expect(12);
      return { kind: "block-size", minimum: readU32(data, 2), preferred: readU32(data, 6), maximumPayload: readU32(data, 10) };
    case C.NBD_INFO_NAME:
    case C.NBD_INFO_DESCRIPTION:
      return { kind: infoType === C.NBD_INFO_NAME ? "name" : "description", text: decodePeerText(data.subarray(2)) };
    default:
      return { kind: "other", infoType };
  }
}

/** NBD_REP_SERVER data: name length, name, then the description as the free-form detail. */
export function encodeServerEntry(name: string, description: string): Uint8Array {
  const n = encodeText(name);
  const d = encodeText(truncateString(description, C.NBD_MAX_STRING_LENGTH));
  const b = new Uint8Array(4 + n.byteLength + d.byteLength);
  writeU32(b, 0, n.byteLength);
  b.set(n, 4);
  b.set(d, 4 + n.byteLength);
  return b;
}

// ---- requests with an export name (INFO/GO, LIST/SET_META_CONTEXT) -------------------------------

/** An export name as sent in option data; throws when it is longer than the NBD string limit. */
export function encodeExportName(name: string): Uint8Array {
  const bytes = encodeText(name);
  if (bytes.byteLength > C.NBD_MAX_STRING_LENGTH) throw protocolError(`export name too long to send (${bytes.byteLength} bytes)`);
  return bytes;
}

/** The 32-bit length and export name that open INFO/GO and meta-context data, followed by at least `after` bytes. */
function decodeLeadingName(data: Uint8Array, after: number): { exportName: string; nameLength: number } {
  if (data.byteLength < 4 + after) throw protocolError("option length too short");
  const nameLength = readU32(data, 0);
  if (nameLength > data.byteLength - 4 - after) throw protocolError("export name length exceeds option length");
  if (nameLength > C.NBD_MAX_STRING_LENGTH) throw protocolError("export name too long");
  const exportName = decodeNbdString(data.subarray(4, 4 + nameLength));
  if (exportName === null) throw protocolError("export name is not a valid string");
  return { exportName, nameLength };
}

export interface InfoRequest {
  exportName: string;
  /** NBD_INFO_* types the client asks for. */
  infoTypes: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export function encodeInfoRequest(request: InfoRequest): Uint8Array {
  const name = encodeExportName(request.exportName);
  const b = new Uint8Array(4 + name.byteLength + 2 + 2 * request.infoTypes.length);
  writeU32(b, 0, name.byteLength);
  b.set(name, 4);
  writeU16(b, 4 + name.byteLength, request.infoTypes.length);
  request.infoTypes.forEach((t, i) => writeU16(b, 6 + name.byteLength + 2 * i, t));
  return b;
}

/** Parses NBD_OPT_INFO / NBD_OPT_GO data; throws when it is malformed. */
export function decodeInfoRequest(data: Uint8Array): InfoRequest {
  const { exportName, nameLength } = decodeLeadingName(data, 2);
  const count = readU16(data, 4 + nameLength);
  if (data.byteLength !== 6 + nameLength + 2 * count) throw protocolError("information request count does not match option length");
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(readU16(data, 6 + nameLength + 2 * i));
  return { exportName, infoTypes };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export function encodeMetaContextRequest(request: MetaContextRequest): Uint8Array {
  const name = encodeExportName(request.exportName);
  const queries = request.queries.map((q) => encodeText(q));
  const b = new Uint8Array(8 + name.byteLength + queries.reduce((n, q) => n + 4 + q.byteLength, 0));
  writeU32(b, 0, name.byteLength);
  b.set(name, 4);
  let at = 4 + name.byteLength;
  writeU32(b, at, queries.length);
  at += 4;
  for (const q of queries) {
    writeU32(b, at, q.byteLength);
    b.set(q, at + 4);
    at += 4 + q.byteLength;
  }
  return b;
}

/** Parses NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data; throws when it is malformed. */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest {
  const { exportName, nameLength } = decodeLeadingName(data, 4);
  let at = 4 + nameLength;
  const count = readU32(data, at);
  at += 4;
  // Each query takes at least its 4-byte length: a count beyond that cannot be honest.
  if (count > (data.byteLength - at) / 4) throw protocolError("query count exceeds option length");
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.byteLength - at < 4) throw protocolError("query length exceeds option length");
    const queryLength = readU32(data, at);
    at += 4;
    if (queryLength > data.byteLength - at) throw protocolError("query length exceeds option length");
    if (queryLength > C.NBD_MAX_STRING_LENGTH) throw protocolError("query too long");
    const query = decodeNbdString(data.subarray(at, at + queryLength));
    if (query === null) throw protocolError("query is not a valid string");
    queries.push(query);
    at += queryLength;
  }
  if (at !== data.byteLength) throw protocolError("trailing bytes after queries");
  return { exportName, queries };
}

/** NBD_REP_META_CONTEXT data: context id and name. */
export function encodeMetaContext(contextId: number, name: string): Uint8Array {
  const n = encodeText(name);
  const b = new Uint8Array(4 + n.byteLength);
  writeU32(b, 0, contextId);
  b.set(n, 4);
  return b;
}

/** Decodes NBD_REP_META_CONTEXT data; throws when it has no name. */
export function decodeMetaContext(data: Uint8Array): { id: number; name: string } {
  if (data.byteLength < 5) throw protocolError(`meta context reply of ${data.byteLength} bytes is too short`);
  return { id: readU32(data, 0), name: decodePeerText(data.subarray(4)) };
}
