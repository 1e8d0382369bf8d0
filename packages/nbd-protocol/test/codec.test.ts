import { describe, expect, it } from "vitest";
import * as C from "../src/constants";
import {
  ByteQueue,
  checkRequest,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeNbdString,
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeNoneChunk,
  encodeOptionReply,
  encodeServerEntry,
  encodeSimpleReply,
  readU16,
  readU32,
  readU64,
  writeOffsetDataPrefix,
  writeOffsetHole,
  writeU64,
  type NbdRequest,
} from "../src/index";

import { fault, u16, u32 } from "./helpers";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("byte helpers", () => {
  it("reads and writes big-endian fields, refusing 64-bit values beyond 2^53", () => {
    const b = new Uint8Array(8);
    writeU64(b, 0, 2 ** 53 - 1);
    expect(hex(b)).toBe("001fffffffffffff");
    expect(readU64(b, 0)).toBe(2 ** 53 - 1);
    b[1] = 0x20;
    expect(readU64(b, 0)).toBe(-1);
    expect(readU32(Uint8Array.from([0xff, 0xff, 0xff, 0xfe]), 0)).toBe(0xfffffffe);
    expect(readU16(Uint8Array.from([0x12, 0x34]), 0)).toBe(0x1234);
  });

  it("accepts only NUL-free valid UTF-8 as NBD strings", () => {
    expect(decodeNbdString(Buffer.from("exp\u00e9"))).toBe("exp\u00e9");
    expect(decodeNbdString(Uint8Array.from([0x61, 0, 0x62]))).toBeNull();
    expect(decodeNbdString(Uint8Array.from([0xc3, 0x28]))).toBeNull();
  });
});

describe("handshake codec", () => {
  it("greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES", () => {
    expect(Buffer.from(encodeGreeting()).toString("latin1", 0, 16)).toBe("NBDMAGICIHAVEOPT");
    expect(hex(encodeGreeting().subarray(16))).toBe("0003");
  });

  it("decodes client flags and rejects unknown bits", () => {
    expect(decodeClientFlags(u32(3))).toEqual({ fixedNewstyle: true, noZeroes: true });
    expect(decodeClientFlags(u32(0))).toEqual({ fixedNewstyle: false, noZeroes: false });
    expect(fault(() => decodeClientFlags(u32(4)))).toMatch(/unknown client flags/);
  });

  it("decodes option headers and rejects a bad magic", () => {
    const h = Buffer.concat([Buffer.from("IHAVEOPT"), u32(7), u32(1234)]);
    expect(decodeOptionHeader(h)).toEqual({ option: 7, length: 1234 });
    h[0] = 0x58;
    expect(fault(() => decodeOptionHeader(h))).toMatch(/magic/);
  });

  it("encodes option replies with the reply magic", () => {
    const r = encodeOptionReply(C.NBD_OPT_GO, C.NBD_REP_ERR_UNKNOWN, Buffer.from("x"));
    expect(hex(r)).toBe("0003e889045565a9" + "00000007" + "80000006" + "00000001" + "78");
  });

  it("encodes export-name replies with and without the 124 zero bytes", () => {
    expect(encodeExportNameReply(65536, 0x0d, true)).toHaveLength(10);
    const full = encodeExportNameReply(65536, 0x0d, false);
    expect(full).toHaveLength(134);
    expect(hex(full.subarray(0, 10))).toBe("0000000000010000000d");
    expect(full.subarray(10).every((x) => x === 0)).toBe(true);
  });

  it("encodes INFO payloads", () => {
    expect(hex(encodeInfoExport(2 ** 40, 0x1234))).toBe("0000" + "0000010000000000" + "1234");
    expect(hex(encodeInfoBlockSize(1, 4096, 1 << 25))).toBe("0003" + "00000001" + "00001000" + "02000000");
    expect(hex(encodeServerEntry("ab", "d"))).toBe("00000002" + "6162" + "64");
  });

  it("parses INFO/GO requests and reports malformed ones", () => {
    const name = Buffer.from("exp");
    const ok = Buffer.concat([u32(3), name, u16(2), u16(1), u16(3)]);
    expect(decodeInfoRequest(ok)).toEqual({ exportName: "exp", infoTypes: [1, 3] });
    expect(fault(() => decodeInfoRequest(Buffer.concat([u32(3), name, u16(2), u16(1)])))).toMatch(/count/);
    expect(fault(() => decodeInfoRequest(Buffer.concat([u32(99), name, u16(0)])))).toMatch(/exceeds/);
    expect(fault(() => decodeInfoRequest(u32(0)))).toMatch(/too short/);
  });

  it("parses meta-context requests and reports malformed ones", () => {
    const q = Buffer.from("base:allocation");
    const ok = Buffer.concat([u32(0), u32(2), u32(q.length), q, u32(5), Buffer.from("qemu:")]);
    expect(decodeMetaContextRequest(ok)).toEqual({ exportName: "", queries: ["base:allocation", "qemu:"] });
    expect(fault(() => decodeMetaContextRequest(Buffer.concat([u32(0), u32(1), u32(50), q])))).toMatch(/exceeds/);
    expect(fault(() => decodeMetaContextRequest(Buffer.concat([u32(0), u32(0xffffffff)])))).toMatch(/count/);
    expect(fault(() => decodeMetaContextRequest(Buffer.concat([u32(0), u32(0), Buffer.from("zz")])))).toMatch(/trailing/);
  });
});

