import { describe, expect, it } from "vitest";
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  Qcow2Error,
  encodeImageHeader,
  openImageHeader,
  validateImageHeader,
  validateTable,
  type HeaderValidationOptions,
  type ImageHeader,
  type Qcow2Header,
} from "../src/index";
import { image, patched } from "./helpers/fixtures";

const RO: HeaderValidationOptions = { readWrite: false };
const RW: HeaderValidationOptions = { readWrite: true };

function refusal(f: () => unknown): Qcow2Error {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(Qcow2Error);
    return e as Qcow2Error;
  }
  throw new Error("accepted");
}

const msg = (img: ImageHeader, opts: HeaderValidationOptions = RO) => refusal(() => validateImageHeader(img, opts)).message;

describe("validateTable (qcow2_validate_table)", () => {
  it("too many entries is '<name> too large' with EFBIG", () => {
    const e = refusal(() => validateTable(0x10000, 4194305, 8, 32 * 1024 * 1024, 65536, "Active L1 table"));
    expect(e.message).toBe("Active L1 table too large");
    expect(e.errno).toBe("EFBIG");
    expect(() => validateTable(0x10000, 4194304, 8, 32 * 1024 * 1024, 65536, "Active L1 table")).not.toThrow();
  });

  it("unaligned or unaddressable offsets are '<name> offset invalid'", () => {
    expect(refusal(() => validateTable(0x10200, 1, 8, 1 << 20, 65536, "T")).message).toBe("T offset invalid");
    expect(refusal(() => validateTable(2 ** 53, 1, 8, 1 << 20, 65536, "T")).message).toBe("T offset invalid");
    expect(() => validateTable(0, 0, 8, 1 << 20, 65536, "T")).not.toThrow();
    expect(() => validateTable(2 ** 52, 10, 8, 1 << 20, 65536, "T")).not.toThrow();
  });
});

