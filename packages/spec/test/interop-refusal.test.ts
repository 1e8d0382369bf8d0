/// <reference types="node" />
/**
 * Differential refusal test against QEMU 7.2: each case damages a QEMU-made image, opens it with
 * `qemu-img info` (no I/O), `qemu-io -r` (read-only) and `qemu-io` (read-write), and checks that our
 * decode + validate of cluster 0 refuses with the very message QEMU prints after its "could not open"
 * prefix, or accepts when QEMU accepts.
 */
import { copyFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO_HEADER,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
  Qcow2Error,
  decodeImageHeader,
  openImageHeader,
  readRawExtensions,
  validateImageHeader,
  type HeaderValidationOptions,
} from "../src/index";
import { makeTempDir, qemuOpenError, readCluster0, removeTempDir, run, runOk, writeBytes, type QemuOpenMode } from "./helpers/qemu";

type Patch = [offset: number, width: 1 | 2 | 4 | 8, value: number | bigint] | [offset: number, bytes: Uint8Array];
type Base = "v3" | "backing" | "bitmaps" | "v2" | "datafile";

interface Case {
  name: string;
  base: Base;
  patches: Patch[];
  /** Modes to compare (default all three). */
  modes?: QemuOpenMode[];
  /** Several faults at once: only the QEMU-ordered openImageHeader is expected to agree. */
  multi?: boolean;
}

const te = new TextEncoder();
const OPTS: Record<QemuOpenMode, HeaderValidationOptions> = {
  info: { readWrite: false, noIo: true },
  ro: { readWrite: false },
  rw: { readWrite: true },
};

// Layouts of the base images (checked below).
const FT = 0x70; // v3: feature table extension, entries from 0x78
const FT_ENTRY = (i: number) => 0x78 + 48 * i;
const END_V3 = 0x1f8; // end marker after the feature table
const BK_FMT = 0x70; // backing: backing format extension, feature table at 0x80, end at 0x208, name at 0x210
const BK_NAME = 0x210;
const BM_EXT = 0x1f8; // bitmaps: extension after the feature table, data at 0x200

/** A crypto, data-file or other record written over the feature table of the v3 base (then an end marker). */
function replaceFeatureTable(type: number, data: Uint8Array, length = data.byteLength): Patch[] {
  const rec = new Uint8Array(8 + ((data.byteLength + 7) & ~7) + 8);
  const v = new DataView(rec.buffer);
  v.setUint32(0, type);
  v.setUint32(4, length);
  rec.set(data, 8);
  return [[FT, rec]];
}

