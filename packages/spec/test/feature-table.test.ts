import { describe, expect, it } from "vitest";
import {
  FEATURE_TABLE_ENTRY_BYTES,
  QEMU_FEATURE_TABLE,
  Qcow2Error,
  decodeFeatureTable,
  encodeFeatureTable,
  unsupportedFeaturesMessage,
  type FeatureName,
} from "../src/index";
import { hex } from "./helpers/fixtures";

describe("feature name table", () => {
  it("QEMU 7.2's table: 8 entries, 384 bytes", () => {
    expect(QEMU_FEATURE_TABLE).toHaveLength(8);
    expect(encodeFeatureTable(QEMU_FEATURE_TABLE).byteLength).toBe(384);
    expect(FEATURE_TABLE_ENTRY_BYTES).toBe(48);
  });

  it("entry layout: type byte, bit byte, 46-byte zero-padded name", () => {
    const bytes = encodeFeatureTable([{ kind: "autoclear", bit: 1, name: "raw external data" }]);
    expect(bytes.byteLength).toBe(48);
    expect(hex(bytes.subarray(0, 2))).toBe("0201");
    expect(new TextDecoder().decode(bytes.subarray(2, 19))).toBe("raw external data");
    expect(Array.from(bytes.subarray(19))).toEqual(new Array(29).fill(0));
  });

  it("kinds map to types 0, 1, 2", () => {
    const bytes = encodeFeatureTable([
      { kind: "incompatible", bit: 7, name: "a" },
      { kind: "compatible", bit: 8, name: "b" },
      { kind: "autoclear", bit: 63, name: "c" },
    ]);
    expect([bytes[0], bytes[1], bytes[48], bytes[49], bytes[96], bytes[97]]).toEqual([0, 7, 1, 8, 2, 63]);
  });

  it("round trips, including a name of exactly 46 bytes (no NUL)", () => {
    const table: FeatureName[] = [...QEMU_FEATURE_TABLE, { kind: "compatible", bit: 5, name: "n".repeat(46) }];
    expect(decodeFeatureTable(encodeFeatureTable(table))).toEqual(table);
  });

  it("refuses names over 46 bytes, empty names and bits outside a byte", () => {
    expect(() => encodeFeatureTable([{ kind: "compatible", bit: 0, name: "n".repeat(47) }])).toThrow(Qcow2Error);
    expect(() => encodeFeatureTable([{ kind: "compatible", bit: 0, name: "" }])).toThrow("feature name is empty");
    expect(() => encodeFeatureTable([{ kind: "compatible", bit: 256, name: "x" }])).toThrow("feature bit out of range");
    expect(() => encodeFeatureTable([{ kind: "compatible", bit: -1, name: "x" }])).toThrow("feature bit out of range");
  });

  it("decode skips entries of unknown type but goes on", () => {
    const bytes = encodeFeatureTable([
      { kind: "incompatible", bit: 1, name: "one" },
      { kind: "incompatible", bit: 2, name: "two" },
    ]);
    bytes[0] = 3;
    expect(decodeFeatureTable(bytes)).toEqual([{ kind: "incompatible", bit: 2, name: "two" }]);
  });

  it("decode ends at the first entry with an empty name", () => {
    const bytes = encodeFeatureTable([
      { kind: "incompatible", bit: 1, name: "one" },
      { kind: "incompatible", bit: 2, name: "two" },
      { kind: "incompatible", bit: 3, name: "three" },
    ]);
    bytes.fill(0, 48 + 2, 96);
    expect(decodeFeatureTable(bytes)).toEqual([{ kind: "incompatible", bit: 1, name: "one" }]);
  });

  it("decode reads a trailing partial entry as if zero padded, and ignores one without a name byte", () => {
    const full = encodeFeatureTable([
      { kind: "incompatible", bit: 1, name: "one" },
      { kind: "incompatible", bit: 9, name: "nine" },
    ]);
    expect(decodeFeatureTable(full.subarray(0, 48 + 4))).toEqual([
      { kind: "incompatible", bit: 1, name: "one" },
      { kind: "incompatible", bit: 9, name: "ni" },
    ]);
    expect(decodeFeatureTable(full.subarray(0, 48 + 2))).toEqual([{ kind: "incompatible", bit: 1, name: "one" }]);
    expect(decodeFeatureTable(new Uint8Array(0))).toEqual([]);
  });
});

describe("unsupportedFeaturesMessage", () => {
  const table: FeatureName[] = [
    { kind: "compatible", bit: 5, name: "compat five" },
    { kind: "incompatible", bit: 5, name: "five" },
    { kind: "incompatible", bit: 63, name: "top" },
    { kind: "autoclear", bit: 6, name: "auto six" },
  ];

  it("without a table: the mask in lower-case hex", () => {
    expect(unsupportedFeaturesMessage(1n << 5n, [])).toBe("Unsupported qcow2 feature(s): Unknown incompatible feature: 20");
    expect(unsupportedFeaturesMessage(0xffffffffffffffe0n, [])).toBe(
      "Unsupported qcow2 feature(s): Unknown incompatible feature: ffffffffffffffe0",
    );
  });

  it("named bits from incompatible entries only, then the rest", () => {
    expect(unsupportedFeaturesMessage((1n << 5n) | (1n << 6n), table)).toBe(
      "Unsupported qcow2 feature(s): five, Unknown incompatible feature: 40",
    );
    expect(unsupportedFeaturesMessage(1n << 63n, table)).toBe("Unsupported qcow2 feature(s): top");
    expect(unsupportedFeaturesMessage((1n << 63n) | (1n << 5n), table)).toBe("Unsupported qcow2 feature(s): five, top");
  });

  it("names follow the table's order and each bit is named once", () => {
    const dup: FeatureName[] = [
      { kind: "incompatible", bit: 9, name: "nine" },
      { kind: "incompatible", bit: 7, name: "seven" },
      { kind: "incompatible", bit: 9, name: "nine again" },
    ];
    expect(unsupportedFeaturesMessage((1n << 7n) | (1n << 9n), dup)).toBe("Unsupported qcow2 feature(s): nine, seven");
  });

  it("an empty name ends the table", () => {
    const t: FeatureName[] = [
      { kind: "incompatible", bit: 8, name: "" },
      { kind: "incompatible", bit: 5, name: "five" },
    ];
    expect(unsupportedFeaturesMessage(1n << 5n, t)).toBe("Unsupported qcow2 feature(s): Unknown incompatible feature: 20");
  });

  it("a bit number of 64 or more names bit (number mod 64), as QEMU on x86-64 does", () => {
    expect(unsupportedFeaturesMessage(1n << 5n, [{ kind: "incompatible", bit: 69, name: "wrapped" }])).toBe(
      "Unsupported qcow2 feature(s): wrapped",
    );
  });
});
