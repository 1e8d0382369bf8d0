/**
 * The client side of the NBD handshake (NBD spec "Handshake"): fixed newstyle with NBD_OPT_STRUCTURED_REPLY,
 * NBD_OPT_SET_META_CONTEXT and NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE, falling back to
 * NBD_OPT_EXPORT_NAME for servers without NBD_OPT_GO; plain newstyle and oldstyle servers are accepted too.
 * Every reply is checked against its declared length before it is read; failures read as QEMU 7.2's.
 */
import { decodeText, encodeText, getU64, viewOf } from "@qcowkit/spec";
import {
  BASE_ALLOCATION,
  NBD_DEFAULT_MAX_PAYLOAD,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_MAX_STRING_LENGTH,
  NBD_OLDSTYLE_MAGIC,
  NBD_OPTION_REPLY_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
} from "./constants";
import { nbdError, oneLine, optionLabel, optionRefusal, replyLabel, type NbdError } from "./messages";
import type { NbdWire } from "./wire";

export interface NbdHandshakeOptions {
  /** The export to open ("" is the server's default export). */
  exportName: string;
  /** Negotiate structured replies (default true): sparse reads, error messages, block status. */
  structuredReplies?: boolean;
  /** Metadata contexts to select (default base:allocation); needs structured replies. */
  metaContexts?: readonly string[];
}

export interface NbdExportInfo {
  exportName: string;
  /** Bytes. */
  size: number;
  /** NBD_FLAG_* transmission flags. */
  transmissionFlags: number;
  /** Whether the server sent NBD_INFO_BLOCK_SIZE; the three sizes below are the spec's defaults otherwise. */
  blockSizeAdvertised: boolean;
  minimumBlockSize: number;
  preferredBlockSize: number;
  maximumPayload: number;
  structuredReplies: boolean;
  /** Selected metadata contexts: name to id. */
  contexts: Map<string, number>;
  description?: string;
  negotiation: "fixed newstyle" | "newstyle" | "oldstyle";
}

/** Longest option reply payload read (strings are at most 4096 bytes; the rest is fixed fields). */
const MAX_OPTION_REPLY_BYTES = NBD_MAX_STRING_LENGTH + 64;
/** The largest export size a JavaScript number holds exactly. */
const MAX_EXPORT_SIZE = Number.MAX_SAFE_INTEGER;