describe("validateImageHeader: every refusal with QEMU's message", () => {
  it.each<[string, Partial<Qcow2Header>, string]>([
    ["unknown compression type", { compressionType: 5, incompatibleFeatures: INCOMPAT_COMPRESSION }, "qcow2: unknown compression type: 5"],
    ["compression bit with zlib", { incompatibleFeatures: INCOMPAT_COMPRESSION }, "qcow2: Compression type incompatible feature bit must not be set"],
    ["zstd without the bit", { compressionType: 1 }, "qcow2: Compression type incompatible feature bit must be set"],
    ["unknown incompatible bit 5", { incompatibleFeatures: 1n << 5n }, "Unsupported qcow2 feature(s): Unknown incompatible feature: 20"],
    ["unknown incompatible bits 5, 63", { incompatibleFeatures: (1n << 63n) | (1n << 5n) }, "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000020"],
    ["extended L2 with 8 KiB clusters", { clusterBits: 13, incompatibleFeatures: INCOMPAT_EXTL2, l1TableOffset: 0x6000, refcountTableOffset: 0x2000 }, "Unsupported subcluster size: 256"],
    ["extended L2 with 512-byte clusters", { clusterBits: 9, incompatibleFeatures: INCOMPAT_EXTL2, l1TableOffset: 0x600, refcountTableOffset: 0x200, l1Size: 64 }, "Unsupported subcluster size: 16"],
    ["refcount_order 7", { refcountOrder: 7 }, "Reference count entry width too large; may not exceed 64 bits"],
    ["refcount_order 2^32-1", { refcountOrder: 0xffffffff }, "Reference count entry width too large; may not exceed 64 bits"],
    ["crypt_method 3", { cryptMethod: 3 }, "Unsupported encryption method 3"],
    ["crypt_method 2^32-1 (printed signed)", { cryptMethod: 0xffffffff }, "Unsupported encryption method -1"],
    ["no refcount table", { refcountTableClusters: 0 }, "Image does not contain a reference count table"],
    ["refcount table too large", { refcountTableClusters: 129 }, "Reference count table too large"],
    ["refcount table unaligned", { refcountTableOffset: 0x10200 }, "Reference count table offset invalid"],
    ["too many snapshots", { nbSnapshots: 65537 }, "Snapshot table too large"],
    ["snapshot table unaligned", { snapshotsOffset: 0x200 }, "Snapshot table offset invalid"],
    ["L1 table too large", { l1Size: 4194305 }, "Active L1 table too large"],
    ["L1 table unaligned", { l1TableOffset: 0x30200 }, "Active L1 table offset invalid"],
    ["size needing more than INT_MAX L1 entries", { size: 2 ** 62 }, "Image is too big"],
    ["L1 table too small", { l1Size: 0 }, "L1 table is too small"],
    ["L1 table one entry short", { size: 512 * 1024 * 1024 + 1, l1Size: 1 }, "L1 table is too small"],
    ["size 2^55 (QEMU: L1 too small, not too big)", { size: 2 ** 55 }, "L1 table is too small"],
    ["size >= 2^63 that wraps QEMU's L1 count", { size: 2 ** 64 - 2 ** 17 }, "Could not refresh total sector count: File too large"],
  ])("%s", (_name, fields, message) => {
    expect(msg(image(fields))).toBe(message);
  });

  it("the snapshot table offset is checked even with no snapshots (as QEMU does)", () => {
    expect(msg(image({ nbSnapshots: 0, snapshotsOffset: 0x10 }))).toBe("Snapshot table offset invalid");
  });

  it("names unknown incompatible bits from the image's feature table", () => {
    const img = image(
      { incompatibleFeatures: (1n << 5n) | (1n << 6n) },
      { extensions: { unknown: [], featureTable: [{ kind: "incompatible", bit: 5, name: "future thing" }] } },
    );
    expect(msg(img)).toBe("Unsupported qcow2 feature(s): future thing, Unknown incompatible feature: 40");
  });

  it("the corrupt bit refuses read-write opens only, and not in check mode", () => {
    const img = image({ incompatibleFeatures: INCOMPAT_CORRUPT });
    const e = refusal(() => validateImageHeader(img, RW));
    expect(e.message).toBe("qcow2: Image is corrupt; cannot be opened read/write");
    expect(e.code).toBe("CORRUPT");
    expect(e.errno).toBe("EACCES");
    expect(() => validateImageHeader(img, RO)).not.toThrow();
    expect(() => validateImageHeader(img, { readWrite: true, checkMode: true })).not.toThrow();
  });

  it("check mode allows a missing refcount table and skips the snapshot table checks", () => {
    expect(() => validateImageHeader(image({ refcountTableClusters: 0 }), { readWrite: true, checkMode: true })).not.toThrow();
    expect(() => validateImageHeader(image({ nbSnapshots: 70000, snapshotsOffset: 3 }), { readWrite: false, checkMode: true })).not.toThrow();
  });

  it("extended L2 with 16 KiB clusters (512-byte subclusters) is fine", () => {
    expect(() =>
      validateImageHeader(image({ clusterBits: 14, incompatibleFeatures: INCOMPAT_EXTL2, l1TableOffset: 0xc000, refcountTableOffset: 0x4000 }), RO),
    ).not.toThrow();
  });

  it("a data-file-raw bit without a data file is refused unless opened without I/O", () => {
    const img = image({ autoclearFeatures: AUTOCLEAR_DATA_FILE_RAW });
    expect(msg(img)).toBe("data-file-raw requires a data file");
    expect(() => validateImageHeader(img, { readWrite: false, noIo: true })).not.toThrow();
    expect(() =>
      validateImageHeader(
        image({ autoclearFeatures: AUTOCLEAR_DATA_FILE_RAW, incompatibleFeatures: INCOMPAT_DATA_FILE }, { extensions: { unknown: [], dataFile: "d" } }),
        RO,
      ),
    ).not.toThrow();
  });

  it("a data-file image needs a stored name or a data file from the caller", () => {
    const img = image({ incompatibleFeatures: INCOMPAT_DATA_FILE });
    expect(msg(img)).toBe("'data-file' is required for this image");
    expect(() => validateImageHeader(img, { readWrite: false, dataFileGiven: true })).not.toThrow();
    expect(() => validateImageHeader(img, { readWrite: false, noIo: true })).not.toThrow();
    expect(msg(image(), { readWrite: false, dataFileGiven: true })).toBe(
      "'data-file' can only be set for images with an external data file",
    );
  });

  it("LUKS needs the crypto header extension (except without I/O)", () => {
    const img = image({ cryptMethod: 2 });
    expect(msg(img)).toBe("Missing CRYPTO header for crypt method 2");
    expect(() => validateImageHeader(img, { readWrite: false, noIo: true })).not.toThrow();
    const withExt = image({ cryptMethod: 2 }, { extensions: { unknown: [], cryptoHeader: { offset: 0x50000, length: 0x1000 } } });
    expect(() => validateImageHeader(withExt, RO)).not.toThrow();
  });

  it("re-checks hand-built extensions: crypto pointer without LUKS, bad bitmaps", () => {
    expect(msg(image({}, { extensions: { unknown: [], cryptoHeader: { offset: 0x50000, length: 1 } } }))).toBe(
      "CRYPTO header extension only expected with LUKS encryption method",
    );
    const bm = { nbBitmaps: 1, reserved: 0, bitmapDirectorySize: 100, bitmapDirectoryOffset: 0x10100 };
    expect(msg(image({ autoclearFeatures: AUTOCLEAR_BITMAPS }, { extensions: { unknown: [], bitmaps: bm } }))).toBe(
      "bitmaps_ext: invalid bitmap directory offset",
    );
  });

  it("sizes QEMU accepts but that are 2^53 or more are refused as too big here", () => {
    const h = { clusterBits: 21, size: 2 ** 53 + 2 ** 21, l1Size: 2 ** 15, l1TableOffset: 0x600000, refcountTableOffset: 0x200000 };
    const e = refusal(() => validateImageHeader(image(h), RO));
    expect(e.message).toBe("Image is too big");
    expect(e.errno).toBe("EFBIG");
    expect(() => validateImageHeader(image({ ...h, size: 2 ** 53 - 2 ** 21 }), RO)).not.toThrow();
  });

  it("bitmaps without autoclear bit 0: QEMU's warning and notice, ignoreBitmaps", () => {
    const bm = { nbBitmaps: 0, reserved: 1, bitmapDirectorySize: 0, bitmapDirectoryOffset: 1 };
    const r = validateImageHeader(image({}, { extensions: { unknown: [], bitmaps: bm } }), RO);
    expect(r.ignoreBitmaps).toBe(true);
    expect(r.warnings).toEqual([
      "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent",
    ]);
    expect(r.notices).toEqual(["Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix."]);
    const v2 = validateImageHeader(
      { header: { ...image().header, version: 2, headerLength: 72 }, extensions: { unknown: [], bitmaps: bm } },
      RO,
    );
    expect(v2.warnings[0]).toMatch(/^This qcow2 v2 image contains bitmaps, but they may have been modified/);
  });

  it("a clean image gives no warnings", () => {
    expect(validateImageHeader(image(), RW)).toEqual({ warnings: [], notices: [], ignoreBitmaps: false });
  });
});