const cases: Case[] = [
  // fixed header
  { name: "bad magic", base: "v3", patches: [[0, 4, 0x514649fc]] },
  { name: "version 0", base: "v3", patches: [[4, 4, 0]] },
  { name: "version 1", base: "v3", patches: [[4, 4, 1]] },
  { name: "version 4", base: "v3", patches: [[4, 4, 4]] },
  { name: "version 2^32-1", base: "v3", patches: [[4, 4, 0xffffffff]] },
  { name: "cluster_bits 8", base: "v3", patches: [[20, 4, 8]] },
  { name: "cluster_bits 22", base: "v3", patches: [[20, 4, 22]] },
  { name: "header_length 96", base: "v3", patches: [[100, 4, 96]] },
  { name: "header_length 0x20000 (> cluster)", base: "v3", patches: [[100, 4, 0x20000]] },
  { name: "header_length 104 (accepted)", base: "v3", patches: [[100, 4, 104]] },
  { name: "header_length 104 ignores a compression byte", base: "v3", patches: [[100, 4, 104], [104, 1, 1]] },
  { name: "header_length 105 reads the compression byte", base: "v3", patches: [[100, 4, 105], [104, 1, 1]] },
  { name: "header_length 120 over the feature table", base: "v3", patches: [[100, 4, 120]] },
  { name: "backing_file_offset > cluster", base: "v3", patches: [[8, 8, 0x10001]] },
  { name: "refcount_order 7", base: "v3", patches: [[96, 4, 7]] },
  { name: "refcount_order 2^32-1", base: "v3", patches: [[96, 4, 0xffffffff]] },
  { name: "l1_size 0 (too small)", base: "v3", patches: [[36, 4, 0]] },
  { name: "l1_size 2^22+1 (huge)", base: "v3", patches: [[36, 4, 0x400001]] },
  { name: "l1 offset unaligned", base: "v3", patches: [[40, 8, 0x30200]] },
  { name: "reftable offset unaligned", base: "v3", patches: [[48, 8, 0x10200]] },
  { name: "reftable clusters 0", base: "v3", patches: [[56, 4, 0]] },
  { name: "reftable clusters 129 (huge)", base: "v3", patches: [[56, 4, 129]] },
  { name: "snapshot offset unaligned, no snapshots", base: "v3", patches: [[64, 8, 0x200]] },
  { name: "snapshot offset unaligned, one snapshot", base: "v3", patches: [[64, 8, 0x200], [60, 4, 1]] },
  { name: "nb_snapshots 65537", base: "v3", patches: [[60, 4, 65537]] },
  { name: "crypt_method 3", base: "v3", patches: [[32, 4, 3]] },
  { name: "crypt_method 2^32-1", base: "v3", patches: [[32, 4, 0xffffffff]] },
  { name: "crypt_method 1 (AES) without I/O", base: "v3", patches: [[32, 4, 1]], modes: ["info"] },
  { name: "crypt_method 2 (LUKS) without a crypto header", base: "v3", patches: [[32, 4, 2]], modes: ["ro", "rw"] },
  { name: "size 2^55", base: "v3", patches: [[24, 8, 2n ** 55n]] },
  { name: "size 2^62", base: "v3", patches: [[24, 8, 2n ** 62n]] },
  { name: "size 2^64 - 2^17 (wraps QEMU's L1 count)", base: "v3", patches: [[24, 8, 0xfffffffffffe0000n]] },
  // features
  { name: "compression bit with zlib", base: "v3", patches: [[72, 8, 0x8]] },
  { name: "zstd without the compression bit", base: "v3", patches: [[104, 1, 1]] },
  { name: "unknown compression type 5", base: "v3", patches: [[104, 1, 5], [72, 8, 0x8]] },
  { name: "unknown compression type 5 without the bit", base: "v3", patches: [[104, 1, 5]] },
  { name: "unknown incompatible bit 5", base: "v3", patches: [[72, 8, 0x20]] },
  { name: "unknown incompatible bit 63", base: "v3", patches: [[72, 8, 1n << 63n]] },
  { name: "unknown bit 5 named in the feature table", base: "v3", patches: [[72, 8, 0x20], [FT_ENTRY(0) + 1, 1, 5]] },
  { name: "unknown bits 5, 6; 5 named", base: "v3", patches: [[72, 8, 0x60], [FT_ENTRY(0) + 1, 1, 5]] },
  { name: "unknown bit named by a bit number >= 64", base: "v3", patches: [[72, 8, 0x60], [FT_ENTRY(0) + 1, 1, 69]] },
  { name: "feature table ends at an empty name", base: "v3", patches: [[72, 8, 0x20], [FT_ENTRY(0) + 2, 1, 0], [FT_ENTRY(1) + 1, 1, 5]] },
  { name: "feature entry of unknown type is skipped", base: "v3", patches: [[72, 8, 0x20], [FT_ENTRY(0), 1, 3], [FT_ENTRY(0) + 1, 1, 5]] },
  { name: "extended L2 with 8 KiB clusters", base: "v3", patches: [[72, 8, 0x10], [20, 4, 13]] },
  { name: "extended L2 with 16 KiB clusters (accepted)", base: "v3", patches: [[72, 8, 0x10], [20, 4, 14]] },
  { name: "raw-data autoclear bit without data file", base: "v3", patches: [[88, 8, 0x2]] },
  { name: "corrupt bit", base: "v3", patches: [[72, 8, 0x2]] },
  { name: "dirty bit (accepted)", base: "v3", patches: [[72, 8, 0x1]] },
  { name: "unknown compatible and autoclear bits (accepted)", base: "v3", patches: [[80, 8, 1n << 40n], [88, 8, 0x8000000000000020n]] },
  { name: "data file bit without a name", base: "v3", patches: [[72, 8, 0x4]], modes: ["info", "ro"] },
  { name: "data file name without the bit (accepted)", base: "v3", patches: replaceFeatureTable(EXT_DATA_FILE, te.encode("abcd")) },
  // extensions
  { name: "feature table overruns the cluster", base: "v3", patches: [[FT + 4, 4, 0x10000]] },
  { name: "end marker length overruns", base: "v3", patches: [[END_V3 + 4, 4, 0x10000 - 0x200 + 1]] },
  { name: "end marker length fits exactly (accepted)", base: "v3", patches: [[END_V3 + 4, 4, 0x10000 - 0x200]] },
  { name: "crypto extension without LUKS", base: "v3", patches: replaceFeatureTable(EXT_CRYPTO_HEADER, new Uint8Array(16)) },
  { name: "crypto extension of 24 bytes without LUKS", base: "v3", patches: replaceFeatureTable(EXT_CRYPTO_HEADER, new Uint8Array(24)) },
  { name: "crypto extension of 24 bytes with LUKS", base: "v3", patches: [...replaceFeatureTable(EXT_CRYPTO_HEADER, new Uint8Array(24)), [32, 4, 2]] },
  { name: "crypto header offset unaligned", base: "v3", patches: [...replaceFeatureTable(EXT_CRYPTO_HEADER, Uint8Array.of(0, 0, 0, 0, 0, 1, 2, 0, ...new Array(8).fill(0))), [32, 4, 2]] },
  { name: "backing format of 16 bytes", base: "backing", patches: [[BK_FMT + 4, 4, 16]] },
  { name: "backing format of 15 bytes (accepted)", base: "backing", patches: [[BK_FMT + 4, 4, 15]], modes: ["info"] },
  { name: "backing name of 1024 bytes", base: "backing", patches: [[16, 4, 1024]] },
  { name: "backing name past the cluster end", base: "backing", patches: [[8, 8, 0xfff0], [16, 4, 17]] },
  { name: "empty backing name at the cluster end (accepted)", base: "backing", patches: [[8, 8, 0xfff0], [16, 4, 16]] },
  { name: "backing offset inside the feature table", base: "backing", patches: [[8, 8, 0x100]] },
  { name: "bitmaps extension of 16 bytes", base: "bitmaps", patches: [[BM_EXT + 4, 4, 16]] },
  { name: "bitmaps extension of 32 bytes", base: "bitmaps", patches: [[BM_EXT + 4, 4, 32]] },
  { name: "zero bitmaps", base: "bitmaps", patches: [[BM_EXT + 8, 4, 0]] },
  { name: "70000 bitmaps", base: "bitmaps", patches: [[BM_EXT + 8, 4, 70000]] },
  { name: "bitmaps reserved field", base: "bitmaps", patches: [[BM_EXT + 12, 4, 1]] },
  { name: "bitmap directory unaligned", base: "bitmaps", patches: [[BM_EXT + 24, 8, 0x50200]] },
  { name: "bitmap directory too large", base: "bitmaps", patches: [[BM_EXT + 16, 8, 0x4000000]] },
  { name: "bitmaps without the autoclear bit (warning)", base: "bitmaps", patches: [[88, 8, 0]] },
  { name: "bad bitmaps without the autoclear bit (warning)", base: "bitmaps", patches: [[88, 8, 0], [BM_EXT + 8, 4, 0]] },
  // v2
  { name: "v2 accepted", base: "v2", patches: [] },
  { name: "v2 l1_size 0", base: "v2", patches: [[36, 4, 0]] },
  { name: "v2 ignores v3 fields (read as an end marker)", base: "v2", patches: [[72, 8, 0x20], [96, 4, 7]] },
  { name: "v2 extension area overrun", base: "v2", patches: [[72, 4, 0x1234], [76, 4, 0x10000]] },
  // several faults: QEMU's order
  { name: "multi: unknown incompatible bit + extension overrun", base: "v3", patches: [[72, 8, 0x20], [FT + 4, 4, 0x10000]], multi: true },
  { name: "multi: compression bit + unknown incompatible bit", base: "v3", patches: [[72, 8, 0x28]], multi: true },
  { name: "multi: unknown compression + refcount order", base: "v3", patches: [[104, 1, 5], [96, 4, 7]], multi: true },
  { name: "multi: refcount order + crypt method", base: "v3", patches: [[96, 4, 7], [32, 4, 3]], multi: true },
  { name: "multi: reftable 0 + crypt method", base: "v3", patches: [[56, 4, 0], [32, 4, 3]], multi: true },
  { name: "multi: L1 too small + crypt method", base: "v3", patches: [[36, 4, 0], [32, 4, 3]], multi: true },
  { name: "multi: crypt method + extension overrun", base: "v3", patches: [[32, 4, 3], [FT + 4, 4, 0x10000]], multi: true },
  { name: "multi: crypt method + corrupt bit", base: "v3", patches: [[32, 4, 3], [72, 8, 0x2]], multi: true },
  { name: "multi: L1 too small + extension overrun", base: "v3", patches: [[36, 4, 0], [FT + 4, 4, 0x10000]], multi: true },
  { name: "multi: snapshot offset + L1 too small", base: "v3", patches: [[64, 8, 0x200], [60, 4, 1], [36, 4, 0]], multi: true },
  { name: "multi: corrupt + 8 KiB extended L2", base: "v3", patches: [[72, 8, 0x12], [20, 4, 13]], multi: true },
  { name: "multi: backing name too long + raw-data bit", base: "backing", patches: [[16, 4, 1024], [88, 8, 0x2]], multi: true },
  { name: "multi: backing format too long + name too long", base: "backing", patches: [[BK_FMT + 4, 4, 16], [16, 4, 1024]], multi: true },
  { name: "multi: bitmaps reserved + zero bitmaps", base: "bitmaps", patches: [[BM_EXT + 12, 4, 1], [BM_EXT + 8, 4, 0]], multi: true },
  { name: "multi: 70000 bitmaps + reserved", base: "bitmaps", patches: [[BM_EXT + 8, 4, 70000], [BM_EXT + 12, 4, 1]], multi: true },
  { name: "multi: directory too large + unaligned", base: "bitmaps", patches: [[BM_EXT + 16, 8, 0x4000000], [BM_EXT + 24, 8, 0x50200]], multi: true },
  { name: "multi: huge size + backing name too long", base: "backing", patches: [[24, 8, 0xfffffffffffe0000n], [16, 4, 1024]], multi: true },
];

