/**
 * The qcow2 header as a person reads it: every field with its value, every feature bit by name (the
 * image's own feature name table first, QEMU's names otherwise), and the header extensions. Frontends show
 * this beside qemu-img's output; it says what the bytes of cluster 0 say, nothing more.
 */
import { QEMU_FEATURE_TABLE, type FeatureKind, type FeatureName } from "@qcowkit/spec";
import type { Qcow2Image } from "./qcow2-image";

export interface FeatureBit {
  kind: FeatureKind;
  bit: number;
  /** The name from the image's feature table, else QEMU's, else "unknown". */
  name: string;
  set: boolean;
}

export interface HeaderExtensionView {
  /** The extension's magic as 0x-hex. */
  type: string;
  name: string;
  detail: string;
}

export interface HeaderView {
  fields: Array<[name: string, value: string]>;
  features: FeatureBit[];
  extensions: HeaderExtensionView[];
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

export function headerView(image: Qcow2Image): HeaderView {
  const h = image.header;
  const ext = image.metadata.hdr.extensions;
  const fields: Array<[string, string]> = [
    ["magic", "QFI\\xfb"],
    ["version", String(h.version)],
    ["backing_file_offset", hex(h.backingFileOffset)],
    ["backing_file_size", String(h.backingFileSize)],
    ["cluster_bits", `${h.clusterBits} (${2 ** h.clusterBits} bytes)`],
    ["size", `${h.size} bytes`],
    ["crypt_method", `${h.cryptMethod} (${["none", "AES", "LUKS"][h.cryptMethod] ?? "unknown"})`],
    ["l1_size", String(h.l1Size)],
    ["l1_table_offset", hex(h.l1TableOffset)],
    ["refcount_table_offset", hex(h.refcountTableOffset)],
    ["refcount_table_clusters", String(h.refcountTableClusters)],
    ["nb_snapshots", String(h.nbSnapshots)],
    ["snapshots_offset", hex(h.snapshotsOffset)],
  ];
  if (h.version >= 3) {
    fields.push(
      ["incompatible_features", hex(h.incompatibleFeatures)],
      ["compatible_features", hex(h.compatibleFeatures)],
      ["autoclear_features", hex(h.autoclearFeatures)],
      ["refcount_order", `${h.refcountOrder} (${2 ** h.refcountOrder}-bit refcounts)`],
      ["header_length", String(h.headerLength)],
    );
    if (h.headerLength > 104) fields.push(["compression_type", `${h.compressionType} (${["zlib", "zstd"][h.compressionType] ?? "unknown"})`]);
  }
  const table: readonly FeatureName[] = ext.featureTable ?? QEMU_FEATURE_TABLE;
  const bits: Record<FeatureKind, bigint> = {
    incompatible: h.incompatibleFeatures,
    compatible: h.compatibleFeatures,
    autoclear: h.autoclearFeatures,
  };
  const features: FeatureBit[] = [];
  for (const kind of ["incompatible", "compatible", "autoclear"] as const) {
    const named = new Set<number>();
    const nameOf = (bit: number) =>
      table.find((f) => f.kind === kind && f.bit === bit)?.name ?? QEMU_FEATURE_TABLE.find((f) => f.kind === kind && f.bit === bit)?.name;
    for (const f of QEMU_FEATURE_TABLE.filter((f) => f.kind === kind)) named.add(f.bit);
    for (const f of table.filter((f) => f.kind === kind)) named.add(f.bit);
    for (let bit = 0; bit < 64; bit++) if ((bits[kind] >> BigInt(bit)) & 1n) named.add(bit);
    for (const bit of [...named].sort((a, b) => a - b)) {
      features.push({ kind, bit, name: nameOf(bit) ?? "unknown", set: ((bits[kind] >> BigInt(bit)) & 1n) === 1n });
    }
  }
  const extensions: HeaderExtensionView[] = [];
  if (ext.backingFormat !== undefined) extensions.push({ type: "0xe2792aca", name: "backing file format", detail: ext.backingFormat });
  if (ext.featureTable) extensions.push({ type: "0x6803f857", name: "feature name table", detail: `${ext.featureTable.length} entries` });
  if (ext.bitmaps) {
    const b = ext.bitmaps;
    extensions.push({
      type: "0x23852875",
      name: "bitmaps",
      detail: `${b.nbBitmaps} bitmaps, directory at ${hex(b.bitmapDirectoryOffset)} (${b.bitmapDirectorySize} bytes)`,
    });
  }
  if (ext.cryptoHeader) {
    extensions.push({ type: "0x0537be77", name: "full disk encryption header", detail: `at ${hex(ext.cryptoHeader.offset)} (${ext.cryptoHeader.length} bytes)` });
  }
  if (ext.dataFile !== undefined) extensions.push({ type: "0x44415441", name: "external data file name", detail: ext.dataFile });
  for (const u of ext.unknown) extensions.push({ type: hex(u.type), name: "unknown", detail: `${u.data.byteLength} bytes` });
  return { fields, features, extensions };
}
