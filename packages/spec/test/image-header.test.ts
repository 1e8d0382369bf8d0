import { describe, expect, it } from "vitest";
import {
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  QEMU_FEATURE_TABLE,
  Qcow2Error,
  decodeBackingFileName,
  decodeImageHeader,
  encodeImageHeader,
  extensionAreaEnd,
  qemuWritesFeatureTable,
  readRawExtensions,
  type ImageHeader,
} from "../src/index";
import { image, patched, v2Header, v3Header } from "./helpers/fixtures";

function refusal(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(Qcow2Error);
    return { code: (e as Qcow2Error).code, message: (e as Qcow2Error).message };
  }
  throw new Error("accepted");
}

describe("encodeImageHeader / decodeImageHeader", () => {
  it("returns exactly one cluster", () => {
    expect(encodeImageHeader(image()).byteLength).toBe(65536);
    expect(encodeImageHeader(image({ clusterBits: 9 })).byteLength).toBe(512);
    expect(encodeImageHeader(image({ clusterBits: 21 })).byteLength).toBe(2 * 1024 * 1024);
  });

  it("v3 with clusters > 4 KiB gets QEMU's feature table right after the 112-byte header", () => {
    const bytes = encodeImageHeader(image());
    const raw = readRawExtensions(bytes, 112, 65536);
    expect(raw.map((r) => r.type)).toEqual([EXT_FEATURE_TABLE]);
    expect(decodeImageHeader(bytes).extensions.featureTable).toEqual(QEMU_FEATURE_TABLE);
    // header 112 + ext header 8 + 384 + end marker 8; all zero after
    expect(bytes.subarray(112 + 8 + 384).every((b) => b === 0)).toBe(true);
  });

  it("qemuWritesFeatureTable: v3 only, clusters above 4 KiB only", () => {
    expect(qemuWritesFeatureTable({ version: 3, clusterBits: 13 })).toBe(true);
    expect(qemuWritesFeatureTable({ version: 3, clusterBits: 12 })).toBe(false);
    expect(qemuWritesFeatureTable({ version: 2, clusterBits: 16 })).toBe(false);
    const small = encodeImageHeader(image({ clusterBits: 12 }));
    expect(decodeImageHeader(small).extensions.featureTable).toBeUndefined();
  });

  it("standardFeatureTable: false keeps the given table (v3) and drops it on v2", () => {
    const custom = [{ kind: "incompatible" as const, bit: 9, name: "mine" }];
    const v3 = encodeImageHeader(image({}, { extensions: { unknown: [], featureTable: custom } }), {
      standardFeatureTable: false,
    });
    expect(decodeImageHeader(v3).extensions.featureTable).toEqual(custom);
    const v2: ImageHeader = { header: v2Header(), extensions: { unknown: [], featureTable: custom } };
    expect(decodeImageHeader(encodeImageHeader(v2, { standardFeatureTable: false })).extensions.featureTable).toBeUndefined();
  });

  it("the backing file name follows the end marker; offset and size are set from it", () => {
    const img = image({}, { backingFile: "base.qcow2", extensions: { unknown: [], backingFormat: "qcow2" } });
    const bytes = encodeImageHeader(img);
    const d = decodeImageHeader(bytes);
    // 112 + (8+8 backing format) + (8+384 feature table) + 8 end marker
    expect(d.header.backingFileOffset).toBe(112 + 16 + 392 + 8);
    expect(d.header.backingFileSize).toBe(10);
    expect(d.backingFile).toBe("base.qcow2");
    expect(d.extensions.backingFormat).toBe("qcow2");
  });

  it("v2 layout matches QEMU's: extensions at 72, name after the end marker", () => {
    const img: ImageHeader = {
      header: v2Header(),
      backingFile: "/tmp/back.raw00",
      extensions: { unknown: [], backingFormat: "raw" },
    };
    const bytes = encodeImageHeader(img);
    const d = decodeImageHeader(bytes);
    expect(d.header.backingFileOffset).toBe(0x60);
    expect(d.header.backingFileSize).toBe(15);
    expect(new DataView(bytes.buffer).getUint32(72)).toBe(EXT_BACKING_FORMAT);
    expect(d).toEqual({ ...img, header: { ...img.header, backingFileOffset: 0x60, backingFileSize: 15 } });
  });

  it("ignores stale backing_file_offset/size of the input header", () => {
    const bytes = encodeImageHeader(image({ backingFileOffset: 0x800, backingFileSize: 33 }));
    const d = decodeImageHeader(bytes);
    expect(d.header.backingFileOffset).toBe(0);
    expect(d.header.backingFileSize).toBe(0);
    expect(d.backingFile).toBeUndefined();
  });

  it("round trips header, extensions (unknown ones in order) and backing file", () => {
    const img = image(
      { unknownHeaderFields: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), headerLength: 120 },
      {
        backingFile: "b\u00e4se.img",
        extensions: {
          unknown: [
            { type: 0x12345678, data: Uint8Array.of(1) },
            { type: 0x01, data: Uint8Array.of(2, 2, 2, 2, 2, 2, 2, 2, 2) },
          ],
          backingFormat: "raw",
          dataFile: "x.raw",
        },
      },
    );
    const d = decodeImageHeader(encodeImageHeader(img));
    expect(d.extensions.unknown).toEqual(img.extensions.unknown);
    expect(d.header.unknownHeaderFields).toEqual(img.header.unknownHeaderFields);
    expect(d.header.headerLength).toBe(120);
    expect(d.backingFile).toBe("b\u00e4se.img");
    expect(d.extensions.dataFile).toBe("x.raw");
    expect(encodeImageHeader(d)).toEqual(encodeImageHeader(img));
  });

  it("fits exactly in a 512-byte cluster, and refuses one byte more with NO_SPACE", () => {
    // v3, 512-byte clusters: no feature table; 112 + 8 (end marker) leaves 392 bytes for the name.
    const fits = image({ clusterBits: 9 }, { backingFile: "n".repeat(392) });
    const d = decodeImageHeader(encodeImageHeader(fits));
    expect(d.backingFile).toBe("n".repeat(392));
    expect(d.header.backingFileOffset).toBe(120);
    const over = refusal(() => encodeImageHeader(image({ clusterBits: 9 }, { backingFile: "n".repeat(393) })));
    expect(over.code).toBe("NO_SPACE");
  });

  it("refuses extensions that do not fit, with NO_SPACE", () => {
    const big = image({ clusterBits: 10 }, { extensions: { unknown: [{ type: 5, data: new Uint8Array(1024) }] } });
    expect(refusal(() => encodeImageHeader(big)).code).toBe("NO_SPACE");
  });

  it("refuses a backing file name over 1023 bytes", () => {
    expect(refusal(() => encodeImageHeader(image({}, { backingFile: "x".repeat(1024) }))).message).toBe(
      "Backing file name too long",
    );
    expect(decodeImageHeader(encodeImageHeader(image({}, { backingFile: "x".repeat(1023) }))).backingFile).toHaveLength(1023);
  });

  it("an empty backing file name means none", () => {
    const d = decodeImageHeader(encodeImageHeader(image({}, { backingFile: "" })));
    expect(d.header.backingFileOffset).toBe(0);
    expect(d.backingFile).toBeUndefined();
  });

  it("decodes a short first cluster as if zero padded", () => {
    const bytes = encodeImageHeader(image({}, { backingFile: "b" }));
    const d = decodeImageHeader(bytes.subarray(0, 600));
    expect(d.backingFile).toBe("b");
    expect(d.extensions.featureTable).toEqual(QEMU_FEATURE_TABLE);
    // an extension running past the short buffer but within the cluster is fine (zeros)
    const ext = encodeImageHeader(image({}, { extensions: { unknown: [{ type: 9, data: new Uint8Array(4000) }] } }));
    expect(decodeImageHeader(ext.subarray(0, 1000)).extensions.unknown[0]!.data.byteLength).toBe(4000);
  });
});