/** Run the handshake on a fresh connection; the connection is in the transmission phase when this resolves. */
export async function negotiate(wire: NbdWire, opts: NbdHandshakeOptions): Promise<NbdExportInfo> {
  const name = encodeText(opts.exportName);
  if (name.byteLength > NBD_MAX_STRING_LENGTH) {
    throw nbdError("INVALID_ARGUMENT", `export name too long to send (${name.byteLength} bytes)`);
  }
  const greeting = await readStep(wire, 16, "initial magic");
  const hello = viewOf(greeting);
  const initMagic = hello.getBigUint64(0);
  if (initMagic !== NBD_INIT_MAGIC) throw protocolError(`Bad initial magic received: 0x${initMagic.toString(16)}`);
  const magic = hello.getBigUint64(8);
  if (magic === NBD_OLDSTYLE_MAGIC) return oldstyle(wire, opts);
  if (magic !== NBD_OPTS_MAGIC) throw protocolError(`Bad server magic received: 0x${magic.toString(16)}`);

  const serverFlags = viewOf(await readStep(wire, 2, "server flags")).getUint16(0);
  const fixed = (serverFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = new Uint8Array(4);
  viewOf(clientFlags).setUint32(0, (fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  wire.send(clientFlags);

  const info = blankInfo(opts.exportName, fixed ? "fixed newstyle" : "newstyle");
  if (fixed) {
    if (opts.structuredReplies ?? true) {
      const reply = await simpleOption(wire, NBD_OPT_STRUCTURED_REPLY, new Uint8Array(0));
      info.structuredReplies = reply === NBD_REP_ACK;
    }
    const queries = opts.metaContexts ?? [BASE_ALLOCATION];
    if (info.structuredReplies && queries.length > 0) info.contexts = await setMetaContexts(wire, name, queries);
    if (await go(wire, name, info)) return finish(info);
  }
  // NBD_OPT_EXPORT_NAME: the server hangs up when it does not like the name.
  wire.send(optionMessage(NBD_OPT_EXPORT_NAME, name));
  const reply = viewOf(await readStep(wire, 10, "export length"));
  setExport(info, getU64(reply, 0), reply.getUint16(8));
  if (!noZeroes) await readStep(wire, 124, "export length");
  return finish(info);
}

async function oldstyle(wire: NbdWire, opts: NbdHandshakeOptions): Promise<NbdExportInfo> {
  const reply = viewOf(await readStep(wire, 12 + 124, "export length"));
  if (opts.exportName !== "") throw protocolError("Server does not support non-empty export names");
  const info = blankInfo("", "oldstyle");
  // The 32-bit flags field holds the transmission flags in its low half.
  setExport(info, getU64(reply, 0), reply.getUint32(8) & 0xffff);
  return finish(info);
}

/** What is known before the server says more: the spec's default block sizes, simple replies, no contexts. */
function blankInfo(exportName: string, negotiation: NbdExportInfo["negotiation"]): NbdExportInfo {
  return {
    exportName,
    size: 0,
    transmissionFlags: 0,
    blockSizeAdvertised: false,
    minimumBlockSize: 1,
    preferredBlockSize: 4096,
    maximumPayload: NBD_DEFAULT_MAX_PAYLOAD,
    structuredReplies: false,
    contexts: new Map(),
    negotiation,
  };
}

function finish(info: NbdExportInfo): NbdExportInfo {
  if ((info.transmissionFlags & NBD_FLAG_HAS_FLAGS) === 0) info.transmissionFlags = 0;
  return info;
}

function setExport(info: NbdExportInfo, size: number, flags: number): void {
  if (!Number.isSafeInteger(size) || size > MAX_EXPORT_SIZE) {
    throw protocolError(`Export size ${size} is too large (at most 2^53 - 1 bytes are supported)`);
  }
  info.size = size;
  info.transmissionFlags = flags;
}

function optionMessage(option: number, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(OPTION_HEADER_BYTES + data.byteLength);
  const v = viewOf(b);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, data.byteLength);
  b.set(data, OPTION_HEADER_BYTES);
  return b;
}

interface OptionReply {
  replyType: number;
  data: Uint8Array;
}

/** One option reply for `option`: header checked, payload bounded and read. */
async function readOptionReply(wire: NbdWire, option: number): Promise<OptionReply> {
  const head = viewOf(await readStep(wire, OPTION_REPLY_HEADER_BYTES, "option reply"));
  if (head.getBigUint64(0) !== NBD_OPTION_REPLY_MAGIC) throw protocolError("Unexpected option reply magic");
  const replied = head.getUint32(8);
  const replyType = head.getUint32(12);
  const length = head.getUint32(16);
  if (replied !== option) {
    throw protocolError(`Unexpected option type ${optionLabel(replied)}, expected ${optionLabel(option)}`);
  }
  if (length > MAX_OPTION_REPLY_BYTES) {
    throw protocolError(`server's reply ${replyLabel(replyType)} to option ${optionLabel(option)} is too long (${length} bytes)`);
  }
  const data = length > 0 ? await readStep(wire, length, "option reply") : new Uint8Array(0);
  return { replyType, data };
}

function isError(replyType: number): boolean {
  return (replyType & NBD_REP_FLAG_ERROR) !== 0;
}

function serverText(data: Uint8Array): string {
  return oneLine(decodeText(data));
}

/** An option answered by one ACK or one error: the reply type (errors are the caller's to judge). */
async function simpleOption(wire: NbdWire, option: number, data: Uint8Array): Promise<number> {
  wire.send(optionMessage(option, data));
  const reply = await readOptionReply(wire, option);
  if (!isError(reply.replyType) && reply.replyType !== NBD_REP_ACK) {
    throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(NBD_REP_ACK)}`);
  }
  if (!isError(reply.replyType) && reply.data.byteLength !== 0) {
    throw protocolError(`server sent ${reply.data.byteLength} bytes with ${replyLabel(NBD_REP_ACK)}`);
  }
  return reply.replyType;
}

/** NBD_OPT_SET_META_CONTEXT: the contexts the server selected (none when it refuses the option). */
async function setMetaContexts(wire: NbdWire, name: Uint8Array, queries: readonly string[]): Promise<Map<string, number>> {
  const encoded = queries.map((q) => encodeText(q));
  const data = new Uint8Array(4 + name.byteLength + 4 + encoded.reduce((n, q) => n + 4 + q.byteLength, 0));
  const v = viewOf(data);
  v.setUint32(0, name.byteLength);
  data.set(name, 4);
  let at = 4 + name.byteLength;
  v.setUint32(at, encoded.length);
  at += 4;
  for (const q of encoded) {
    v.setUint32(at, q.byteLength);
    data.set(q, at + 4);
    at += 4 + q.byteLength;
  }
  wire.send(optionMessage(NBD_OPT_SET_META_CONTEXT, data));
  const contexts = new Map<string, number>();
  for (;;) {
    const reply = await readOptionReply(wire, NBD_OPT_SET_META_CONTEXT);
    if (isError(reply.replyType)) return new Map();
    if (reply.replyType === NBD_REP_ACK) return contexts;
    if (reply.replyType !== NBD_REP_META_CONTEXT) {
      throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(NBD_REP_META_CONTEXT)}`);
    }
    if (reply.data.byteLength < 5) throw protocolError(`meta context reply of ${reply.data.byteLength} bytes is too short`);
    const id = viewOf(reply.data).getUint32(0);
    const contextName = decodeText(reply.data.subarray(4));
    if (!queries.includes(contextName)) throw protocolError(`Unexpected context name '${oneLine(contextName)}'`);
    if (contexts.has(contextName)) throw protocolError(`Server replied with context '${contextName}' twice`);
    contexts.set(contextName, id);
  }
}

