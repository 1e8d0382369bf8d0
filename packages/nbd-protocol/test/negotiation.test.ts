import { describe, expect, it } from "vitest";
import * as C from "../src/constants";
import { availableContexts, listContexts, selectContexts } from "../src/meta-context";
import { Negotiator, transmissionFlags, type ExportDescriptor } from "../src/negotiation";
import { u16, u32 } from "./helpers";

const exp: ExportDescriptor = {
  name: "disk",
  description: "a test disk",
  size: 1 << 20,
  readOnly: false,
  multiConn: true,
  contexts: availableContexts({ allocationDepth: true, bitmaps: ["b0", "b1"] }),
  minimumBlockSize: 1,
  preferredBlockSize: 4096,
  maximumPayload: 1 << 25,
};

interface Reply {
  option: number;
  type: number;
  data: Buffer;
}

function parse(replies: Uint8Array[]): Reply[] {
  return replies.map((r) => {
    const b = Buffer.from(r);
    expect(b.readUInt32BE(0)).toBe(0x0003e889);
    expect(b.readUInt32BE(16)).toBe(b.length - 20);
    return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), data: b.subarray(20) };
  });
}

const goData = (name: string, infos: number[] = []) =>
  Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name), u16(infos.length), ...infos.map(u16)]);
const metaData = (name: string, queries: string[]) =>
  Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length), ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)])]);

describe("transmission flags", () => {
  it("advertise what a writable export supports", () => {
    const f = transmissionFlags(exp, true);
    for (const bit of [
      C.NBD_FLAG_HAS_FLAGS, C.NBD_FLAG_SEND_FLUSH, C.NBD_FLAG_SEND_FUA, C.NBD_FLAG_SEND_TRIM,
      C.NBD_FLAG_SEND_WRITE_ZEROES, C.NBD_FLAG_SEND_DF, C.NBD_FLAG_CAN_MULTI_CONN, C.NBD_FLAG_SEND_CACHE,
      C.NBD_FLAG_SEND_FAST_ZERO,
    ]) expect(f & bit).toBe(bit);
    expect(f & C.NBD_FLAG_READ_ONLY).toBe(0);
  });

  it("drop write features for read-only exports and DF without structured replies", () => {
    const f = transmissionFlags({ ...exp, readOnly: true, multiConn: false }, false);
    expect(f & C.NBD_FLAG_READ_ONLY).toBe(C.NBD_FLAG_READ_ONLY);
    expect(f & (C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FAST_ZERO)).toBe(0);
    expect(f & (C.NBD_FLAG_SEND_DF | C.NBD_FLAG_CAN_MULTI_CONN)).toBe(0);
  });
});