describe("request codec and checks", () => {
  const header = (type: number, flags: number, offset: bigint, length: number) => {
    const b = Buffer.alloc(28);
    b.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
    b.writeUInt16BE(flags, 4);
    b.writeUInt16BE(type, 6);
    b.writeBigUInt64BE(0x0102030405060708n, 8);
    b.writeBigUInt64BE(offset, 16);
    b.writeUInt32BE(length, 24);
    return b;
  };
  const limits = { exportSize: 1 << 20, readOnly: false, structuredReplies: true, contextCount: 1, maximumPayload: 1 << 25 };
  const req = (type: number, offset: number, length: number, flags = 0): NbdRequest => ({
    type, flags, offset, length, cookieHi: 0, cookieLo: 0,
  });

  it("decodes every field of a request header", () => {
    expect(decodeRequestHeader(header(C.NBD_CMD_WRITE, 1, 4096n, 512))).toEqual({
      flags: 1, type: 1, cookieHi: 0x01020304, cookieLo: 0x05060708, offset: 4096, length: 512,
    });
    expect(decodeRequestHeader(header(0, 0, 2n ** 60n, 1))!.offset).toBe(-1);
    const bad = header(0, 0, 0n, 0);
    bad[3] = 0;
    expect(fault(() => decodeRequestHeader(bad))).toMatch(/magic/);
  });

  it("accepts in-range requests", () => {
    expect(checkRequest(req(C.NBD_CMD_READ, 0, 1 << 20), limits)).toBeNull();
    expect(checkRequest(req(C.NBD_CMD_WRITE_ZEROES, 0, 4096, C.NBD_CMD_FLAG_FAST_ZERO | C.NBD_CMD_FLAG_NO_HOLE), limits)).toBeNull();
    expect(checkRequest(req(C.NBD_CMD_BLOCK_STATUS, 512, 4096, C.NBD_CMD_FLAG_REQ_ONE), limits)).toBeNull();
    expect(checkRequest(req(C.NBD_CMD_FLUSH, 0, 0, C.NBD_CMD_FLAG_FUA), limits)).toBeNull();
    expect(checkRequest(req(C.NBD_CMD_WRITE, 4096, 0), limits)).toBeNull();
  });

  it("maps each fault to the NBD error the spec asks for", () => {
    const errno = (r: NbdRequest, l = limits) => checkRequest(r, l)?.errno;
    expect(errno(req(99, 0, 0))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_READ, 0, 512, C.NBD_CMD_FLAG_REQ_ONE))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_READ, 0, 512, C.NBD_CMD_FLAG_DF), { ...limits, structuredReplies: false })).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_READ, 0, 512, 0x80))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_WRITE, 0, 512), { ...limits, readOnly: true })).toBe(C.NBD_EPERM);
    expect(errno(req(C.NBD_CMD_TRIM, 0, 512), { ...limits, readOnly: true })).toBe(C.NBD_EPERM);
    expect(errno(req(C.NBD_CMD_WRITE, (1 << 20) - 511, 512))).toBe(C.NBD_ENOSPC);
    expect(errno(req(C.NBD_CMD_WRITE_ZEROES, 1 << 20, 1))).toBe(C.NBD_ENOSPC);
    expect(errno(req(C.NBD_CMD_READ, (1 << 20) - 1, 2))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_READ, -1, 1))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_READ, 0, (1 << 25) + 1), { ...limits, exportSize: 2 ** 40 })).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_FLUSH, 1, 0))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_BLOCK_STATUS, 0, 0))).toBe(C.NBD_EINVAL);
    expect(errno(req(C.NBD_CMD_BLOCK_STATUS, 0, 512), { ...limits, contextCount: 0 })).toBe(C.NBD_EINVAL);
    // TRIM and WRITE_ZEROES carry no payload, so lengths above the payload limit are fine.
    expect(errno(req(C.NBD_CMD_TRIM, 0, 1 << 20))).toBeUndefined();
  });
});

