/**
 * Both directions of the codec meet: what one side encodes, the other decodes to the same values; malformed
 * bytes give a typed error (Qcow2Error, IO_ERROR/EIO), never another exception; random bytes never make a
 * decoder throw anything else or hand back lengths beyond its input.
 */
import { isQcow2Error } from "@qcowkit/spec";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import * as C from "../src/constants";
import {
  ByteQueue,
  OFFSET_HOLE_LENGTH,
  checkChunkLength,
  decodeBlockStatusChunk,
  decodeChunkHeader,
  decodeClientFlags,
  decodeErrorChunk,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfo,
  decodeInfoRequest,
  decodeMetaContext,
  decodeMetaContextRequest,
  decodeOffsetHole,
  decodeOldstyleExport,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeSimpleReply,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeErrorChunk,
  encodeExportName,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeInfoRequest,
  encodeMetaContext,
  encodeMetaContextRequest,
  encodeNoneChunk,
  encodeOption,
  encodeOptionReply,
  encodeSimpleReply,
  errnoOfNbdError,
  nbdErrnoOf,
  optionLabel,
  optionRefusal,
  writeOffsetHole,
  writeRequestHeader,
  type ChunkHeader,
  type NbdRequest,
} from "../src/index";
import { fault, u32 } from "./helpers";

const cookie = { cookieHi: 0x01020304, cookieLo: 0xfffffffe };

describe("handshake round trips", () => {
  it("greeting: newstyle, oldstyle, and bad magics with QEMU's messages", () => {
    expect(decodeGreeting(encodeGreeting())).toBe("newstyle");
    const old = Buffer.concat([Buffer.from("NBDMAGIC"), Buffer.from("0000420281861253", "hex")]);
    expect(decodeGreeting(old)).toBe("oldstyle");
    expect(fault(() => decodeGreeting(Buffer.alloc(16)))).toBe("Bad initial magic received: 0x0");
    expect(fault(() => decodeGreeting(Buffer.concat([Buffer.from("NBDMAGIC"), Buffer.from("0123456789abcdef", "hex")])))).toBe(
      "Bad server magic received: 0x123456789abcdef",
    );
  });

  it("client flags and options", () => {
    for (const flags of [
      { fixedNewstyle: true, noZeroes: true },
      { fixedNewstyle: true, noZeroes: false },
      { fixedNewstyle: false, noZeroes: false },
    ]) {
      expect(decodeClientFlags(encodeClientFlags(flags))).toEqual(flags);
    }
    const data = Uint8Array.of(9, 8, 7);
    const option = encodeOption(C.NBD_OPT_GO, data);
    expect(decodeOptionHeader(option)).toEqual({ option: C.NBD_OPT_GO, length: 3 });
    expect([...option.subarray(C.OPTION_HEADER_LENGTH)]).toEqual([9, 8, 7]);
    const reply = encodeOptionReply(C.NBD_OPT_GO, C.NBD_REP_ERR_UNKNOWN, data);
    expect(decodeOptionReplyHeader(reply)).toEqual({ option: C.NBD_OPT_GO, replyType: C.NBD_REP_ERR_UNKNOWN, length: 3 });
    reply[3] = reply[3]! ^ 1;
    expect(fault(() => decodeOptionReplyHeader(reply))).toBe("Unexpected option reply magic");
  });

  it("INFO/GO and meta-context requests, as the client sends them and the server parses them", () => {
    const info = { exportName: "disk \u00e9", infoTypes: [C.NBD_INFO_BLOCK_SIZE, C.NBD_INFO_NAME] };
    expect(decodeInfoRequest(encodeInfoRequest(info))).toEqual(info);
    const meta = { exportName: "", queries: [C.BASE_ALLOCATION, "qemu:dirty-bitmap:b0"] };
    expect(decodeMetaContextRequest(encodeMetaContextRequest(meta))).toEqual(meta);
    expect(decodeMetaContext(encodeMetaContext(7, C.QEMU_ALLOCATION_DEPTH))).toEqual({ id: 7, name: C.QEMU_ALLOCATION_DEPTH });
    expect(fault(() => decodeMetaContext(u32(7)))).toBe("meta context reply of 4 bytes is too short");
    expect(fault(() => encodeExportName("x".repeat(4097)))).toBe("export name too long to send (4097 bytes)");
  });

  it("NBD_REP_INFO payloads and export replies", () => {
    const size = 2 ** 40 + 512;
    expect(decodeInfo(encodeInfoExport(size, 0x1234))).toEqual({ kind: "export", size, transmissionFlags: 0x1234 });
    expect(decodeInfo(encodeInfoBlockSize(512, 4096, 1 << 25))).toEqual({
      kind: "block-size",
      minimum: 512,
      preferred: 4096,
      maximumPayload: 1 << 25,
    });
    expect(decodeInfo(encodeInfoName("n\u0001x"))).toEqual({ kind: "name", text: "n x" });
    expect(decodeInfo(encodeInfoDescription("d"))).toEqual({ kind: "description", text: "d" });
    expect(decodeInfo(Uint8Array.of(0, 99))).toEqual({ kind: "other", infoType: 99 });
    expect(fault(() => decodeInfo(Uint8Array.of(0)))).toBe("info reply of 1 bytes is too short");
    expect(fault(() => decodeInfo(encodeInfoExport(1, 1).subarray(0, 11)))).toBe("remaining export info len 9 is unexpected size");
    expect(decodeExportNameReply(encodeExportNameReply(size, 3, true))).toEqual({ size, transmissionFlags: 3 });
    expect(decodeOldstyleExport(Buffer.concat([Buffer.from(encodeExportNameReply(size, 0, true).subarray(0, 8)), u32(0xabcd0005)]))).toEqual({
      size,
      transmissionFlags: 5,
    });
    // 2^53 and more cannot be held exactly: -1, which the client refuses.
    expect(decodeExportNameReply(Buffer.alloc(10, 0xff)).size).toBe(-1);
  });
});