describe("Negotiator", () => {
  it("answers GO with the requested information, then enters transmission", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    const out = n.handleOption(C.NBD_OPT_GO, goData("disk", [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION, C.NBD_INFO_BLOCK_SIZE]));
    expect(out.action).toBe("transmission");
    const replies = parse(out.replies);
    expect(replies.at(-1)!.type).toBe(C.NBD_REP_ACK);
    const infos = new Map(replies.filter((r) => r.type === C.NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
    expect(infos.get(C.NBD_INFO_NAME)!.subarray(2).toString()).toBe("disk");
    expect(infos.get(C.NBD_INFO_DESCRIPTION)!.subarray(2).toString()).toBe("a test disk");
    expect(infos.get(C.NBD_INFO_BLOCK_SIZE)!.readUInt32BE(10)).toBe(1 << 25);
    const info = infos.get(C.NBD_INFO_EXPORT)!;
    expect(info.readBigUInt64BE(2)).toBe(1n << 20n);
    expect(info.readUInt16BE(10)).toBe(transmissionFlags(exp, false));
  });

  it("answers INFO without leaving the handshake, and refuses unknown exports", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    expect(n.handleOption(C.NBD_OPT_INFO, goData("disk")).action).toBe("continue");
    const bad = n.handleOption(C.NBD_OPT_GO, goData("other"));
    expect(bad.action).toBe("continue");
    const [r] = parse(bad.replies);
    expect(r!.type).toBe(C.NBD_REP_ERR_UNKNOWN);
    expect(r!.data.toString()).toBe("export 'other' not present");
    expect(parse(n.handleOption(C.NBD_OPT_GO, Buffer.from([0, 0])).replies).at(0)!.type).toBe(C.NBD_REP_ERR_INVALID);
  });

  it("accepts EXPORT_NAME for the export and closes for any other name", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    n.noZeroes = true;
    const ok = n.handleOption(C.NBD_OPT_EXPORT_NAME, Buffer.from("disk"));
    expect(ok.action).toBe("transmission");
    expect(ok.replies[0]).toHaveLength(10);
    expect(new Negotiator(exp, { tlsRequired: false }).handleOption(C.NBD_OPT_EXPORT_NAME, Buffer.from("x")).action).toBe("close");
  });

  it("lists the export, acknowledges ABORT, and refuses unknown options without closing", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    const list = parse(n.handleOption(C.NBD_OPT_LIST, Buffer.alloc(0)).replies);
    expect(list.map((r) => r.type)).toEqual([C.NBD_REP_SERVER, C.NBD_REP_ACK]);
    expect(list[0]!.data.subarray(4, 8).toString()).toBe("disk");
    expect(parse(n.handleOption(C.NBD_OPT_LIST, Buffer.from("x")).replies)[0]!.type).toBe(C.NBD_REP_ERR_INVALID);
    const unsup = n.handleOption(C.NBD_OPT_EXTENDED_HEADERS, Buffer.alloc(0));
    expect(unsup.action).toBe("continue");
    expect(parse(unsup.replies)[0]!.type).toBe(C.NBD_REP_ERR_UNSUP);
    expect(n.handleOption(0x12345, Buffer.alloc(3)).action).toBe("continue");
    const abort = n.handleOption(C.NBD_OPT_ABORT, Buffer.alloc(0));
    expect(abort.action).toBe("abort");
    expect(parse(abort.replies)[0]!.type).toBe(C.NBD_REP_ACK);
  });

  it("negotiates structured replies once", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    expect(parse(n.handleOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)).replies)[0]!.type).toBe(C.NBD_REP_ACK);
    expect(n.structuredReplies).toBe(true);
    expect(parse(n.handleOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)).replies)[0]!.type).toBe(C.NBD_REP_ERR_INVALID);
    expect(n.transmissionFlags & C.NBD_FLAG_SEND_DF).toBe(C.NBD_FLAG_SEND_DF);
  });

  it("lists and selects meta contexts, wildcards only when listing", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    expect(parse(n.handleOption(C.NBD_OPT_SET_META_CONTEXT, metaData("disk", ["base:allocation"])).replies)[0]!.type).toBe(
      C.NBD_REP_ERR_INVALID,
    );
    n.handleOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    const names = (opt: number, q: string[]) =>
      parse(n.handleOption(opt, metaData("disk", q)).replies)
        .filter((r) => r.type === C.NBD_REP_META_CONTEXT)
        .map((r) => r.data.subarray(4).toString());
    expect(names(C.NBD_OPT_LIST_META_CONTEXT, [])).toEqual([
      "base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1",
    ]);
    expect(names(C.NBD_OPT_LIST_META_CONTEXT, ["qemu:"])).toEqual(["qemu:allocation-depth", "qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"]);
    expect(names(C.NBD_OPT_LIST_META_CONTEXT, ["qemu:dirty-bitmap:"])).toEqual(["qemu:dirty-bitmap:b0", "qemu:dirty-bitmap:b1"]);
    expect(names(C.NBD_OPT_LIST_META_CONTEXT, ["base:", "x-foo:bar"])).toEqual(["base:allocation"]);
    expect(names(C.NBD_OPT_SET_META_CONTEXT, ["qemu:", "base:"])).toEqual([]);
    expect(n.selectedContexts).toEqual([]);
    const set = parse(n.handleOption(C.NBD_OPT_SET_META_CONTEXT, metaData("disk", ["qemu:dirty-bitmap:b1", "base:allocation", "nope:x"])).replies);
    const ids = set.filter((r) => r.type === C.NBD_REP_META_CONTEXT).map((r) => r.data.readUInt32BE(0));
    expect(new Set(ids).size).toBe(2);
    expect(n.selectedContexts.map((c) => c.name)).toEqual(["base:allocation", "qemu:dirty-bitmap:b1"]);
    // A failed SET still replaces the selection.
    expect(parse(n.handleOption(C.NBD_OPT_SET_META_CONTEXT, metaData("other", ["base:allocation"])).replies)[0]!.type).toBe(
      C.NBD_REP_ERR_UNKNOWN,
    );
    expect(n.selectedContexts).toEqual([]);
  });

  it("in FORCEDTLS mode refuses everything but STARTTLS and ABORT until TLS, then resets state", () => {
    const n = new Negotiator(exp, { tlsRequired: true });
    expect(parse(n.handleOption(C.NBD_OPT_GO, goData("disk")).replies)[0]!.type).toBe(C.NBD_REP_ERR_TLS_REQD);
    expect(parse(n.handleOption(C.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)).replies)[0]!.type).toBe(C.NBD_REP_ERR_TLS_REQD);
    expect(n.handleOption(C.NBD_OPT_EXPORT_NAME, Buffer.from("disk")).action).toBe("close");
    expect(parse(n.handleOption(C.NBD_OPT_STARTTLS, Buffer.from("x")).replies)[0]!.type).toBe(C.NBD_REP_ERR_INVALID);
    expect(n.handleOption(C.NBD_OPT_STARTTLS, Buffer.alloc(0)).action).toBe("starttls");
    n.tlsEstablished();
    expect(parse(n.handleOption(C.NBD_OPT_STARTTLS, Buffer.alloc(0)).replies)[0]!.type).toBe(C.NBD_REP_ERR_INVALID);
    expect(n.handleOption(C.NBD_OPT_GO, goData("disk")).action).toBe("transmission");
  });

  it("refuses STARTTLS by policy when TLS is not configured", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    expect(parse(n.handleOption(C.NBD_OPT_STARTTLS, Buffer.alloc(0)).replies)[0]!.type).toBe(C.NBD_REP_ERR_POLICY);
  });
});