let dir = "";
const bases: Record<Base, string> = { v3: "", backing: "", bitmaps: "", v2: "", datafile: "" };

beforeAll(() => {
  dir = makeTempDir("refusal");
  const mk = (name: string, opts: string[]) => {
    runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, name, "1M"], dir);
    return join(dir, name);
  };
  runOk("qemu-img", ["create", "-q", "-f", "raw", "back.raw", "1M"], dir);
  bases.v3 = mk("v3.qcow2", []);
  bases.backing = mk("backing.qcow2", ["-o", "backing_file=back.raw,backing_fmt=raw"]);
  bases.bitmaps = mk("bitmaps.qcow2", []);
  runOk("qemu-img", ["bitmap", "--add", "bitmaps.qcow2", "b0"], dir);
  bases.v2 = mk("v2.qcow2", ["-o", "compat=0.10"]);
  bases.datafile = mk("datafile.qcow2", ["-o", `data_file=${join(dir, "d.raw")}`]);
});
afterAll(() => removeTempDir(dir));

function damaged(c: Case, mode: QemuOpenMode): string {
  const file = join(dir, `case-${mode}.qcow2`);
  copyFileSync(bases[c.base], file);
  for (const p of c.patches) {
    if (p.length === 2) {
      writeBytes(file, p[0], p[1]);
      continue;
    }
    const [at, width, value] = p;
    const b = new Uint8Array(width);
    const v = new DataView(b.buffer);
    if (width === 1) v.setUint8(0, Number(value));
    else if (width === 2) v.setUint16(0, Number(value));
    else if (width === 4) v.setUint32(0, Number(value));
    else v.setBigUint64(0, BigInt(value));
    writeBytes(file, at, b);
  }
  return file;
}

