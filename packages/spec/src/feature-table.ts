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

export function decodeFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let i = 0; i + FEATURE_TABLE_ENTRY_BYTES <= data.byteLength; i += FEATURE_TABLE_ENTRY_BYTES) {
    const type = data[i]!;
    const kind = KINDS[type];
    if (kind === undefined) continue;
    out.push({ kind, bit: data[i + 1]!, name: decodePaddedText(data.subarray(i + 2, i + FEATURE_TABLE_ENTRY_BYTES)) });
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
    out.set(name, at + 2);
  });
  return out;
}

/**
 * QEMU's message for incompatible bits it does not know: each unknown bit named from the image's feature
 * table where it has an entry, else "Unknown incompatible feature: <hex mask>", joined by ", ".
 */
export function unsupportedFeaturesMessage(unknownBits: bigint, table: readonly FeatureName[]): string {
  const parts: string[] = [];
  let remaining = unknownBits;
  for (const entry of table) {
    if (entry.kind !== "incompatible" || entry.bit > 63) continue;
    const mask = 1n << BigInt(entry.bit);
    if (remaining & mask) {
      parts.push(entry.name);
      remaining &= ~mask;
    }
  }
  if (remaining) parts.push(`Unknown incompatible feature: ${remaining.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(", ")}`;
}
