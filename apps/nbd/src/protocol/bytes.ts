/**
 * Big-endian field access on plain Uint8Arrays (NBD is network byte order throughout). Indexing bytes
 * directly avoids building a DataView per message on the hot path.
 */

export function readU16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

export function readU32(b: Uint8Array, at: number): number {
  return b[at]! * 0x1000000 + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!);
}

/** A 64-bit unsigned field as a number, or -1 when it is 2^53 or more (not exactly representable). */
export function readU64(b: Uint8Array, at: number): number {
  const hi = readU32(b, at);
  if (hi > 0x1fffff) return -1;
  return hi * 0x100000000 + readU32(b, at + 4);
}

export function writeU16(b: Uint8Array, at: number, value: number): void {
  b[at] = value >>> 8;
  b[at + 1] = value;
}

export function writeU32(b: Uint8Array, at: number, value: number): void {
  b[at] = value >>> 24;
  b[at + 1] = value >>> 16;
  b[at + 2] = value >>> 8;
  b[at + 3] = value;
}

/** Writes a non-negative safe integer as a 64-bit unsigned field. */
export function writeU64(b: Uint8Array, at: number, value: number): void {
  writeU32(b, at, Math.floor(value / 0x100000000));
  writeU32(b, at + 4, value >>> 0);
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

export function encodeUtf8(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

/** Decodes an NBD string: valid UTF-8 without NUL. Returns null when it is not one. */
export function decodeNbdString(bytes: Uint8Array): string | null {
  if (bytes.includes(0)) return null;
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return null;
  }
}

/** Concatenates byte arrays into one new array. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