/** Our verdict: null when accepted, else the message; with the warnings of an accepted open. */
function ours(f: () => { warnings: string[]; notices: string[] }): { error: string | null; warnings: string[] } {
  try {
    const r = f();
    return { error: null, warnings: [...r.warnings.map((w) => `warning: ${w}`), ...r.notices] };
  } catch (e) {
    if (!(e instanceof Qcow2Error)) throw e;
    expect(e.message).not.toContain("\n");
    return { error: e.message, warnings: [] };
  }
}

describe("base image layouts", () => {
  it("are the layouts the patch offsets assume", () => {
    const types = (f: string) => {
      const c0 = readCluster0(f);
      const img = decodeImageHeader(c0);
      return readRawExtensions(c0, img.header.headerLength, img.header.backingFileOffset || 65536).map((r) => r.type);
    };
    expect(types(bases.v3)).toEqual([EXT_FEATURE_TABLE]);
    expect(types(bases.backing)).toEqual([EXT_BACKING_FORMAT, EXT_FEATURE_TABLE]);
    expect(types(bases.bitmaps)).toEqual([EXT_FEATURE_TABLE, EXT_BITMAPS]);
    const bk = decodeImageHeader(readCluster0(bases.backing));
    expect([bk.header.backingFileOffset, bk.backingFile]).toEqual([BK_NAME, "back.raw"]);
    expect(decodeImageHeader(readCluster0(bases.v2)).header.version).toBe(2);
  });
});

