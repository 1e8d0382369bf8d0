/**
 * Feature name table header extension (0x6803f857): 48-byte entries of
 *   u8 type (0 incompatible, 1 compatible, 2 autoclear), u8 bit number, char name[46] (zero padded).
 */
import { decodePaddedText, encodeText } from "./bytes";
import { Qcow2Error } from "./errors";

export type FeatureKind = "incompatible" | "compatible" | "autoclear";

export interface FeatureName {
  kind: FeatureKind;
  bit: number;
  name: string;
}

const KINDS: FeatureKind[] = ["incompatible", "compatible", "autoclear"];
export const FEATURE_TABLE_ENTRY_BYTES = 48;
const NAME_BYTES = 46;

/** The table QEMU 7.2 writes, in its order. */
export const QEMU_FEATURE_TABLE: readonly FeatureName[] = [
  { kind: "incompatible", bit: 0, name: "dirty bit" },
  { kind: "incompatible", bit: 1, name: "corrupt bit" },
  { kind: "incompatible", bit: 2, name: "external data file" },
  { kind: "incompatible", bit: 3, name: "compression type" },
  { kind: "incompatible", bit: 4, name: "extended L2 entries" },
  { kind: "compatible", bit: 0, name: "lazy refcounts" },
  { kind: "autoclear", bit: 0, name: "bitmaps" },
  { kind: "autoclear", bit: 1, name: "raw external data" },
];

/**
 * Decode the table as QEMU reads it: entries up to the first one with an empty name (QEMU's table ends
 * there), a trailing partial entry padded with zeros, entries of unknown type skipped.
 */
export function decodeFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let i = 0; i + 2 < data.byteLength; i += FEATURE_TABLE_ENTRY_BYTES) {
    const entry = new Uint8Array(FEATURE_TABLE_ENTRY_BYTES);
    entry.set(data.subarray(i, i + FEATURE_TABLE_ENTRY_BYTES));
    const name = decodePaddedText(entry.subarray(2));
    if (name === "") break;
    const kind = KINDS[entry[0]!];
    if (kind === undefined) continue;
    out.push({ kind, bit: entry[1]!, name });
  }
  return out;
}

export function encodeFeatureTable(entries: readonly FeatureName[]): Uint8Array {
  const out = new Uint8Array(entries.length * FEATURE_TABLE_ENTRY_BYTES);
  entries.forEach((e, i) => {
    const at = i * FEATURE_TABLE_ENTRY_BYTES;
    out[at] = KINDS.indexOf(e.kind);
    out[at + 1] = e.bit;
    const name = encodeText(e.name);
    if (name.byteLength > NAME_BYTES) throw new Qcow2Error("INVALID_ARGUMENT", `feature name too long: ${e.name}`);
    // An empty name ends the table for readers; a bit number is one byte.
    if (name.byteLength === 0) throw new Qcow2Error("INVALID_ARGUMENT", "feature name is empty");
    if (!Number.isInteger(e.bit) || e.bit < 0 || e.bit > 255) {
      throw new Qcow2Error("INVALID_ARGUMENT", `feature bit out of range: ${e.bit}`);
    }
    out.set(name, at + 2);
  });
  return out;
}

/**
 * QEMU's message for incompatible bits it does not know: each unknown bit named from the image's feature
 * table where it has an entry, else "Unknown incompatible feature: <hex mask>", joined by ", ". Like QEMU on
 * x86-64, a bit number of 64 or more names bit (number mod 64).
 */
export function unsupportedFeaturesMessage(unknownBits: bigint, table: readonly FeatureName[]): string {
  const parts: string[] = [];
  let remaining = unknownBits;
  for (const entry of table) {
    if (entry.name === "") break;
    if (entry.kind !== "incompatible") continue;
    const mask = 1n << BigInt(entry.bit & 63);
    if (remaining & mask) {
      parts.push(entry.name);
      remaining &= ~mask;
    }
  }
  if (remaining) parts.push(`Unknown incompatible feature: ${remaining.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(", ")}`;
}
