/** Small big-endian helpers shared by every codec. All multi-byte integers in qcow2 are big endian. */

/** A DataView over exactly the bytes of `u8` (Node's pooled Buffers start at a non-zero byteOffset). */
export function viewOf(u8: Uint8Array): DataView {
  return new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
}

const TWO_32 = 4294967296;

/**
 * Read a big-endian u64 as a number. Values of 2^53 and above come back as a number >= 2^53 (not exact);
 * callers that need the value validate it with `Number.isSafeInteger`.
 */
export function getU64(view: DataView, byteOffset: number): number {
  return view.getUint32(byteOffset) * TWO_32 + view.getUint32(byteOffset + 4);
}

/** Write a safe non-negative integer as a big-endian u64. */
export function setU64(view: DataView, byteOffset: number, value: number): void {
  view.setUint32(byteOffset, Math.floor(value / TWO_32));
  view.setUint32(byteOffset + 4, value >>> 0);
}

export function getU64Big(view: DataView, byteOffset: number): bigint {
  return view.getBigUint64(byteOffset);
}

export function setU64Big(view: DataView, byteOffset: number, value: bigint): void {
  view.setBigUint64(byteOffset, BigInt.asUintN(64, value));
}

/** TextEncoder/TextDecoder exist in every JavaScript runtime we target; typed locally to stay lib-free. */
interface TextCodecs {
  TextEncoder: new () => { encode(text: string): Uint8Array };
  TextDecoder: new (label?: string) => { decode(bytes: Uint8Array): string };
}
const codecs = globalThis as unknown as TextCodecs;
const encoder = new codecs.TextEncoder();
const decoder = new codecs.TextDecoder("utf-8");

export function encodeText(text: string): Uint8Array {
  return encoder.encode(text);
}

export function decodeText(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** Decode a zero-padded fixed-width string field (stops at the first NUL). */
export function decodePaddedText(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return decodeText(end < 0 ? bytes : bytes.subarray(0, end));
}

/** `bytes` when it holds at least `length` bytes, else a copy zero-filled to `length` (reads past EOF give zeros). */
export function zeroPadded(bytes: Uint8Array, length: number): Uint8Array {
  if (bytes.byteLength >= length) return bytes;
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

export function isAligned(value: number, alignment: number): boolean {
  return value % alignment === 0;
}

/**
 * Index of the first non-zero byte of `bytes[from, to)`, or -1 when they are all zero. Scans 4 bytes at a
 * time where the alignment allows (metadata tables are mostly zeros: this is how they are skimmed in bulk).
 */
export function firstNonZeroByte(bytes: Uint8Array, from = 0, to: number = bytes.byteLength): number {
  let i = Math.max(0, from);
  const end = Math.min(to, bytes.byteLength);
  if (end <= i) return -1;
  // Single bytes up to a 4-byte boundary of the underlying buffer, then words, then the tail.
  while (i < end && ((bytes.byteOffset + i) & 3) !== 0) {
    if (bytes[i] !== 0) return i;
    i++;
  }
  const words = (end - i) >>> 2;
  if (words > 0) {
    const u32 = new Uint32Array(bytes.buffer, bytes.byteOffset + i, words);
    // Eight words per test while they are all zero (half the time of one per test on sparse L2 tables, which
    // check scans end to end), then word by word from the block holding the first non-zero one.
    let w = 0;
    for (const last = words - 8; w <= last; w += 8) {
      if ((u32[w]! | u32[w + 1]! | u32[w + 2]! | u32[w + 3]! | u32[w + 4]! | u32[w + 5]! | u32[w + 6]! | u32[w + 7]!) !== 0) break;
    }
    for (; w < words; w++) {
      if (u32[w] !== 0) {
        for (let b = i + w * 4; ; b++) if (bytes[b] !== 0) return b;
      }
    }
    i += words << 2;
  }
  for (; i < end; i++) if (bytes[i] !== 0) return i;
  return -1;
}

/** True when every byte of `bytes` is zero. */
export function isAllZero(bytes: Uint8Array): boolean {
  return firstNonZeroByte(bytes) < 0;
}

/**
 * Re-cut a sequence of byte chunks into chunks of exactly `size` bytes (the last one may be shorter). Pieces
 * that already span a whole chunk are passed on as subarrays, without a copy; small pieces are gathered into
 * a new buffer per chunk, so a chunk handed out is never written again (the consumer may keep it).
 */
export async function* rechunk(source: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`rechunk: invalid chunk size ${size}`);
  let buf: Uint8Array | undefined;
  let fill = 0;
  for await (const chunk of source) {
    let at = 0;
    while (at < chunk.byteLength) {
      if (fill === 0 && chunk.byteLength - at >= size) {
        yield chunk.subarray(at, at + size);
        at += size;
        continue;
      }
      buf ??= new Uint8Array(size);
      const n = Math.min(size - fill, chunk.byteLength - at);
      buf.set(chunk.subarray(at, at + n), fill);
      fill += n;
      at += n;
      if (fill === size) {
        yield buf;
        buf = undefined;
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf!.subarray(0, fill);
}