describe("reply codec", () => {
  const cookie = { cookieHi: 0xaabbccdd, cookieLo: 0x11223344 };

  it("encodes simple replies", () => {
    expect(hex(encodeSimpleReply(22, cookie))).toBe("67446698" + "00000016" + "aabbccdd11223344");
  });

  it("encodes structured NONE, ERROR, OFFSET_DATA and OFFSET_HOLE chunks", () => {
    expect(hex(encodeNoneChunk(cookie))).toBe("668e33ef" + "0001" + "0000" + "aabbccdd11223344" + "00000000");
    expect(hex(encodeErrorChunk(cookie, 5, "io"))).toBe(
      "668e33ef" + "0001" + "8001" + "aabbccdd11223344" + "00000008" + "00000005" + "0002" + "696f",
    );
    const d = new Uint8Array(28);
    writeOffsetDataPrefix(d, 0, cookie, 4096, 512, false);
    expect(hex(d)).toBe("668e33ef" + "0000" + "0001" + "aabbccdd11223344" + "00000208" + "0000000000001000");
    const h = new Uint8Array(32);
    writeOffsetHole(h, 0, cookie, 0, 65536, true);
    expect(hex(h)).toBe("668e33ef" + "0001" + "0002" + "aabbccdd11223344" + "0000000c" + "0000000000000000" + "00010000");
  });

  it("encodes block status chunks", () => {
    const b = encodeBlockStatusChunk(cookie, 3, [{ length: 512, flags: 3 }, { length: 1024, flags: 0 }], true);
    expect(hex(b)).toBe(
      "668e33ef" + "0001" + "0005" + "aabbccdd11223344" + "00000014" + "00000003" + "0000020000000003" + "0000040000000000",
    );
  });
});

describe("ByteQueue", () => {
  it("returns views within one chunk and copies across chunks", () => {
    const q = new ByteQueue();
    const a = Uint8Array.from([1, 2, 3, 4]);
    q.push(a);
    q.push(Uint8Array.from([5, 6]));
    const first = q.take(2);
    expect(first.buffer).toBe(a.buffer);
    expect([...q.take(3)]).toEqual([3, 4, 5]);
    expect(q.length).toBe(1);
    expect(q.skip(10)).toBe(1);
    expect(q.length).toBe(0);
    expect(() => q.take(1)).toThrow(RangeError);
  });

  it("drains the rest as chunks in order", () => {
    const q = new ByteQueue();
    q.push(Uint8Array.from([1, 2, 3]));
    q.push(Uint8Array.from([4]));
    q.take(1);
    expect(q.drain().map((c) => [...c])).toEqual([[2, 3], [4]]);
    expect(q.length).toBe(0);
  });

});
