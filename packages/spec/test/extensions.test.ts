import { describe, expect, it } from "vitest";
import {
  AUTOCLEAR_BITMAPS,
  CRYPT_LUKS,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
  QEMU_FEATURE_TABLE,
  Qcow2Error,
  alignExtension,
  checkExtensions,
  decodeExtensions,
  encodeExtensions,
  encodeFeatureTable,
  readRawExtensions,
  scanExtensionArea,
  type HeaderExtensions,
  type RawExtension,
} from "../src/index";
import { hex, v3Header } from "./helpers/fixtures";

const te = new TextEncoder();

/** Lay records out after `start` in a zeroed area of `size` bytes, each padded to 8, then an end marker. */
function area(size: number, start: number, records: { type: number; data: Uint8Array; length?: number }[]): Uint8Array {
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = start;
  for (const r of records) {
    v.setUint32(at, r.type);
    v.setUint32(at + 4, r.length ?? r.data.byteLength);
    out.set(r.data, at + 8);
    at += 8 + alignExtension(r.data.byteLength);
  }
  return out;
}

function message(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(Qcow2Error);
    return (e as Qcow2Error).message;
  }
  throw new Error("no error");
}

function bitmapsData(nb: number, reserved: number, dirSize: number, dirOffset: number): Uint8Array {
  const d = new Uint8Array(24);
  const v = new DataView(d.buffer);
  v.setUint32(0, nb);
  v.setUint32(4, reserved);
  v.setBigUint64(8, BigInt(dirSize));
  v.setBigUint64(16, BigInt(dirOffset));
  return d;
}

function cryptoData(offset: number, length: number): Uint8Array {
  const d = new Uint8Array(16);
  const v = new DataView(d.buffer);
  v.setBigUint64(0, BigInt(offset));
  v.setBigUint64(8, BigInt(length));
  return d;
}

describe("alignExtension", () => {
  it("rounds up to 8", () => {
    expect([0, 1, 7, 8, 9, 15, 16, 385].map(alignExtension)).toEqual([0, 8, 8, 8, 16, 16, 16, 392]);
  });
});

describe("readRawExtensions", () => {
  it("reads records in order, each padded to 8, up to the end marker", () => {
    const bytes = area(512, 112, [
      { type: 0x11111111, data: te.encode("abc") },
      { type: 0x22222222, data: te.encode("123456789") },
      { type: 0x33333333, data: new Uint8Array(0) },
    ]);
    const raw = readRawExtensions(bytes, 112, 512);
    expect(raw.map((r) => [r.type.toString(16), new TextDecoder().decode(r.data)])).toEqual([
      ["11111111", "abc"],
      ["22222222", "123456789"],
      ["33333333", ""],
    ]);
  });

  it("stops at the end marker and ignores what follows", () => {
    const bytes = area(512, 72, [{ type: 0x1, data: te.encode("x") }]);
    bytes.set([0, 0, 0, 0x99, 0, 0, 0, 1], 200); // after the end marker at 88
    expect(readRawExtensions(bytes, 72, 512)).toHaveLength(1);
  });

  it("an area that ends without a marker ends the list", () => {
    const bytes = area(128, 112, [{ type: 0x7, data: new Uint8Array(8) }]);
    expect(readRawExtensions(bytes, 112, 128)).toHaveLength(1);
  });

  it("returned data is a copy", () => {
    const bytes = area(256, 112, [{ type: 0x7, data: te.encode("keep") }]);
    const [r] = readRawExtensions(bytes, 112, 256);
    bytes.fill(0);
    expect(new TextDecoder().decode(r!.data)).toBe("keep");
  });

  it("an extension whose data overruns the area is 'Header extension too large'", () => {
    const bytes = area(256, 112, [{ type: 0x7, data: new Uint8Array(8), length: 256 - 120 + 1 }]);
    expect(message(() => readRawExtensions(bytes, 112, 256))).toBe("Header extension too large");
    // exactly to the end is fine
    const exact = area(256, 112, [{ type: 0x7, data: new Uint8Array(8), length: 256 - 120 }]);
    expect(readRawExtensions(exact, 112, 256)[0]!.data.byteLength).toBe(136);
  });

  it("an end marker whose length overruns the area is refused too (QEMU checks the length first)", () => {
    const bytes = new Uint8Array(256);
    new DataView(bytes.buffer).setUint32(116, 256 - 120 + 1);
    expect(message(() => readRawExtensions(bytes, 112, 256))).toBe("Header extension too large");
    new DataView(bytes.buffer).setUint32(116, 256 - 120);
    expect(readRawExtensions(bytes, 112, 256)).toEqual([]);
  });

  it("a record header cut by the area end is 'Header extension too large'", () => {
    const bytes = new Uint8Array(256).fill(0x01);
    expect(message(() => readRawExtensions(bytes, 112, 116))).toBe("Header extension too large");
  });

  it("the area end is the smaller of `end` and the buffer", () => {
    const bytes = area(200, 112, [{ type: 0x7, data: new Uint8Array(8), length: 81 }]);
    expect(message(() => readRawExtensions(bytes, 112, 4096))).toBe("Header extension too large");
  });
});

