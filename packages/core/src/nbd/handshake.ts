/**
 * The client side of the NBD handshake (NBD spec "Handshake"): fixed newstyle with NBD_OPT_STRUCTURED_REPLY,
 * NBD_OPT_SET_META_CONTEXT and NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE, falling back to
 * NBD_OPT_EXPORT_NAME for servers without NBD_OPT_GO; plain newstyle and oldstyle servers are accepted too.
 * Every reply is checked against its declared length before it is read; failures read as QEMU 7.2's.
 */
import * as W from "@qcowkit/nbd-protocol";
import {
  decodeExportNameReply,
  decodeGreeting,
  decodeInfo,
  decodeMetaContext,
  decodeOldstyleExport,
  decodeOptionReplyHeader,
  decodePeerText,
  encodeClientFlags,
  encodeExportName,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  nbdError,
  optionLabel,
  optionRefusal,
  protocolError,
  readU16,
  replyLabel,
  type ExportInfo,
} from "@qcowkit/nbd-protocol";
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
const MAX_OPTION_REPLY_BYTES = W.NBD_MAX_STRING_LENGTH + 64;
/** The largest export size a JavaScript number holds exactly. */
const MAX_EXPORT_SIZE = Number.MAX_SAFE_INTEGER;

/** Run the handshake on a fresh connection; the connection is in the transmission phase when this resolves. */
export async function negotiate(wire: NbdWire, opts: NbdHandshakeOptions): Promise<NbdExportInfo> {
  let name: Uint8Array;
  try {
    name = encodeExportName(opts.exportName);
  } catch (e) {
    throw nbdError("INVALID_ARGUMENT", (e as Error).message);
  }
  if (decodeGreeting(await readStep(wire, 16, "initial magic")) === "oldstyle") return oldstyle(wire, opts);

  const serverFlags = readU16(await readStep(wire, 2, "server flags"), 0);
  const fixed = (serverFlags & W.NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & W.NBD_FLAG_NO_ZEROES) !== 0;
  wire.send(encodeClientFlags({ fixedNewstyle: fixed, noZeroes }));

  const info = blankInfo(opts.exportName, fixed ? "fixed newstyle" : "newstyle");
  if (fixed) {
    if (opts.structuredReplies ?? true) {
      const reply = await simpleOption(wire, W.NBD_OPT_STRUCTURED_REPLY, new Uint8Array(0));
      info.structuredReplies = reply === W.NBD_REP_ACK;
    }
    const queries = opts.metaContexts ?? [W.BASE_ALLOCATION];
    if (info.structuredReplies && queries.length > 0) info.contexts = await setMetaContexts(wire, opts.exportName, queries);
    if (await go(wire, opts.exportName, info)) return finish(info);
  }
  // NBD_OPT_EXPORT_NAME: the server hangs up when it does not like the name.
  wire.send(encodeOption(W.NBD_OPT_EXPORT_NAME, name));
  setExport(info, decodeExportNameReply(await readStep(wire, 10, "export length")));
  if (!noZeroes) await readStep(wire, 124, "export length");
  return finish(info);
}

async function oldstyle(wire: NbdWire, opts: NbdHandshakeOptions): Promise<NbdExportInfo> {
  const reply = await readStep(wire, 12 + 124, "export length");
  if (opts.exportName !== "") throw protocolError("Server does not support non-empty export names");
  const info = blankInfo("", "oldstyle");
  setExport(info, decodeOldstyleExport(reply));
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
    maximumPayload: W.NBD_MAX_PAYLOAD,
    structuredReplies: false,
    contexts: new Map(),
    negotiation,
  };
}

function finish(info: NbdExportInfo): NbdExportInfo {
  if ((info.transmissionFlags & W.NBD_FLAG_HAS_FLAGS) === 0) info.transmissionFlags = 0;
  return info;
}

function setExport(info: NbdExportInfo, exp: ExportInfo): void {
  if (exp.size < 0 || exp.size > MAX_EXPORT_SIZE) {
    throw protocolError("Export size is too large (at most 2^53 - 1 bytes are supported)");
  }
  info.size = exp.size;
  info.transmissionFlags = exp.transmissionFlags;
}