describe("backing file name decoding", () => {
  const cluster = (h: Parameters<typeof v3Header>[0], name: string) => {
    const out = new Uint8Array(65536);
    out.set(new TextEncoder().encode(name), h!.backingFileOffset ?? 0);
    return { out, header: v3Header(h) };
  };

  it("extensionAreaEnd is the backing file offset, else the cluster end", () => {
    expect(extensionAreaEnd({ backingFileOffset: 0, clusterBits: 16 })).toBe(65536);
    expect(extensionAreaEnd({ backingFileOffset: 0x210, clusterBits: 16 })).toBe(0x210);
  });

  it("reads the name at its offset; it ends at the first NUL", () => {
    const { out, header } = cluster({ backingFileOffset: 0x200, backingFileSize: 8 }, "back\0xyz");
    expect(decodeBackingFileName(out, header)).toBe("back");
  });

  it("a name of 16 zero bytes at the very end of the cluster is no backing file (QEMU accepts)", () => {
    const { out, header } = cluster({ backingFileOffset: 0xfff0, backingFileSize: 16 }, "");
    expect(decodeBackingFileName(out, header)).toBeUndefined();
  });

  it.each([
    ["1024 bytes", 0x200, 1024],
    ["past the cluster end", 0xfff0, 17],
    ["offset at the cluster end, size 1", 0x10000, 1],
  ])("refuses a name %s with 'Backing file name too long'", (_n, offset, size) => {
    const { out, header } = cluster({ backingFileOffset: offset, backingFileSize: size }, "");
    expect(refusal(() => decodeBackingFileName(out, header)).message).toBe("Backing file name too long");
  });

  it("accepts 1023 bytes and offset at the cluster end with size 0", () => {
    const { out, header } = cluster({ backingFileOffset: 0x200, backingFileSize: 1023 }, "z".repeat(1023));
    expect(decodeBackingFileName(out, header)).toHaveLength(1023);
    const end = cluster({ backingFileOffset: 0x10000, backingFileSize: 0 }, "");
    expect(decodeBackingFileName(end.out, end.header)).toBeUndefined();
  });
});

describe("decodeImageHeader refusals", () => {
  const good = encodeImageHeader(image({}, { backingFile: "back.raw", extensions: { unknown: [], backingFormat: "raw" } }));

  it.each([
    ["extension overrunning the area", patched(good, [116, 4, 0x10000]), "Header extension too large"],
    ["backing format of 16 bytes", patched(good, [116, 4, 16]), "ERROR: ext_backing_format: len=16 too large (>=16)"],
    ["backing name of 1024 bytes", patched(good, [16, 4, 1024]), "Backing file name too long"],
    ["header errors first", patched(good, [4, 4, 4], [116, 4, 0x10000]), "Unsupported qcow2 version 4"],
  ])("%s", (_n, bytes, msg) => {
    expect(refusal(() => decodeImageHeader(bytes)).message).toBe(msg);
  });

  it("extension errors come before the backing file name check", () => {
    expect(refusal(() => decodeImageHeader(patched(good, [116, 4, 16], [16, 4, 1024]))).message).toBe(
      "ERROR: ext_backing_format: len=16 too large (>=16)",
    );
  });

  it("the extension scan stops at backing_file_offset", () => {
    // Pull the backing name offset back into the feature table: the table now overruns the area.
    const cut = patched(good, [8, 8, 0x100]);
    expect(refusal(() => decodeImageHeader(cut)).message).toBe("Header extension too large");
  });
});
