/**
 * Image format probing as QEMU 7.2 does it: every format driver that has a probe scores the first 512 bytes
 * of the file (zeros past its end) and its name; the highest score wins, raw (score 1) when no other driver
 * claims the file. An empty file is raw without probing.
 *
 * qcowkit reads qcow2, raw and luks; the other formats are recognised so that they are refused rather than read
 * as raw disks (`probeFormat`, shared by the Node and browser entries).
 */
import { Qcow2Error, type ByteStore } from "@qcowkit/spec";

/** Bytes QEMU reads for probing (BLOCK_PROBE_BUF_SIZE). */
export const PROBE_BYTES = 512;

/** Format names QEMU 7.2 probes, in the order its drivers are tried (an equal score keeps the earlier one). */
export type ProbedFormat =
  | "raw"
  | "bochs"
  | "cloop"
  | "dmg"
  | "luks"
  | "parallels"
  | "qcow"
  | "qcow2"
  | "qed"
  | "vdi"
  | "vhdx"
  | "vmdk"
  | "vpc";

const ascii = (s: string): number[] => Array.from(s, (c) => c.charCodeAt(0));
const startsWith = (b: Uint8Array, at: number, bytes: number[]): boolean => bytes.every((x, i) => b[at + i] === x);
const be32 = (b: Uint8Array, at: number): number => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
const le32 = (b: Uint8Array, at: number): number => (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
const be16 = (b: Uint8Array, at: number): number => (b[at]! << 8) | b[at + 1]!;
/** A NUL-terminated string field equal to `s` (C's strcmp). */
const cString = (b: Uint8Array, at: number, s: string): boolean => startsWith(b, at, ascii(s)) && b[at + s.length] === 0;

const QCOW_MAGIC = ascii("QFI\xfb");
const CLOOP_MAGIC = ascii("#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n");
const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];

/** The vmdk probe: a sparse extent's magic, or a text descriptor whose first line (after comments and blank lines) is version=1..3. */
function vmdkScore(b: Uint8Array): number {
  if (startsWith(b, 0, ascii("KDMV")) || startsWith(b, 0, ascii("COWD"))) return 100;
  const end = b.length;
  let p = 0;
  while (p < end) {
    if (b[p] === 0x23 /* # */) {
      while (p < end && b[p] !== 0x0a) p++;
      p++;
      continue;
    }
    if (b[p] === 0x20) {
      while (p < end && b[p] === 0x20) p++;
      if (p < end && b[p] === 0x0d) p++;
      // Only blank lines may come before the version line.
      if (p === end || b[p] !== 0x0a) return 0;
      p++;
      continue;
    }
    for (const v of ["1", "2", "3"]) {
      if (startsWith(b, p, ascii(`version=${v}\n`)) && end - p >= 10) return 100;
      if (startsWith(b, p, ascii(`version=${v}\r\n`)) && end - p >= 11) return 100;
    }
    return 0;
  }
  return 0;
}

/** Each driver's probe, in QEMU's order; a score of 0 means "not mine". */
const PROBES: Array<[ProbedFormat, (b: Uint8Array, filename: string) => number]> = [
  [
    "bochs",
    (b) =>
      cString(b, 0, "Bochs Virtual HD Image") && cString(b, 32, "Redolog") && cString(b, 48, "Growing") && [0x20000, 0x10000].includes(le32(b, 64))
        ? 100
        : 0,
  ],
  ["cloop", (b) => (startsWith(b, 0, CLOOP_MAGIC) ? 2 : 0)],
  ["dmg", (_b, filename) => (filename.length > 4 && filename.endsWith(".dmg") ? 2 : 0)],
  ["luks", (b) => (startsWith(b, 0, LUKS_MAGIC) && be16(b, 6) === 1 ? 100 : 0)],
  [
    "parallels",
    (b) => ((startsWith(b, 0, ascii("WithoutFreeSpace")) || startsWith(b, 0, ascii("WithouFreSpacExt"))) && le32(b, 16) === 2 ? 100 : 0),
  ],
  ["qcow", (b) => (startsWith(b, 0, QCOW_MAGIC) && be32(b, 4) === 1 ? 100 : 0)],
  ["qcow2", (b) => (startsWith(b, 0, QCOW_MAGIC) && be32(b, 4) >= 2 ? 100 : 0)],
  ["qed", (b) => (startsWith(b, 0, ascii("QED\0")) ? 100 : 0)],
  ["vdi", (b) => (le32(b, 64) === 0xbeda107f ? 100 : 0)],
  ["vhdx", (b) => (startsWith(b, 0, ascii("vhdxfile")) ? 100 : 0)],
  ["vmdk", (b) => vmdkScore(b)],
  ["vpc", (b) => (startsWith(b, 0, ascii("conectix")) ? 100 : 0)],
];

/**
 * QEMU's format verdict on a file whose first bytes are `head` (up to PROBE_BYTES; shorter means the file
 * ends there) and whose name is `filename`.
 */
export function probeFormatName(head: Uint8Array, filename: string): ProbedFormat {
  const b = new Uint8Array(PROBE_BYTES);
  b.set(head.subarray(0, PROBE_BYTES));
  let best: ProbedFormat = "raw";
  let bestScore = 1;
  for (const [name, probe] of PROBES) {
    const score = probe(b, filename);
    if (score > bestScore) {
      best = name;
      bestScore = score;
    }
  }
  return best;
}

/** The formats qcowkit opens (luks: a raw LUKS1 volume, see luks-image.ts). */
export type ImageFormat = "qcow2" | "raw" | "luks";

/**
 * Decide the format of an open store as QEMU 7.2 probes it: qcow2, raw or luks, which qcowkit reads. A file another
 * format claims (vmdk, vhdx, vpc, vdi, qed, parallels, dmg, bochs, cloop, qcow) is refused with QEMU's
 * message for a driver it does not have, instead of being read as a raw disk.
 */
export async function probeFormat(store: ByteStore, filename: string = store.name): Promise<ImageFormat> {
  const size = await store.size();
  if (size === 0) return "raw";
  const head = new Uint8Array(Math.min(PROBE_BYTES, size));
  await store.read(0, head);
  const format = probeFormatName(head, filename);
  if (format === "qcow2" || format === "raw" || format === "luks") return format;
  throw new Qcow2Error("NOT_SUPPORTED", `Unknown driver '${format}'`, { errno: "ENOTSUP" });
}
