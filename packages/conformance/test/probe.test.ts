import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { dumpHeader, getL2Entry, getRefcount, readHeader, setRefcount } from "../src/qcow2-probe";
import { scratchDir } from "./helpers";

/** The probe reads QEMU-made images; QEMU's own check confirms what it changes. */
function qemuImage(dir: string, name: string, options: string, write: string): string {
  const path = join(dir, name);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, path, "1M"]);
  execFileSync("qemu-io", ["-c", write, path]);
  return path;
}

const check = (path: string): string => spawnSync("qemu-img", ["check", path], { encoding: "utf8" }).stderr;

describe("qcow2 probe", () => {
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    it(`reads and writes ${bits}-bit refcounts where QEMU keeps them`, () => {
      const dir = scratchDir(`rc${bits}`);
      const img = qemuImage(dir, "t.qcow2", `refcount_bits=${bits}`, "write -P 0x11 0 192k");
      for (let cluster = 0; cluster < 8; cluster++) {
        expect(getRefcount(img, cluster * 65536)).toBe(1n);
      }
      setRefcount(img, 0x60000, 0n);
      expect(getRefcount(img, 0x60000)).toBe(0n);
      expect(getRefcount(img, 0x50000)).toBe(1n);
      expect(getRefcount(img, 0x70000)).toBe(1n);
      expect(check(img)).toContain("ERROR cluster 6 refcount=0 reference=1");
    });
  }

  it("finds L2 entries, extended ones included", () => {
    const dir = scratchDir("l2");
    const img = qemuImage(dir, "e.qcow2", "extended_l2=on", "write -P 0x11 64k 2k");
    expect(getL2Entry(img, 64 * 1024)).toEqual({ entry: 0x8000000000050000n, bitmap: 1n });
    expect(getL2Entry(img, 0)).toEqual({ entry: 0n, bitmap: 0n });
    expect(() => getL2Entry(img, 900 * 1024 * 1024)).toThrow(/outside the L1 table/);
  });

  it("dumps the header fields QEMU wrote", () => {
    const dir = scratchDir("hdr");
    const img = qemuImage(dir, "h.qcow2", "compat=1.1,lazy_refcounts=on", "write 0 512");
    const h = readHeader(img);
    expect(h).toMatchObject({ version: 3, clusterBits: 16, headerLength: 112, compatibleFeatures: 1n, refcountOrder: 4 });
    expect(dumpHeader(img)).toContain("compatible_features       [0]\n");
    expect(dumpHeader(img)).toContain("  autoclear bit 1: raw external data\n");
  });
});