describe("QEMU's order of checks (multiple faults)", () => {
  it.each<[string, Partial<Qcow2Header>, string]>([
    ["compression before unknown bits", { incompatibleFeatures: (1n << 5n) | INCOMPAT_COMPRESSION }, "qcow2: Compression type incompatible feature bit must not be set"],
    ["unknown compression before unknown bits", { incompatibleFeatures: 1n << 5n, compressionType: 9 }, "qcow2: unknown compression type: 9"],
    ["unknown bits before corrupt", { incompatibleFeatures: (1n << 5n) | INCOMPAT_CORRUPT }, "Unsupported qcow2 feature(s): Unknown incompatible feature: 20"],
    ["corrupt before subcluster size", { incompatibleFeatures: INCOMPAT_CORRUPT | INCOMPAT_EXTL2, clusterBits: 13, l1TableOffset: 0x6000, refcountTableOffset: 0x2000 }, "qcow2: Image is corrupt; cannot be opened read/write"],
    ["subcluster size before refcount order", { incompatibleFeatures: INCOMPAT_EXTL2, clusterBits: 13, refcountOrder: 7, l1TableOffset: 0x6000, refcountTableOffset: 0x2000 }, "Unsupported subcluster size: 256"],
    ["refcount order before crypt method", { refcountOrder: 7, cryptMethod: 3 }, "Reference count entry width too large; may not exceed 64 bits"],
    ["refcount table before crypt method", { cryptMethod: 3, refcountTableClusters: 0 }, "Image does not contain a reference count table"],
    ["L1 table before crypt method", { cryptMethod: 3, l1Size: 0 }, "L1 table is too small"],
    ["image size before crypt method", { cryptMethod: 3, size: 2 ** 62 }, "Image is too big"],
    ["no refcount table before its offset", { refcountTableClusters: 0, refcountTableOffset: 0x10200 }, "Image does not contain a reference count table"],
    ["refcount table before snapshots", { refcountTableOffset: 0x10200, snapshotsOffset: 0x200 }, "Reference count table offset invalid"],
    ["snapshots before L1", { snapshotsOffset: 0x200, nbSnapshots: 1, l1Size: 0 }, "Snapshot table offset invalid"],
    ["L1 offset before L1 size", { l1TableOffset: 0x200, l1Size: 0 }, "Active L1 table offset invalid"],
  ])("%s", (_n, fields, message) => {
    expect(msg(image(fields), RW)).toBe(message);
    expect(refusal(() => openImageHeader(encodeImageHeader(image(fields)), RW)).message).toBe(message);
  });

  const withBacking = encodeImageHeader(image({}, { backingFile: "back.raw", extensions: { unknown: [], backingFormat: "raw" } }));
  // backing format ext at 112: length field at 116; header fields as usual
  const open = (bytes: Uint8Array, opts: HeaderValidationOptions = RO) => refusal(() => openImageHeader(bytes, opts)).message;

  it("the encryption method comes before extension errors", () => {
    expect(open(patched(withBacking, [116, 4, 0x10000], [32, 4, 3]))).toBe("Unsupported encryption method 3");
  });

  it("header-field checks come before extension errors", () => {
    expect(open(patched(withBacking, [116, 4, 0x10000], [36, 4, 0]))).toBe("L1 table is too small");
    expect(open(patched(withBacking, [116, 4, 16], [96, 4, 7]))).toBe(
      "Reference count entry width too large; may not exceed 64 bits",
    );
  });

  it("unknown incompatible bits win over a broken extension area", () => {
    expect(open(patched(withBacking, [116, 4, 0x10000], [72, 8, 1n << 5n]))).toBe(
      "Unsupported qcow2 feature(s): Unknown incompatible feature: 20",
    );
  });

  it("unknown bits are named from the feature table read before a bad extension", () => {
    const img = image(
      { incompatibleFeatures: 1n << 9n },
      {
        extensions: {
          unknown: [],
          featureTable: [{ kind: "incompatible", bit: 9, name: "bit nine" }],
          bitmaps: { nbBitmaps: 1, reserved: 0, bitmapDirectorySize: 8, bitmapDirectoryOffset: 0 },
        },
      },
    );
    const bytes = encodeImageHeader(img, { standardFeatureTable: false });
    // break the bitmaps extension (after the table) and it still names the bit
    const tableEnd = 112 + 8 + 48;
    expect(open(patched(bytes, [tableEnd + 4, 4, 16]))).toBe("Unsupported qcow2 feature(s): bit nine");
  });

  it("extension errors come before data-file-raw, which comes before the backing name", () => {
    const bytes = patched(withBacking, [88, 8, AUTOCLEAR_DATA_FILE_RAW], [16, 4, 1024]);
    expect(open(bytes)).toBe("data-file-raw requires a data file");
    expect(open(bytes, { readWrite: false, noIo: true })).toBe("Backing file name too long");
    expect(open(patched(bytes, [116, 4, 16]))).toBe("ERROR: ext_backing_format: len=16 too large (>=16)");
  });

  it("the size limit of the block layer comes last", () => {
    const huge = patched(withBacking, [24, 8, 0xfffffffffffe0000n], [16, 4, 1024]);
    expect(open(huge)).toBe("Backing file name too long");
    expect(open(patched(withBacking, [24, 8, 0xfffffffffffe0000n]))).toBe("Could not refresh total sector count: File too large");
  });

  it("openImageHeader returns the decoded image and the warnings", () => {
    const r = openImageHeader(withBacking, RW);
    expect(r.image.backingFile).toBe("back.raw");
    expect(r.image.extensions.backingFormat).toBe("raw");
    expect(r.warnings).toEqual([]);
    expect(r.ignoreBitmaps).toBe(false);
  });
});
