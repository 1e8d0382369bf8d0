import { describe, expect, it } from "vitest";
import {
  COMPAT_KNOWN_MASK,
  COMPAT_LAZY_REFCOUNTS,
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_KNOWN_MASK,
  HEADER_PROBE_BYTES,
  INCOMPAT_COMPRESSION,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  INCOMPAT_KNOWN_MASK,
  QCOW2_MAGIC,
  Qcow2Error,
  decodeHeader,
  encodeHeader,
  encodedHeaderLength,
  type Qcow2Header,
} from "../src/index";
import { hex, headerBytes, patched, v2Header, v3Header } from "./helpers/fixtures";

function refusal(bytes: Uint8Array): string {
  try {
    decodeHeader(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(Qcow2Error);
    return (e as Qcow2Error).message;
  }
  throw new Error("decodeHeader accepted the bytes");
}

describe("feature bit constants", () => {
  it("incompatible bits are 0..4 and the known mask is exactly their union", () => {
    expect([INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2]).toEqual([
      1n,
      2n,
      4n,
      8n,
      16n,
    ]);
    expect(INCOMPAT_KNOWN_MASK).toBe(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
  });

  it("compatible bit 0 is lazy refcounts; autoclear bits 0 and 1 are bitmaps and raw external data", () => {
    expect(COMPAT_LAZY_REFCOUNTS).toBe(1n);
    expect(COMPAT_KNOWN_MASK).toBe(COMPAT_LAZY_REFCOUNTS);
    expect(AUTOCLEAR_BITMAPS).toBe(1n);
    expect(AUTOCLEAR_DATA_FILE_RAW).toBe(2n);
    expect(AUTOCLEAR_KNOWN_MASK).toBe(AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW);
  });

  it("the magic is QFI\\xfb", () => {
    expect(QCOW2_MAGIC.toString(16)).toBe("514649fb");
  });
});

describe("v2 header (72 bytes)", () => {
  const h = v2Header({
    backingFileOffset: 0x60,
    backingFileSize: 15,
    clusterBits: 12,
    size: 0x123456789a00,
    cryptMethod: 1,
    l1Size: 77,
    l1TableOffset: 0x5000,
    refcountTableOffset: 0x1000,
    refcountTableClusters: 3,
    nbSnapshots: 2,
    snapshotsOffset: 0x9000,
  });

  it("encodes exactly 72 bytes with every field at its offset", () => {
    const bytes = headerBytes(h);
    expect(bytes.byteLength).toBe(72);
    expect(hex(bytes)).toBe(
      "514649fb" +
        "00000002" +
        "0000000000000060" +
        "0000000f" +
        "0000000c" +
        "0000123456789a00" +
        "00000001" +
        "0000004d" +
        "0000000000005000" +
        "0000000000001000" +
        "00000003" +
        "00000002" +
        "0000000000009000",
    );
  });

  it("decodes back with v3 fields at their v2 defaults", () => {
    const d = decodeHeader(headerBytes(h));
    expect(d).toEqual({ ...h, refcountOrder: 4, headerLength: 72, compressionType: 0 });
  });

  it("ignores bytes 72..111 (they belong to the extension area)", () => {
    const bytes = new Uint8Array(HEADER_PROBE_BYTES);
    bytes.set(headerBytes(h));
    bytes.fill(0xff, 72);
    const d = decodeHeader(bytes);
    expect(d.incompatibleFeatures).toBe(0n);
    expect(d.autoclearFeatures).toBe(0n);
    expect(d.refcountOrder).toBe(4);
    expect(d.headerLength).toBe(72);
    expect(d.compressionType).toBe(0);
  });

  it("encodedHeaderLength is 72 for v2 whatever the unknown fields", () => {
    expect(encodedHeaderLength({ version: 2, unknownHeaderFields: new Uint8Array(16) })).toBe(72);
  });
});

describe("v3 header", () => {
  const h = v3Header({
    incompatibleFeatures: INCOMPAT_DIRTY | INCOMPAT_COMPRESSION | (1n << 63n),
    compatibleFeatures: COMPAT_LAZY_REFCOUNTS | (1n << 40n),
    autoclearFeatures: 0x8000000000000002n,
    refcountOrder: 6,
    compressionType: 1,
  });

  it("header_length 112: encodes 112 bytes, compression type at 104, zero padding 105..111", () => {
    const bytes = headerBytes(h);
    expect(bytes.byteLength).toBe(112);
    expect(hex(bytes.subarray(72))).toBe(
      "8000000000000009" + "0000010000000001" + "8000000000000002" + "00000006" + "00000070" + "01" + "00000000000000",
    );
  });

  it("round trips every field, including 64-bit feature words", () => {
    expect(decodeHeader(headerBytes(h))).toEqual(h);
  });

  it("header_length 104: compression_type is absent and reads as zlib whatever byte 104 holds", () => {
    const bytes = patched(headerBytes(h), [100, 4, 104], [104, 1, 1]);
    const d = decodeHeader(bytes);
    expect(d.headerLength).toBe(104);
    expect(d.compressionType).toBe(0);
  });

  it("header_length 105: compression_type is present", () => {
    const d = decodeHeader(patched(headerBytes(h), [100, 4, 105], [104, 1, 1]));
    expect(d.compressionType).toBe(1);
    expect(d.unknownHeaderFields.byteLength).toBe(0);
  });

  it("re-encoding a 104-byte header writes QEMU's 112-byte header", () => {
    const d = decodeHeader(patched(headerBytes(h), [100, 4, 104]));
    const out = new Uint8Array(200).fill(0xee);
    expect(encodeHeader(d, out)).toBe(112);
    expect(new DataView(out.buffer).getUint32(100)).toBe(112);
    expect(out[104]).toBe(0);
    expect(out[112]).toBe(0xee);
  });

  it("header_length > 112: unknown trailing fields are decoded and re-encoded byte for byte", () => {
    const unknown = Uint8Array.from({ length: 24 }, (_, i) => (i * 37 + 5) & 0xff);
    const bytes = new Uint8Array(136);
    bytes.set(headerBytes(h));
    bytes.set(unknown, 112);
    new DataView(bytes.buffer).setUint32(100, 136);
    const d = decodeHeader(bytes);
    expect(d.headerLength).toBe(136);
    expect(Array.from(d.unknownHeaderFields)).toEqual(Array.from(unknown));
    expect(encodedHeaderLength(d)).toBe(136);
    const out = new Uint8Array(136);
    expect(encodeHeader(d, out)).toBe(136);
    expect(hex(out)).toBe(hex(bytes));
  });

  it("the unknown fields are a copy, not a view of the input", () => {
    const bytes = new Uint8Array(120);
    bytes.set(headerBytes(h));
    new DataView(bytes.buffer).setUint32(100, 120);
    bytes[115] = 9;
    const d = decodeHeader(bytes);
    bytes[115] = 0;
    expect(d.unknownHeaderFields[3]).toBe(9);
  });

  it("unknown fields missing from a short input read as zeros", () => {
    const bytes = headerBytes(h); // 112 bytes, header_length claims 128
    new DataView(bytes.buffer).setUint32(100, 128);
    const d = decodeHeader(bytes);
    expect(Array.from(d.unknownHeaderFields)).toEqual(new Array(16).fill(0));
  });

  it("encodeHeader writes its own length into header_length, not the decoded one", () => {
    const d = { ...h, headerLength: 4096 } satisfies Qcow2Header;
    const out = new Uint8Array(112);
    encodeHeader(d, out);
    expect(new DataView(out.buffer).getUint32(100)).toBe(112);
  });

  it("encodeHeader refuses a buffer shorter than the header", () => {
    expect(() => encodeHeader(h, new Uint8Array(111))).toThrow("header buffer too small");
    expect(() => encodeHeader(v2Header(), new Uint8Array(71))).toThrow("header buffer too small");
  });

  it("encodes 64-bit offsets above 2^32 exactly", () => {
    const big = v3Header({ l1TableOffset: 2 ** 45 + 0x30000, size: 2 ** 52, snapshotsOffset: 2 ** 40 });
    const d = decodeHeader(headerBytes(big));
    expect(d.l1TableOffset).toBe(2 ** 45 + 0x30000);
    expect(d.size).toBe(2 ** 52);
    expect(d.snapshotsOffset).toBe(2 ** 40);
  });

  it("decodes from a view with a non-zero byteOffset", () => {
    const backing = new Uint8Array(300);
    backing.set(headerBytes(h), 17);
    expect(decodeHeader(backing.subarray(17, 17 + 112))).toEqual(h);
  });
});

describe("decodeHeader refusals, in QEMU's order", () => {
  const good = headerBytes(v3Header());

  it.each([
    ["wrong magic", patched(good, [0, 4, 0x514649fc]), "Image is not in qcow2 format"],
    ["empty input", new Uint8Array(0), "Image is not in qcow2 format"],
    ["version 0", patched(good, [4, 4, 0]), "Unsupported qcow2 version 0"],
    ["version 1", patched(good, [4, 4, 1]), "Unsupported qcow2 version 1"],
    ["version 4", patched(good, [4, 4, 4]), "Unsupported qcow2 version 4"],
    ["version 2^32-1 (printed unsigned)", patched(good, [4, 4, 0xffffffff]), "Unsupported qcow2 version 4294967295"],
    ["cluster_bits 8", patched(good, [20, 4, 8]), "Unsupported cluster size: 2^8"],
    ["cluster_bits 22", patched(good, [20, 4, 22]), "Unsupported cluster size: 2^22"],
    ["cluster_bits 2^31", patched(good, [20, 4, 0x80000000]), "Unsupported cluster size: 2^2147483648"],
    ["v3 header_length 96", patched(good, [100, 4, 96]), "qcow2 header too short"],
    ["v3 header_length 103", patched(good, [100, 4, 103]), "qcow2 header too short"],
    ["v3 header_length 0", patched(good, [100, 4, 0]), "qcow2 header too short"],
    ["v3 cut at 50 bytes (zeros past the end)", good.slice(0, 50), "qcow2 header too short"],
    ["header_length 0x20000 > cluster", patched(good, [100, 4, 0x20000]), "qcow2 header exceeds cluster size"],
    ["header_length 513 with 512-byte clusters", patched(good, [20, 4, 9], [100, 4, 513]), "qcow2 header exceeds cluster size"],
    ["backing_file_offset > cluster", patched(good, [8, 8, 0x10001]), "Invalid backing file offset"],
    ["backing_file_offset 2^63", patched(good, [8, 8, 1n << 63n]), "Invalid backing file offset"],
  ])("%s", (_name, bytes, message) => {
    expect(refusal(bytes)).toBe(message);
  });

  it("magic is checked before version, version before cluster size, cluster size before header length", () => {
    expect(refusal(patched(good, [0, 4, 0], [4, 4, 9]))).toBe("Image is not in qcow2 format");
    expect(refusal(patched(good, [4, 4, 9], [20, 4, 30]))).toBe("Unsupported qcow2 version 9");
    expect(refusal(patched(good, [20, 4, 30], [100, 4, 1]))).toBe("Unsupported cluster size: 2^30");
    expect(refusal(patched(good, [100, 4, 1], [8, 8, 1n << 40n]))).toBe("qcow2 header too short");
  });

  it("accepts backing_file_offset equal to the cluster size and cluster_bits 9 and 21", () => {
    expect(decodeHeader(patched(good, [8, 8, 0x10000])).backingFileOffset).toBe(0x10000);
    expect(decodeHeader(patched(good, [20, 4, 9], [100, 4, 112])).clusterBits).toBe(9);
    expect(decodeHeader(patched(good, [20, 4, 21])).clusterBits).toBe(21);
  });

  it("refusals carry codes and errnos", () => {
    const cases: [Uint8Array, string, string][] = [
      [patched(good, [0, 4, 0]), "INVALID_IMAGE", "EINVAL"],
      [patched(good, [4, 4, 4]), "UNSUPPORTED_FEATURE", "ENOTSUP"],
      [patched(good, [20, 4, 8]), "UNSUPPORTED_FEATURE", "EINVAL"],
      [patched(good, [100, 4, 8]), "INVALID_IMAGE", "EINVAL"],
    ];
    for (const [bytes, code, errno] of cases) {
      try {
        decodeHeader(bytes);
        throw new Error("accepted");
      } catch (e) {
        expect((e as Qcow2Error).code).toBe(code);
        expect((e as Qcow2Error).errno).toBe(errno);
      }
    }
  });
});