describe.each(cases)("$name", (c) => {
  const modes = c.modes ?? (["info", "ro", "rw"] as QemuOpenMode[]);

  it.each(modes)("%s: same verdict and message as QEMU", (mode) => {
    const file = damaged(c, mode);
    const qemu = qemuOpenError(file, mode);
    const c0 = readCluster0(damaged(c, mode));
    const opened = ours(() => openImageHeader(c0, OPTS[mode]));
    expect(opened.error).toBe(qemu);
    if (!c.multi) {
      const split = ours(() => validateImageHeader(decodeImageHeader(c0), OPTS[mode]));
      expect(split.error).toBe(qemu);
    }
    if (qemu === null && mode !== "rw") {
      // QEMU's warnings for an accepted image are ours, prefixed
      const stderr = (mode === "info" ? run("qemu-img", ["info", "-f", "qcow2", damaged(c, mode)]) : run("qemu-io", ["-f", "qcow2", "-r", "-c", "read 0 512", damaged(c, mode)])).stderr;
      const lines = stderr.split("\n").filter((l) => l.length > 0).map((l) => l.replace(/^qemu-(img|io): /, ""));
      expect(lines).toEqual(opened.warnings);
    }
  });
});

describe("the data-file base", () => {
  it("is accepted like QEMU does in every mode, and needs its data file only with I/O", () => {
    for (const mode of ["info", "ro", "rw"] as const) {
      expect(qemuOpenError(bases.datafile, mode)).toBeNull();
      expect(ours(() => openImageHeader(readCluster0(bases.datafile), OPTS[mode])).error).toBeNull();
    }
    const img = decodeImageHeader(readCluster0(bases.datafile));
    const { dataFile: _name, ...withoutName } = img.extensions;
    const nameless = { ...img, extensions: withoutName };
    expect(ours(() => validateImageHeader(nameless, OPTS.ro)).error).toBe("'data-file' is required for this image");
    expect(ours(() => validateImageHeader(nameless, OPTS.info)).error).toBeNull();
  });
});