describe("decodeExtensions: known types", () => {
  it("backing format, data file, feature table, bitmaps, crypto and unknown ones", () => {
    const raw: RawExtension[] = [
      { type: EXT_BACKING_FORMAT, data: te.encode("qcow2") },
      { type: 0xdeadbeef, data: Uint8Array.of(1, 2, 3) },
      { type: EXT_DATA_FILE, data: te.encode("/var/q/x.raw") },
      { type: EXT_FEATURE_TABLE, data: encodeFeatureTable(QEMU_FEATURE_TABLE) },
      { type: EXT_BITMAPS, data: bitmapsData(3, 0, 4096, 0x50000) },
      { type: EXT_CRYPTO_HEADER, data: cryptoData(0x20000, 0x3000) },
      { type: 0xcafe, data: new Uint8Array(0) },
    ];
    const ext = decodeExtensions(raw);
    expect(ext.backingFormat).toBe("qcow2");
    expect(ext.dataFile).toBe("/var/q/x.raw");
    expect(ext.featureTable).toEqual(QEMU_FEATURE_TABLE);
    expect(ext.bitmaps).toEqual({ nbBitmaps: 3, reserved: 0, bitmapDirectorySize: 4096, bitmapDirectoryOffset: 0x50000 });
    expect(ext.cryptoHeader).toEqual({ offset: 0x20000, length: 0x3000 });
    expect(ext.unknown.map((u) => [u.type, Array.from(u.data)])).toEqual([
      [0xdeadbeef, [1, 2, 3]],
      [0xcafe, []],
    ]);
  });

  it("names end at the first NUL, as QEMU reads them as C strings", () => {
    const ext = decodeExtensions([
      { type: EXT_BACKING_FORMAT, data: te.encode("raw\0junk") },
      { type: EXT_DATA_FILE, data: te.encode("d.raw\0\0") },
    ]);
    expect(ext.backingFormat).toBe("raw");
    expect(ext.dataFile).toBe("d.raw");
  });

  it("backing format: 15 bytes fit, 16 are refused with QEMU's message", () => {
    expect(decodeExtensions([{ type: EXT_BACKING_FORMAT, data: te.encode("a".repeat(15)) }]).backingFormat).toBe(
      "a".repeat(15),
    );
    expect(message(() => decodeExtensions([{ type: EXT_BACKING_FORMAT, data: te.encode("a".repeat(16)) }]))).toBe(
      "ERROR: ext_backing_format: len=16 too large (>=16)",
    );
    expect(message(() => decodeExtensions([{ type: EXT_BACKING_FORMAT, data: new Uint8Array(300) }]))).toBe(
      "ERROR: ext_backing_format: len=300 too large (>=16)",
    );
  });

  it.each([0, 16, 23, 25, 32])("bitmaps extension of %i bytes: 'bitmaps_ext: Invalid extension length'", (n) => {
    expect(message(() => decodeExtensions([{ type: EXT_BITMAPS, data: new Uint8Array(n) }]))).toBe(
      "bitmaps_ext: Invalid extension length",
    );
  });

  it.each([0, 8, 15, 17, 24])("crypto extension of %i bytes: size message", (n) => {
    expect(message(() => decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: new Uint8Array(n) }]))).toBe(
      `CRYPTO header extension size ${n}, but expected size 16`,
    );
  });

  it("a later extension of a type replaces an earlier one", () => {
    const ext = decodeExtensions([
      { type: EXT_BACKING_FORMAT, data: te.encode("raw") },
      { type: EXT_BACKING_FORMAT, data: te.encode("qcow2") },
    ]);
    expect(ext.backingFormat).toBe("qcow2");
  });
});