interface OptionReply {
  replyType: number;
  data: Uint8Array;
}

/** One option reply for `option`: header checked, payload bounded and read. */
async function readOptionReply(wire: NbdWire, option: number): Promise<OptionReply> {
  const head = decodeOptionReplyHeader(await readStep(wire, W.OPTION_REPLY_HEADER_LENGTH, "option reply"));
  const { replyType, length } = head;
  if (head.option !== option) {
    throw protocolError(`Unexpected option type ${optionLabel(head.option)}, expected ${optionLabel(option)}`);
  }
  if (length > MAX_OPTION_REPLY_BYTES) {
    throw protocolError(`server's reply ${replyLabel(replyType)} to option ${optionLabel(option)} is too long (${length} bytes)`);
  }
  const data = length > 0 ? await readStep(wire, length, "option reply") : new Uint8Array(0);
  return { replyType, data };
}

function isError(replyType: number): boolean {
  return (replyType & W.NBD_REP_FLAG_ERROR) !== 0;
}

/** An option answered by one ACK or one error: the reply type (errors are the caller's to judge). */
async function simpleOption(wire: NbdWire, option: number, data: Uint8Array): Promise<number> {
  wire.send(encodeOption(option, data));
  const reply = await readOptionReply(wire, option);
  if (!isError(reply.replyType) && reply.replyType !== W.NBD_REP_ACK) {
    throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(W.NBD_REP_ACK)}`);
  }
  if (!isError(reply.replyType) && reply.data.byteLength !== 0) {
    throw protocolError(`server sent ${reply.data.byteLength} bytes with ${replyLabel(W.NBD_REP_ACK)}`);
  }
  return reply.replyType;
}

/** NBD_OPT_SET_META_CONTEXT: the contexts the server selected (none when it refuses the option). */
async function setMetaContexts(wire: NbdWire, exportName: string, queries: readonly string[]): Promise<Map<string, number>> {
  wire.send(encodeOption(W.NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest({ exportName, queries: [...queries] })));
  const contexts = new Map<string, number>();
  for (;;) {
    const reply = await readOptionReply(wire, W.NBD_OPT_SET_META_CONTEXT);
    if (isError(reply.replyType)) return new Map();
    if (reply.replyType === W.NBD_REP_ACK) return contexts;
    if (reply.replyType !== W.NBD_REP_META_CONTEXT) {
      throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(W.NBD_REP_META_CONTEXT)}`);
    }
    const { id, name: contextName } = decodeMetaContext(reply.data);
    if (!queries.includes(contextName)) throw protocolError(`Unexpected context name '${contextName}'`);
    if (contexts.has(contextName)) throw protocolError(`Server replied with context '${contextName}' twice`);
    contexts.set(contextName, id);
  }
}

/** NBD_OPT_GO asking for the block sizes: true once in transmission, false when the server lacks the option. */
async function go(wire: NbdWire, exportName: string, info: NbdExportInfo): Promise<boolean> {
  wire.send(encodeOption(W.NBD_OPT_GO, encodeInfoRequest({ exportName, infoTypes: [W.NBD_INFO_BLOCK_SIZE] })));
  let haveExport = false;
  for (;;) {
    const reply = await readOptionReply(wire, W.NBD_OPT_GO);
    if (isError(reply.replyType)) {
      if (reply.replyType === W.NBD_REP_ERR_UNSUP) return false;
      throw optionRefusal(W.NBD_OPT_GO, reply.replyType, decodePeerText(reply.data));
    }
    if (reply.replyType === W.NBD_REP_ACK) {
      if (!haveExport) throw protocolError("broken server omitted NBD_INFO_EXPORT");
      return true;
    }
    if (reply.replyType !== W.NBD_REP_INFO) {
      throw protocolError(`unexpected reply type ${replyLabel(reply.replyType)}, expected ${replyLabel(W.NBD_REP_INFO)}`);
    }
    const item = decodeInfo(reply.data);
    if (item.kind === "export") {
      setExport(info, item);
      haveExport = true;
    } else if (item.kind === "block-size") {
      setBlockSizes(info, item.minimum, item.preferred, item.maximumPayload);
    } else if (item.kind === "description") {
      info.description = item.text;
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

