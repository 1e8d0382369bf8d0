/**
 * Big-endian field access on plain Uint8Arrays (NBD is network byte order throughout) and NBD strings.
 * Indexing bytes directly avoids building a DataView per message on the hot path.
 */
import { decodeText, encodeText } from "@qcowkit/spec";

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

/** A 64-bit field as hexadecimal, whatever its size (for messages about bad magics). */
export function hexU64(b: Uint8Array, at: number): string {
  const hi = readU32(b, at);
  const lo = readU32(b, at + 4).toString(16);
  return hi === 0 ? lo : hi.toString(16) + lo.padStart(8, "0");
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

/** A decoder that throws on invalid UTF-8 (every runtime has TextDecoder; typed here to stay lib-free). */
const strictDecoder = new (globalThis as unknown as {
  TextDecoder: new (label: string, opts: { fatal: boolean }) => { decode(bytes: Uint8Array): string };
}).TextDecoder("utf-8", { fatal: true });

/** Decodes an NBD string: valid UTF-8 without NUL. Returns null when it is not one. */
export function decodeNbdString(bytes: Uint8Array): string | null {
  if (bytes.includes(0)) return null;
  try {
    return strictDecoder.decode(bytes);
  } catch {
    return null;
  }
}

/** Text from the peer for messages: invalid UTF-8 replaced, control characters turned into spaces. */
export function decodePeerText(bytes: Uint8Array): string {
  return oneLine(decodeText(bytes));
}

/** Control characters become spaces, so text from the peer stays one line in messages and logs. */
export function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]/g, " ");
}

/** Cuts a string so its UTF-8 form fits `limitBytes` (the NBD string limit by default). */
export function truncateString(text: string, limitBytes = 4096): string {
  if (text.length * 3 <= limitBytes) return text;
  let out = text;
  while (encodeText(out).byteLength > limitBytes) out = out.slice(0, Math.floor(out.length * 0.9));
  return out;
}