describe("decodeExtensions with the header (QEMU's per-extension checks)", () => {
  const withBitmaps = v3Header({ autoclearFeatures: AUTOCLEAR_BITMAPS });
  const bm = (nb: number, reserved: number, size: number, offset: number) =>
    message(() => decodeExtensions([{ type: EXT_BITMAPS, data: bitmapsData(nb, reserved, size, offset) }], withBitmaps));

  it("bitmaps: reserved, count, zero count, alignment, directory size, in QEMU's order", () => {
    expect(bm(1, 1, 0, 0x10000)).toBe("bitmaps_ext: Reserved field is not zero");
    expect(bm(0, 1, 0, 0x10001)).toBe("bitmaps_ext: Reserved field is not zero");
    expect(bm(65536, 0, 0, 0x10000)).toBe(
      "bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535",
    );
    expect(bm(0, 0, 0, 0x10001)).toBe("found bitmaps extension with zero bitmaps");
    expect(bm(1, 0, 2 ** 30, 0x10200)).toBe("bitmaps_ext: invalid bitmap directory offset");
    expect(bm(1, 0, 1024 * 65535 + 1, 0x10000)).toBe(
      "bitmaps_ext: bitmap directory size (67107841) exceeds the maximum supported size (67107840)",
    );
  });

  it("bitmaps: the largest valid values pass", () => {
    const ext = decodeExtensions([{ type: EXT_BITMAPS, data: bitmapsData(65535, 0, 1024 * 65535, 0x20000) }], withBitmaps);
    expect(ext.bitmaps!.nbBitmaps).toBe(65535);
  });

  it("bitmaps without autoclear bit 0 are kept but not checked (QEMU ignores them)", () => {
    const ext = decodeExtensions([{ type: EXT_BITMAPS, data: bitmapsData(0, 7, 0, 3) }], v3Header());
    expect(ext.bitmaps).toEqual({ nbBitmaps: 0, reserved: 7, bitmapDirectorySize: 0, bitmapDirectoryOffset: 3 });
  });

  it("crypto: only with LUKS (checked before the length), offset cluster aligned", () => {
    const noLuks = v3Header();
    const luks = v3Header({ cryptMethod: CRYPT_LUKS });
    const only = "CRYPTO header extension only expected with LUKS encryption method";
    expect(message(() => decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: new Uint8Array(24) }], noLuks))).toBe(only);
    expect(message(() => decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: cryptoData(0x20000, 1) }], noLuks))).toBe(only);
    expect(message(() => decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: new Uint8Array(24) }], luks))).toBe(
      "CRYPTO header extension size 24, but expected size 16",
    );
    expect(message(() => decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: cryptoData(0x20200, 1) }], luks))).toBe(
      "Encryption header offset '131584' is not a multiple of cluster size '65536'",
    );
    expect(decodeExtensions([{ type: EXT_CRYPTO_HEADER, data: cryptoData(0x20000, 0x1000) }], luks).cryptoHeader).toEqual({
      offset: 0x20000,
      length: 0x1000,
    });
  });

  it("checkExtensions makes the same checks on hand-built extensions", () => {
    const ext: HeaderExtensions = { unknown: [], bitmaps: { nbBitmaps: 0, reserved: 0, bitmapDirectorySize: 0, bitmapDirectoryOffset: 0 } };
    expect(message(() => checkExtensions(ext, withBitmaps))).toBe("found bitmaps extension with zero bitmaps");
    expect(() => checkExtensions(ext, v3Header())).not.toThrow();
    const crypto: HeaderExtensions = { unknown: [], cryptoHeader: { offset: 0x10000, length: 1 } };
    expect(message(() => checkExtensions(crypto, v3Header()))).toBe(
      "CRYPTO header extension only expected with LUKS encryption method",
    );
    expect(() => checkExtensions(crypto, v3Header({ cryptMethod: 2 }))).not.toThrow();
  });
});

