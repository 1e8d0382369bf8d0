import { CliError } from "../cli/errors";
/**
 * The -o option lists of qemu-img 7.2 for qcow2, raw and the file protocol: names, types, help texts and the
 * defaults the "Formatting ..." line shows, in QEMU's order (which is the order of that line).
 */
import type { OptDesc } from "../cli/qemu-opts";

export const QCOW2_CREATE_OPTS: readonly OptDesc[] = [
  { name: "encryption", type: "bool", help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)" },
  { name: "encrypt.format", type: "string", help: "Encrypt the image, format choices: 'aes', 'luks'" },
  { name: "encrypt.key-secret", type: "string", help: "ID of secret providing qcow AES key or LUKS passphrase" },
  { name: "encrypt.cipher-alg", type: "string", help: "Name of encryption cipher algorithm" },
  { name: "encrypt.cipher-mode", type: "string", help: "Name of encryption cipher mode" },
  { name: "encrypt.ivgen-alg", type: "string", help: "Name of IV generator algorithm" },
  { name: "encrypt.ivgen-hash-alg", type: "string", help: "Name of IV generator hash algorithm" },
  { name: "encrypt.hash-alg", type: "string", help: "Name of encryption hash algorithm" },
  { name: "encrypt.iter-time", type: "number", help: "Time to spend in PBKDF in milliseconds" },
  { name: "cluster_size", type: "size", help: "qcow2 cluster size", defaultValue: "65536" },
  { name: "extended_l2", type: "bool", help: "Extended L2 tables", defaultValue: "off" },
  { name: "preallocation", type: "string", help: "Preallocation mode (allowed values: off, metadata, falloc, full)" },
  { name: "compression_type", type: "string", help: "Compression method used for image cluster compression", defaultValue: "zlib" },
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "compat", type: "string", help: "Compatibility level (v2 [0.10] or v3 [1.1])" },
  { name: "backing_file", type: "string", help: "File name of a base image" },
  { name: "backing_fmt", type: "string", help: "Image format of the base image" },
  { name: "data_file", type: "string", help: "File name of an external data file" },
  { name: "data_file_raw", type: "bool", help: "The external data file must stay valid as a raw image" },
  { name: "lazy_refcounts", type: "bool", help: "Postpone refcount updates", defaultValue: "off" },
  { name: "refcount_bits", type: "number", help: "Width of a reference count entry in bits", defaultValue: "16" },
];

export const RAW_CREATE_OPTS: readonly OptDesc[] = [{ name: "size", type: "size", help: "Virtual disk size" }];

/** The standalone luks format's options (the luks ones of qcow2's encrypt.*, without the prefix). */
export const LUKS_CREATE_OPTS: readonly OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "key-secret", type: "string", help: "ID of the secret that provides the keyslot passphrase" },
  ...QCOW2_CREATE_OPTS.filter((d) => d.name.startsWith("encrypt.") && !["encrypt.format", "encrypt.key-secret"].includes(d.name)).map((d) => ({
    ...d,
    name: d.name.slice("encrypt.".length),
  })),
];

/** The file protocol's options (merged in when a file name is known). */
export const FILE_CREATE_OPTS: readonly OptDesc[] = [
  { name: "size", type: "size", help: "Virtual disk size" },
  { name: "preallocation", type: "string", help: "Preallocation mode (allowed values: off, falloc, full)" },
  { name: "nocow", type: "bool", help: "Turn off copy-on-write (valid only on btrfs)" },
  { name: "extent_size_hint", type: "size", help: "Extent size hint for the image file, 0 to disable" },
];

/** qcow2 options amend accepts (qemu-img amend -f qcow2 -o help). */
export const QCOW2_AMEND_OPTS: readonly OptDesc[] = QCOW2_CREATE_OPTS.filter((d) =>
  [
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "encrypt.iter-time",
    "lazy_refcounts",
    "refcount_bits",
    "size",
  ].includes(d.name),
).concat([
  { name: "encrypt.keyslot", type: "number", help: "Select a single keyslot to modify explicitly" },
  { name: "encrypt.new-secret", type: "string", help: "New secret to set in the matching keyslots. Empty string to erase" },
  { name: "encrypt.old-secret", type: "string", help: "Select all keyslots that match this password" },
  { name: "encrypt.state", type: "string", help: "Select new state of affected keyslots (active/inactive)" },
]);

/** luks options amend accepts (qemu-img amend -f luks -o help): qcow2's encrypt.* amend options, unprefixed. */
export const LUKS_AMEND_OPTS: readonly OptDesc[] = QCOW2_AMEND_OPTS.filter((d) => d.name.startsWith("encrypt.")).map((d) => ({
  ...d,
  name: d.name.slice("encrypt.".length),
}));

export type ImageFormatName = "qcow2" | "raw" | "luks";

export function formatCreateOpts(format: ImageFormatName): readonly OptDesc[] {
  return format === "qcow2" ? QCOW2_CREATE_OPTS : format === "luks" ? LUKS_CREATE_OPTS : RAW_CREATE_OPTS;
}

export function isKnownFormat(name: string): name is ImageFormatName {
  return name === "qcow2" || name === "raw" || name === "luks";
}

/** QEMU 7.2's block drivers that exist but create no images (filters, read-only formats, network readers). */
const NO_CREATE_DRIVERS = [
  "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read", "dmg", "ftp", "ftps",
  "http", "https", "null-aio", "null-co", "preallocate", "quorum", "replication", "snapshot-access", "throttle", "vvfat",
];

/** Why qimg cannot create an image of `format` (not qcow2 or raw), in QEMU's words where QEMU cannot either. */
export function uncreatableFormatError(format: string): CliError {
  if (NO_CREATE_DRIVERS.includes(format)) return new CliError(`Format driver '${format}' does not support image creation`);
  return new CliError(`Unknown file format '${format}'`);
}
