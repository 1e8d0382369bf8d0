/// <reference types="node" />
/**
 * Interop with QEMU 7.2: images made by `qemu-img create -f qcow2` in a matrix of options decode to the
 * fields `qemu-img info` reports and the options ask for, pass validation, and re-encode to QEMU's exact
 * first cluster.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  QEMU_FEATURE_TABLE,
  decodeImageHeader,
  encodeImageHeader,
  l1EntriesForSize,
  openImageHeader,
  validateImageHeader,
} from "../src/index";
import { hex } from "./helpers/fixtures";
import { makeTempDir, qemuInfo, readCluster0, removeTempDir, runOk } from "./helpers/qemu";

let dir = "";
beforeAll(() => {
  dir = makeTempDir("create");
  runOk("qemu-img", ["create", "-q", "-f", "raw", join(dir, "back.raw"), "64M"]);
  runOk("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "back.qcow2"), "64M"]);
});
afterAll(() => removeTempDir(dir));

interface Case {
  name: string;
  options: Record<string, string>;
  size?: string;
}

const SIZES: Record<string, number> = { "1M": 2 ** 20, "100M": 100 * 2 ** 20, "64M": 64 * 2 ** 20, "1T": 2 ** 40, "1000000000": 1e9, "12345": 12800 };
const CLUSTER: Record<string, number> = { "512": 9, "1k": 10, "4k": 12, "8k": 13, "16k": 14, "32k": 15, "64k": 16, "128k": 17, "256k": 18, "512k": 19, "1M": 20, "2M": 21 };

const cases: Case[] = [
  { name: "defaults", options: {} },
  ...Object.keys(CLUSTER).map((cs) => ({ name: `compat 1.1, cluster_size ${cs}`, options: { cluster_size: cs } })),
  ...["512", "4k", "64k", "2M"].map((cs) => ({ name: `compat 0.10, cluster_size ${cs}`, options: { compat: "0.10", cluster_size: cs } })),
  ...["1", "2", "4", "8", "16", "32", "64"].map((rb) => ({ name: `refcount_bits ${rb}`, options: { refcount_bits: rb } })),
  { name: "refcount_bits 1 with 512-byte clusters", options: { refcount_bits: "1", cluster_size: "512" } },
  { name: "lazy_refcounts", options: { lazy_refcounts: "on" } },
  { name: "extended_l2, 16k clusters", options: { extended_l2: "on", cluster_size: "16k" } },
  { name: "extended_l2, 64k clusters, 1T", options: { extended_l2: "on" }, size: "1T" },
  { name: "extended_l2, 2M clusters", options: { extended_l2: "on", cluster_size: "2M" } },
  { name: "compression_type zlib", options: { compression_type: "zlib" } },
  { name: "compression_type zstd", options: { compression_type: "zstd" } },
  { name: "zstd + extended_l2 + lazy refcounts", options: { compression_type: "zstd", extended_l2: "on", lazy_refcounts: "on" } },
  { name: "preallocation metadata", options: { preallocation: "metadata" } },
  { name: "preallocation falloc", options: { preallocation: "falloc" } },
  { name: "preallocation full", options: { preallocation: "full" } },
  { name: "preallocation metadata, 512-byte clusters, 100M", options: { preallocation: "metadata", cluster_size: "512" }, size: "100M" },
  { name: "data_file", options: { data_file: "@/d1.raw" } },
  { name: "data_file + data_file_raw", options: { data_file: "@/d2.raw", data_file_raw: "on" } },
  { name: "data_file, relative name", options: { data_file: "rel.raw" } },
  { name: "data_file + extended_l2 + preallocation", options: { data_file: "@/d3.raw", extended_l2: "on", preallocation: "metadata" } },
  { name: "backing raw", options: { backing_file: "@/back.raw", backing_fmt: "raw" }, size: "64M" },
  { name: "backing qcow2", options: { backing_file: "@/back.qcow2", backing_fmt: "qcow2" }, size: "64M" },
  { name: "backing, compat 0.10", options: { compat: "0.10", backing_file: "@/back.raw", backing_fmt: "raw" }, size: "64M" },
  { name: "backing, 512-byte clusters (no feature table)", options: { cluster_size: "512", backing_file: "@/back.raw", backing_fmt: "raw" }, size: "64M" },
  { name: "backing, relative name", options: { backing_file: "back.raw", backing_fmt: "raw" }, size: "64M" },
  { name: "backing + extended_l2 + preallocation", options: { extended_l2: "on", preallocation: "metadata", backing_file: "@/back.raw", backing_fmt: "raw" }, size: "64M" },
  { name: "1T image", options: {}, size: "1T" },
  { name: "unaligned size rounds up to 512", options: {}, size: "12345" },
  { name: "1e9 bytes, 1k clusters, refcount_bits 64", options: { cluster_size: "1k", refcount_bits: "64" }, size: "1000000000" },
];

describe.each(cases)("qemu-img create: $name", ({ name, options, size = "1M" }) => {
  const file = () => join(dir, `${name.replace(/[^a-z0-9]+/gi, "_")}.qcow2`);
  const opt = (k: string) => (options[k]?.startsWith("@/") ? join(dir, options[k]!.slice(2)) : options[k]);

  beforeAll(() => {
    const o = Object.keys(options).map((k) => `${k}=${opt(k)}`);
    runOk("qemu-img", ["create", "-q", "-f", "qcow2", ...(o.length ? ["-o", o.join(",")] : []), file(), size], dir);
  });

  it("decodes to the fields qemu-img info reports", () => {
    const info = qemuInfo(file());
    const data = info["format-specific"].data;
    const { header: h, extensions: ext, backingFile } = decodeImageHeader(readCluster0(file()));
    expect(h.size).toBe(info["virtual-size"]);
    expect(2 ** h.clusterBits).toBe(info["cluster-size"]);
    expect(h.version).toBe(data.compat === "0.10" ? 2 : 3);
    expect(2 ** h.refcountOrder).toBe(data["refcount-bits"]);
    expect(h.compressionType === 1 ? "zstd" : "zlib").toBe(data["compression-type"]);
    expect((h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n).toBe(data["lazy-refcounts"] ?? false);
    expect((h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n).toBe(data["extended-l2"] ?? false);
    expect(ext.dataFile).toBe(data["data-file"]);
    expect((h.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n).toBe(data["data-file-raw"] ?? false);
    expect(backingFile).toBe(info["backing-filename"]);
    expect(ext.backingFormat).toBe(info["backing-filename-format"]);
    expect(ext.unknown).toEqual([]);
  });

  it("decodes to what the options ask for", () => {
    const { header: h, extensions: ext, backingFile } = decodeImageHeader(readCluster0(file()));
    const v3 = options.compat !== "0.10";
    expect(h.version).toBe(v3 ? 3 : 2);
    expect(h.headerLength).toBe(v3 ? 112 : 72);
    expect(h.clusterBits).toBe(CLUSTER[options.cluster_size ?? "64k"]);
    expect(h.size).toBe(SIZES[size]);
    expect(h.refcountOrder).toBe(Math.log2(Number(options.refcount_bits ?? 16)));
    const extL2 = options.extended_l2 === "on";
    const wantIncompat =
      (extL2 ? INCOMPAT_EXTL2 : 0n) |
      (options.compression_type === "zstd" ? INCOMPAT_COMPRESSION : 0n) |
      (options.data_file ? INCOMPAT_DATA_FILE : 0n);
    expect(h.incompatibleFeatures).toBe(wantIncompat);
    expect(h.compatibleFeatures).toBe(options.lazy_refcounts === "on" ? COMPAT_LAZY_REFCOUNTS : 0n);
    expect(h.autoclearFeatures).toBe(options.data_file_raw === "on" ? AUTOCLEAR_DATA_FILE_RAW : 0n);
    expect(h.compressionType).toBe(options.compression_type === "zstd" ? 1 : 0);
    expect(h.cryptMethod).toBe(0);
    expect(h.nbSnapshots).toBe(0);
    expect(h.snapshotsOffset).toBe(0);
    expect(h.l1Size).toBe(l1EntriesForSize(h.size, h.clusterBits, extL2));
    expect(h.refcountTableClusters).toBeGreaterThanOrEqual(1);
    expect(h.l1TableOffset % 2 ** h.clusterBits).toBe(0);
    expect(ext.dataFile).toBe(opt("data_file"));
    expect(backingFile).toBe(opt("backing_file"));
    expect(ext.backingFormat).toBe(options.backing_fmt);
    expect(ext.featureTable).toEqual(v3 && h.clusterBits > 12 ? QEMU_FEATURE_TABLE : undefined);
  });

  it("passes open-time validation, read-only and read-write", () => {
    const bytes = readCluster0(file());
    const img = decodeImageHeader(bytes);
    expect(validateImageHeader(img, { readWrite: false })).toEqual({ warnings: [], notices: [], ignoreBitmaps: false });
    expect(validateImageHeader(img, { readWrite: true })).toEqual({ warnings: [], notices: [], ignoreBitmaps: false });
    expect(openImageHeader(bytes, { readWrite: true }).image).toEqual(img);
  });

  it("re-encoding cluster 0 reproduces QEMU's bytes exactly", () => {
    const bytes = readCluster0(file());
    const img = decodeImageHeader(bytes);
    const clusterSize = 2 ** img.header.clusterBits;
    const want = new Uint8Array(clusterSize);
    want.set(bytes.subarray(0, clusterSize));
    const got = encodeImageHeader(img);
    expect(got.byteLength).toBe(clusterSize);
    // compare the meaningful prefix as hex for a readable diff, then the whole cluster
    expect(hex(got.subarray(0, 2048))).toBe(hex(want.subarray(0, 2048)));
    expect(Buffer.compare(Buffer.from(got), Buffer.from(want))).toBe(0);
  });
});