describe("meta-context queries", () => {
  const ctx = availableContexts({ allocationDepth: false, bitmaps: ["a"] });
  it("list and select by name", () => {
    expect(listContexts(ctx, ["qemu:allocation-depth"])).toEqual([]);
    expect(selectContexts(ctx, ["qemu:dirty-bitmap:a"]).map((c) => c.id)).toEqual([3]);
  });
});

describe("Negotiator messages", () => {
  it("refuses options that take no data with a message naming the option", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    for (const [option, name] of [
      [C.NBD_OPT_LIST, "NBD_OPT_LIST"],
      [C.NBD_OPT_STRUCTURED_REPLY, "NBD_OPT_STRUCTURED_REPLY"],
      [C.NBD_OPT_STARTTLS, "NBD_OPT_STARTTLS"],
    ] as const) {
      const [reply] = parse(n.handleOption(option, Uint8Array.of(1)).replies);
      expect(reply!.type).toBe(C.NBD_REP_ERR_INVALID);
      expect(reply!.data.toString()).toBe(`${name} takes no data`);
    }
  });

  it("refuses malformed GO data with the decoder's message", () => {
    const n = new Negotiator(exp, { tlsRequired: false });
    const [reply] = parse(n.handleOption(C.NBD_OPT_GO, u32(0)).replies);
    expect(reply!.type).toBe(C.NBD_REP_ERR_INVALID);
    expect(reply!.data.toString()).toBe("option length too short");
  });
});