/** NBD_OPT_GO asking for the block sizes: true once in transmission, false when the server lacks the option. */
async function go(wire: NbdWire, name: Uint8Array, info: NbdExportInfo): Promise<boolean> {
  const data = new Uint8Array(4 + name.byteLength + 4);
  const v = viewOf(data);
  v.setUint32(0, name.byteLength);
  data.set(name, 4);
  v.setUint16(4 + name.byteLength, 1);
  v.setUint16(6 + name.byteLength, NBD_INFO_BLOCK_SIZE);
  wire.send(optionMessage(NBD_OPT_GO, data));
  let haveExport = false;
  for (;;) {
    const reply = await readOptionReply(wire, NBD_OPT_GO);
    if (isError(reply.replyType)) {
      if (reply.replyType === NBD_REP_ERR_UNSUP) return false;
      throw optionRefusal(NBD_OPT_GO, reply.replyType, serverText(reply.data));
    }
    if (reply.replyType === NBD_REP_ACK) {
      if (!haveExport) throw protocolError("broken server omitted NBD_INFO_EXPORT");
      return true;
    }
    if (reply.replyType !== NBD_REP_INFO) {
      throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(NBD_REP_INFO)}`);
    }
    if (reply.data.byteLength < 2) throw protocolError(`info reply of ${reply.data.byteLength} bytes is too short`);
    const r = viewOf(reply.data);
    const infoType = r.getUint16(0);
    const rest = reply.data.byteLength - 2;
    if (infoType === NBD_INFO_EXPORT) {
      if (rest !== 10) throw protocolError(`remaining export info len ${rest} is unexpected size`);
      setExport(info, getU64(r, 2), r.getUint16(10));
      haveExport = true;
    } else if (infoType === NBD_INFO_BLOCK_SIZE) {
      if (rest !== 12) throw protocolError(`remaining export info len ${rest} is unexpected size`);
      setBlockSizes(info, r.getUint32(2), r.getUint32(6), r.getUint32(10));
    } else if (infoType === NBD_INFO_DESCRIPTION) {
      info.description = serverText(reply.data.subarray(2));
    }
    // Other information (the canonical name, types added later) is ignored, as the spec asks.
  }
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function setBlockSizes(info: NbdExportInfo, minimum: number, preferred: number, maximum: number): void {
  if (!isPowerOfTwo(minimum) || minimum > 65536) throw protocolError(`server minimum block size ${minimum} is not a power of two up to 65536`);
  if (!isPowerOfTwo(preferred) || preferred < minimum) {
    throw protocolError(`server preferred block size ${preferred} is not a power of two at least the minimum block size ${minimum}`);
  }
  if (maximum < minimum) throw protocolError(`server maximum payload ${maximum} is smaller than the minimum block size ${minimum}`);
  info.blockSizeAdvertised = true;
  info.minimumBlockSize = minimum;
  info.preferredBlockSize = preferred;
  info.maximumPayload = maximum;
}

/** Read a handshake field; a failure reads "Failed to read WHAT: reason", as QEMU's. */
async function readStep(wire: NbdWire, n: number, what: string): Promise<Uint8Array> {
  try {
    return await wire.read(n);
  } catch (e) {
    throw nbdError("IO_ERROR", `Failed to read ${what}: ${e instanceof Error ? e.message : String(e)}`, { errno: "EIO", cause: e });
  }
}

function protocolError(message: string): NbdError {
  return nbdError("IO_ERROR", message, { errno: "EIO" });
}