describe("transmission round trips", () => {
  it("request headers", () => {
    const req: NbdRequest = { flags: C.NBD_CMD_FLAG_FUA, type: C.NBD_CMD_WRITE, ...cookie, offset: 2 ** 50 + 4096, length: 65536 };
    const b = new Uint8Array(C.REQUEST_HEADER_LENGTH + 4);
    writeRequestHeader(b, 4, req);
    expect(decodeRequestHeader(b, 4)).toEqual(req);
  });

  it("simple replies and structured chunks", () => {
    expect(decodeSimpleReply(encodeSimpleReply(28, cookie))).toEqual({ errno: 28, ...cookie });
    expect(decodeChunkHeader(encodeNoneChunk(cookie))).toEqual({ flags: 1, type: C.NBD_REPLY_TYPE_NONE, ...cookie, length: 0, done: true });

    const error = encodeErrorChunk(cookie, C.NBD_ENOSPC, "no room \u00e9");
    const eh = decodeChunkHeader(error);
    expect(eh).toMatchObject({ type: C.NBD_REPLY_TYPE_ERROR, done: true });
    checkChunkLength(eh);
    expect(decodeErrorChunk(eh.type, error.subarray(C.STRUCTURED_HEADER_LENGTH))).toEqual({ errno: C.NBD_ENOSPC, message: "no room \u00e9" });

    const runs = [
      { length: 4096, flags: C.NBD_STATE_HOLE | C.NBD_STATE_ZERO },
      { length: 65536, flags: 0 },
    ];
    const status = encodeBlockStatusChunk(cookie, 3, runs, false);
    const sh = decodeChunkHeader(status);
    expect(sh).toMatchObject({ type: C.NBD_REPLY_TYPE_BLOCK_STATUS, done: false, length: 20 });
    checkChunkLength(sh);
    const payload = status.subarray(C.STRUCTURED_HEADER_LENGTH);
    expect(decodeBlockStatusChunk(payload)).toEqual({ contextId: 3, runs });
    // Descriptors beyond what was asked for are clipped.
    expect(decodeBlockStatusChunk(payload, 5000).runs).toEqual([runs[0], { length: 904, flags: 0 }]);

    const hole = new Uint8Array(OFFSET_HOLE_LENGTH);
    writeOffsetHole(hole, 0, cookie, 2 ** 33, 512, true);
    const hh = decodeChunkHeader(hole);
    checkChunkLength(hh);
    expect(decodeOffsetHole(hole.subarray(C.STRUCTURED_HEADER_LENGTH))).toEqual({ offset: 2 ** 33, length: 512 });
  });

  it("chunk lengths a server may not send are refused before any payload is read", () => {
    const h = (type: number, length: number, done = true): ChunkHeader => ({ flags: done ? 1 : 0, type, ...cookie, length, done });
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_NONE, 4)))).toBe("NONE chunk with a payload of 4 bytes");
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_NONE, 0, false)))).toBe("NONE chunk without the DONE flag");
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_OFFSET_DATA, 8)))).toMatch(/OFFSET_DATA/);
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_OFFSET_HOLE, 13)))).toMatch(/OFFSET_HOLE/);
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_BLOCK_STATUS, 13)))).toMatch(/BLOCK_STATUS/);
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * (C.NBD_MAX_STATUS_DESCRIPTORS + 1))))).toMatch(/BLOCK_STATUS/);
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_ERROR, 0xffffffff)))).toMatch(/Error chunk/);
    expect(fault(() => checkChunkLength(h(C.NBD_REPLY_TYPE_ERROR_OFFSET, 13)))).toMatch(/Error chunk/);
    expect(fault(() => decodeErrorChunk(C.NBD_REPLY_TYPE_ERROR, Uint8Array.of(0, 0, 0, 0, 0, 0)))).toBe("Error chunk with error value 0");
    expect(fault(() => decodeErrorChunk(C.NBD_REPLY_TYPE_ERROR, Uint8Array.of(0, 0, 0, 5, 0, 9)))).toBe("Error chunk message longer than the chunk");
    expect(fault(() => decodeBlockStatusChunk(Buffer.concat([u32(1), u32(0), u32(0)])))).toBe("BLOCK_STATUS descriptor of 0 bytes");
    expect(fault(() => decodeOffsetHole(Buffer.alloc(12)))).toBe("OFFSET_HOLE chunk of 0 bytes");
  });
});