describe("scanExtensionArea", () => {
  it("stops at the first bad extension and returns what came before it", () => {
    const bytes = area(1024, 112, [
      { type: EXT_FEATURE_TABLE, data: encodeFeatureTable([{ kind: "incompatible", bit: 9, name: "nine" }]) },
      { type: EXT_BACKING_FORMAT, data: te.encode("x".repeat(20)) },
      { type: EXT_DATA_FILE, data: te.encode("never") },
    ]);
    const r = scanExtensionArea(bytes, 112, 1024, v3Header());
    expect(r.error?.message).toBe("ERROR: ext_backing_format: len=20 too large (>=16)");
    expect(r.extensions.featureTable).toEqual([{ kind: "incompatible", bit: 9, name: "nine" }]);
    expect(r.extensions.dataFile).toBeUndefined();
  });

  it("a per-type error in an early extension wins over an overrun later", () => {
    const bytes = area(512, 112, [
      { type: EXT_BITMAPS, data: new Uint8Array(8) },
      { type: 0x77, data: new Uint8Array(8), length: 4096 },
    ]);
    expect(scanExtensionArea(bytes, 112, 512, v3Header()).error?.message).toBe("bitmaps_ext: Invalid extension length");
  });

  it("without errors returns everything and no error", () => {
    const bytes = area(512, 112, [{ type: EXT_DATA_FILE, data: te.encode("d") }]);
    const r = scanExtensionArea(bytes, 112, 512, v3Header());
    expect(r.error).toBeUndefined();
    expect(r.extensions.dataFile).toBe("d");
  });
});

describe("encodeExtensions", () => {
  it("writes QEMU's order: backing format, data file, crypto, feature table, bitmaps, unknown; then the end marker", () => {
    const ext: HeaderExtensions = {
      unknown: [
        { type: 0x99999999, data: Uint8Array.of(9) },
        { type: 0x88888888, data: Uint8Array.of(8, 8) },
      ],
      bitmaps: { nbBitmaps: 1, reserved: 0, bitmapDirectorySize: 24, bitmapDirectoryOffset: 0x40000 },
      featureTable: [...QEMU_FEATURE_TABLE],
      cryptoHeader: { offset: 0x30000, length: 0x2000 },
      dataFile: "data.raw",
      backingFormat: "raw",
    };
    const bytes = encodeExtensions(ext);
    const types = readRawExtensions(bytes, 0, bytes.byteLength).map((r) => r.type);
    expect(types).toEqual([EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_CRYPTO_HEADER, EXT_FEATURE_TABLE, EXT_BITMAPS, 0x99999999, 0x88888888]);
    expect(hex(bytes.subarray(bytes.byteLength - 8))).toBe("0000000000000000");
    expect(bytes.byteLength).toBe(8 + 8 + (8 + 8) + (8 + 16) + (8 + 384) + (8 + 24) + (8 + 8) + (8 + 8) + 8);
  });

  it("round trips through readRawExtensions + decodeExtensions, unknown data byte for byte and in order", () => {
    const unknown = [
      { type: 0x01020304, data: Uint8Array.from({ length: 13 }, (_, i) => i + 1) },
      { type: 0x0a0b0c0d, data: Uint8Array.of(0xff) },
      { type: 0x11, data: Uint8Array.from({ length: 16 }, (_, i) => 255 - i) },
    ];
    const ext: HeaderExtensions = { unknown, backingFormat: "qcow2", dataFile: "a b/c" };
    const bytes = encodeExtensions(ext);
    expect(decodeExtensions(readRawExtensions(bytes, 0, bytes.byteLength))).toEqual(ext);
  });

  it("pads each extension with zero bytes to a multiple of 8", () => {
    const bytes = encodeExtensions({ unknown: [], backingFormat: "raw" });
    expect(hex(bytes)).toBe("e2792aca00000003" + "7261770000000000" + "0000000000000000");
  });

  it("an empty set is just the end marker", () => {
    expect(hex(encodeExtensions({ unknown: [] }))).toBe("0000000000000000");
  });

  it("bitmaps and crypto payloads are 24 and 16 bytes, big endian", () => {
    const bytes = encodeExtensions({
      unknown: [],
      cryptoHeader: { offset: 2 ** 40, length: 0x1234 },
      bitmaps: { nbBitmaps: 2, reserved: 0, bitmapDirectorySize: 48, bitmapDirectoryOffset: 2 ** 33 },
    });
    expect(hex(bytes.subarray(0, 24))).toBe("0537be7700000010" + "0000010000000000" + "0000000000001234");
    expect(hex(bytes.subarray(24, 56))).toBe(
      "2385287500000018" + "0000000200000000" + "0000000000000030" + "0000000200000000",
    );
  });
});
