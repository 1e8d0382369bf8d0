/**
 * The option-haggling state machine of one connection (fixed newstyle, NBD spec "Option types"), without
 * I/O: the connection feeds it each option and its data, sends the replies it returns and acts on the
 * outcome. TLS, when configured, is mandatory (FORCEDTLS): every option but STARTTLS and ABORT is refused
 * with NBD_REP_ERR_TLS_REQD until the upgrade.
 */
import { isQcow2Error } from "@qcowkit/spec";
import { decodeNbdString } from "./bytes";
import * as C from "./constants";
import { optionNames } from "./constants";
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
} from "./handshake";
import { listContexts, selectContexts, type MetaContext } from "./meta-context";

/** What a client sees of the one export this server offers. */
export interface ExportDescriptor {
  name: string;
  description: string;
  /** Bytes. */
  size: number;
  readOnly: boolean;
  /** Advertise NBD_FLAG_CAN_MULTI_CONN. */
  multiConn: boolean;
  /** Metadata contexts available on this export. */
  contexts: readonly MetaContext[];
  /** NBD_INFO_BLOCK_SIZE values (bytes). */
  minimumBlockSize: number;
  preferredBlockSize: number;
  maximumPayload: number;
}

/** The transmission flags of an export; SEND_DF only once structured replies are negotiated. */
export function transmissionFlags(exp: ExportDescriptor, structuredReplies: boolean): number {
  let flags = C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_FUA | C.NBD_FLAG_SEND_CACHE;
  if (exp.readOnly) flags |= C.NBD_FLAG_READ_ONLY;
  else flags |= C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FAST_ZERO;
  if (structuredReplies) flags |= C.NBD_FLAG_SEND_DF;
  if (exp.multiConn) flags |= C.NBD_FLAG_CAN_MULTI_CONN;
  return flags;
}

/**
 * continue: read the next option; abort: the client ended the session (close after the replies);
 * starttls: upgrade the socket after the replies, then call `tlsEstablished`; transmission: enter the
 * transmission phase after the replies; close: hard disconnect (no reply is possible or sensible).
 */
export type NegotiationAction = "continue" | "abort" | "starttls" | "transmission" | "close";

export interface OptionOutcome {
  replies: Uint8Array[];
  action: NegotiationAction;
  /** Why the connection is closed (for logs). */
  reason?: string;
}

export interface NegotiatorOptions {
  /** TLS is configured: the client must upgrade before anything else. */
  tlsRequired: boolean;
}

export class Negotiator {
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  structuredReplies = false;
  /** The contexts chosen by the last NBD_OPT_SET_META_CONTEXT. */
  selectedContexts: MetaContext[] = [];
  /** The socket has been upgraded to TLS. */
  tlsActive = false;
  /** The client set NBD_FLAG_C_NO_ZEROES (no padding after the NBD_OPT_EXPORT_NAME reply). */
  noZeroes = false;

  constructor(
    private readonly exp: ExportDescriptor,
    private readonly opts: NegotiatorOptions,
  ) {}

  /** The client finished the TLS handshake: forget everything negotiated before it (NBD spec, STARTTLS). */
  tlsEstablished(): void {
    this.tlsActive = true;
    this.structuredReplies = false;
    this.selectedContexts = [];
  }

  /** Transmission flags as sent when entering transmission. */
  get transmissionFlags(): number {
    return transmissionFlags(this.exp, this.structuredReplies);
  }