describe("error mapping both ways", () => {
  it("errno names survive a trip through NBD error values", () => {
    for (const errno of ["EPERM", "EIO", "ENOSPC", "ENOTSUP", "EINVAL"] as const) {
      expect(errnoOfNbdError(nbdErrnoOf(Object.assign(new Error("x"), { code: errno })))).toBe(errno);
    }
  });

  it("option refusals read as QEMU's, with the server's text on the hint line", () => {
    const e = optionRefusal(C.NBD_OPT_GO, C.NBD_REP_ERR_TLS_REQD, "use\nTLS");
    expect(e).toMatchObject({ message: "TLS negotiation required before option 7 (go)", errno: "EPERM", optionRefused: true });
    expect(e.hint).toBe("Did you forget a valid tls-creds?\nserver reported: use TLS");
    expect(optionLabel(C.NBD_OPT_LIST_META_CONTEXT)).toBe("9 (list meta context)");
    expect(optionLabel(99)).toBe("99 (<unknown>)");
  });
});

describe("ByteQueue", () => {
  it("peeks a 32-bit value across chunk boundaries without consuming it", () => {
    const q = new ByteQueue();
    q.push(Uint8Array.of(0x67));
    q.push(Uint8Array.of(0x44, 0x66));
    q.push(Uint8Array.of(0x98, 1));
    expect(q.peekU32()).toBe(C.NBD_SIMPLE_REPLY_MAGIC);
    expect(q.length).toBe(5);
    expect([...q.take(5)]).toEqual([0x67, 0x44, 0x66, 0x98, 1]);
  });

  it("a waiting reader is woken by enough bytes, and fails when the stream ends first", async () => {
    const q = new ByteQueue();
    const waiting = q.need(3);
    q.push(Uint8Array.of(1, 2));
    q.push(Uint8Array.of(3));
    await waiting;
    expect(q.length).toBe(3);
    const starved = q.need(10);
    q.fail(new Error("gone"));
    await expect(starved).rejects.toThrow("gone");
    await expect(q.need(10)).rejects.toThrow("gone");
  });
});

describe("hostile bytes", () => {
  const decoders: [string, (b: Uint8Array) => unknown][] = [
    ["greeting", (b) => decodeGreeting(b)],
    ["client flags", (b) => decodeClientFlags(b)],
    ["option header", (b) => decodeOptionHeader(b)],
    ["option reply header", (b) => decodeOptionReplyHeader(b)],
    ["info", (b) => decodeInfo(b)],
    ["info request", (b) => decodeInfoRequest(b)],
    ["meta-context request", (b) => decodeMetaContextRequest(b)],
    ["meta context", (b) => decodeMetaContext(b)],
    ["request header", (b) => decodeRequestHeader(b)],
    ["error chunk", (b) => decodeErrorChunk(C.NBD_REPLY_TYPE_ERROR_OFFSET, b)],
    ["block status chunk", (b) => decodeBlockStatusChunk(b, 1 << 20)],
  ];

  it("random input either decodes or throws a Qcow2Error, and decoded strings stay within the input", () => {
    const random = seededRandom(18);
    for (const [name, decode] of decoders) {
      let refused = 0;
      for (let i = 0; i < 400; i++) {
        const length = 28 + Math.floor(random() * 64);
        const b = new Uint8Array(length);
        for (let j = 0; j < length; j++) b[j] = Math.floor(random() * 256);
        // Small length fields now and then, so some inputs get past the first checks.
        if (i % 2 === 0) b.set([0, 0, 0, Math.floor(random() * 8)], 0);
        try {
          const out = decode(b);
          expect(JSON.stringify(out).length, name).toBeLessThan(16 * length + 200);
        } catch (e) {
          expect(isQcow2Error(e), `${name}: ${String(e)}`).toBe(true);
          refused++;
        }
      }
      // Every decoder that checks something refused some of the noise.
      if (!["info", "meta context", "block status chunk"].includes(name)) expect(refused, name).toBeGreaterThan(0);
    }
  });
});
