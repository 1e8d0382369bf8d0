import { describe, expect, it } from "vitest";
import { Qcow2Error, decodeHeader, encodeHeaderFields, type HeaderFieldName } from "../src/index";
import { headerBytes, v2Header, v3Header } from "./helpers/fixtures";

describe("encodeHeaderFields (in-place header updates by field name)", () => {
  const h = v3Header({
    size: 2 ** 40 + 512,
    l1Size: 7,
    l1TableOffset: 0x1_2345_0000,
    refcountTableOffset: 0x2_0000_0000,
    refcountTableClusters: 3,
    nbSnapshots: 2,
    incompatibleFeatures: 0x11n,
  });

  const cases: Array<[HeaderFieldName[], number, number]> = [
    [["size"], 24, 8],
    [["l1Size", "l1TableOffset"], 36, 12],
    [["refcountTableOffset", "refcountTableClusters"], 48, 12],
    [["nbSnapshots", "snapshotsOffset"], 60, 12],
    [["incompatibleFeatures"], 72, 8],
    [["refcountTableClusters", "refcountTableOffset", "l1TableOffset"], 40, 20],
  ];
  for (const [names, offset, length] of cases) {
    it(`${names.join("+")} is bytes ${offset}..${offset + length} of the full encoding`, () => {
      const got = encodeHeaderFields(h, names);
      expect(got.offset).toBe(offset);
      expect(got.bytes).toEqual(headerBytes(h).slice(offset, offset + length));
    });
  }

  it("patched into an old header, the fields decode to the new values and nothing else changes", () => {
    const before = headerBytes(h);
    const changed = { ...h, l1Size: 99, l1TableOffset: 0x7_0000 };
    const { offset, bytes } = encodeHeaderFields(changed, ["l1Size", "l1TableOffset"]);
    before.set(bytes, offset);
    expect(decodeHeader(before)).toEqual(changed);
  });

  it("refuses fields that are not adjacent, and v3 fields for a v2 header", () => {
    expect(() => encodeHeaderFields(h, ["size", "l1Size"])).toThrow(Qcow2Error);
    expect(() => encodeHeaderFields(h, [])).toThrow(Qcow2Error);
    expect(() => encodeHeaderFields(v2Header(), ["incompatibleFeatures"])).toThrow(/version 2/);
    expect(encodeHeaderFields(v2Header(), ["snapshotsOffset"]).offset).toBe(64);
  });
});