  handleOption(option: number, data: Uint8Array): OptionOutcome {
    if (this.opts.tlsRequired && !this.tlsActive) {
      if (option === C.NBD_OPT_EXPORT_NAME) return close("NBD_OPT_EXPORT_NAME before TLS");
      if (option !== C.NBD_OPT_STARTTLS && option !== C.NBD_OPT_ABORT) {
        return error(option, C.NBD_REP_ERR_TLS_REQD, `Option 0x${option.toString(16)} not permitted before TLS`);
      }
    }
    switch (option) {
      case C.NBD_OPT_EXPORT_NAME:
        return this.exportName(data);
      case C.NBD_OPT_ABORT:
        return { replies: [encodeOptionReply(option, C.NBD_REP_ACK)], action: "abort" };
      case C.NBD_OPT_LIST:
        if (data.byteLength !== 0) return error(option, C.NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
        return {
          replies: [
            encodeOptionReply(option, C.NBD_REP_SERVER, encodeServerEntry(this.exp.name, this.exp.description)),
            encodeOptionReply(option, C.NBD_REP_ACK),
          ],
          action: "continue",
        };
      case C.NBD_OPT_STARTTLS:
        return this.startTls(data);
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case C.NBD_OPT_STRUCTURED_REPLY:
        if (data.byteLength !== 0) return error(option, C.NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
        if (this.structuredReplies) return error(option, C.NBD_REP_ERR_INVALID, "structured reply already negotiated");
        this.structuredReplies = true;
        return { replies: [encodeOptionReply(option, C.NBD_REP_ACK)], action: "continue" };
      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return error(option, C.NBD_REP_ERR_UNSUP, `Unsupported option ${option} (${optionNames[option] ?? "unknown"})`);
    }
  }

  private exportName(data: Uint8Array): OptionOutcome {
    const name = data.byteLength <= C.NBD_MAX_STRING_LENGTH ? decodeNbdString(data) : null;
    if (name === null) return close("invalid export name");
    if (name !== this.exp.name) return close(`export '${name}' not present`);
    return {
      replies: [encodeExportNameReply(this.exp.size, this.transmissionFlags, this.noZeroes)],
      action: "transmission",
    };
  }

  private startTls(data: Uint8Array): OptionOutcome {
    const option = C.NBD_OPT_STARTTLS;
    if (data.byteLength !== 0) return error(option, C.NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
    if (this.tlsActive) return error(option, C.NBD_REP_ERR_INVALID, "TLS already enabled");
    if (!this.opts.tlsRequired) return error(option, C.NBD_REP_ERR_POLICY, "TLS not configured");
    return { replies: [encodeOptionReply(option, C.NBD_REP_ACK)], action: "starttls" };
  }

  private infoOrGo(option: number, data: Uint8Array): OptionOutcome {
    const request = decodeOrRefuse(option, () => decodeInfoRequest(data));
    if ("replies" in request) return request;
    if (request.exportName !== this.exp.name) {
      return error(option, C.NBD_REP_ERR_UNKNOWN, `export '${request.exportName}' not present`);
    }
    const replies: Uint8Array[] = [];
    const info = (payload: Uint8Array) => replies.push(encodeOptionReply(option, C.NBD_REP_INFO, payload));
    if (request.infoTypes.includes(C.NBD_INFO_NAME)) info(encodeInfoName(this.exp.name));
    if (request.infoTypes.includes(C.NBD_INFO_DESCRIPTION) && this.exp.description !== "") {
      info(encodeInfoDescription(this.exp.description));
    }
    // Block sizes are always sent (a client that did not ask may ignore them; they are the defaults anyway).
    info(encodeInfoBlockSize(this.exp.minimumBlockSize, this.exp.preferredBlockSize, this.exp.maximumPayload));
    info(encodeInfoExport(this.exp.size, this.transmissionFlags));
    replies.push(encodeOptionReply(option, C.NBD_REP_ACK));
    return { replies, action: option === C.NBD_OPT_GO ? "transmission" : "continue" };
  }

  private metaContext(option: number, data: Uint8Array): OptionOutcome {
    const isSet = option === C.NBD_OPT_SET_META_CONTEXT;
    // A SET replaces the previous selection even when it fails.
    if (isSet) this.selectedContexts = [];
    if (!this.structuredReplies) {
      return error(option, C.NBD_REP_ERR_INVALID, "request of meta contexts needs structured replies");
    }
    const request = decodeOrRefuse(option, () => decodeMetaContextRequest(data));
    if ("replies" in request) return request;
    if (request.exportName !== this.exp.name) {
      return error(option, C.NBD_REP_ERR_UNKNOWN, `export '${request.exportName}' not present`);
    }
    const contexts = isSet
      ? selectContexts(this.exp.contexts, request.queries)
      : listContexts(this.exp.contexts, request.queries);
    if (isSet) this.selectedContexts = contexts;
    const replies = contexts.map((c) =>
      encodeOptionReply(option, C.NBD_REP_META_CONTEXT, encodeMetaContext(isSet ? c.id : 0, c.name)),
    );
    replies.push(encodeOptionReply(option, C.NBD_REP_ACK));
    return { replies, action: "continue" };
  }
}

/** Malformed option data is refused with NBD_REP_ERR_INVALID and the decoder's message. */
function decodeOrRefuse<T extends object>(option: number, decode: () => T): T | OptionOutcome {
  try {
    return decode();
  } catch (e) {
    if (!isQcow2Error(e)) throw e;
    return error(option, C.NBD_REP_ERR_INVALID, e.message);
  }
}

function error(option: number, replyType: number, message: string): OptionOutcome {
  return { replies: [encodeOptionError(option, replyType, message)], action: "continue" };
}

function close(reason: string): OptionOutcome {
  return { replies: [], action: "close", reason };
}
