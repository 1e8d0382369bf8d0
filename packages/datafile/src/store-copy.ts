import { Qcow2Error, type ByteStore } from "@qcowkit/spec";

/**
 * The portable forms of ByteStore.copyFrom and ByteStore.zeroSectors, through `read` and `write` with one
 * buffer: MemoryStore uses them, and FileStore without its native addon (or for a source that is not a file).
 * Callers check their arguments first.
 */

/** Bytes per sector of `zeroSectors`. */
export const sectorBytes = 512;
/** Bytes per piece of the copy and scan loops (a multiple of the sector size). */
export const copyPieceBytes = 2 * 1024 * 1024;

/**
 * Copy `length` bytes of `source` at `sourceOffset` to `target` at `offset` through one buffer of at most
 * `pieceBytes`: `source.read` (past its end reads zeros), then `target.write`. Within one store, overlapping
 * ranges are copied as memmove does (backwards when the target range starts after the source range).
 */
export async function copyThroughBuffer(
  source: ByteStore,
  sourceOffset: number,
  target: ByteStore,
  offset: number,
  length: number,
  scan?: Uint8Array,
  pieceBytes = copyPieceBytes,
): Promise<void> {
  if (length === 0) return;
  const buffer = new Uint8Array(Math.min(length, pieceBytes));
  const pieceCount = Math.ceil(length / buffer.byteLength);
  const backward = source === target && offset > sourceOffset && offset < sourceOffset + length;
  for (let i = 0; i < pieceCount; i++) {
    const start = (backward ? pieceCount - 1 - i : i) * buffer.byteLength;
    const piece = buffer.subarray(0, Math.min(buffer.byteLength, length - start));
    await source.read(sourceOffset + start, piece);
    if (scan) markZeroSectors(piece, scan, start / sectorBytes);
    await target.write(offset + start, piece);
  }
}

/** Refuse a `scan` array of copyFrom that is not one byte per sector of `length` bytes. */
export function assertScanFlags(name: string, scan: Uint8Array | undefined, length: number): void {
  if (scan !== undefined && (!(scan instanceof Uint8Array) || scan.length !== Math.ceil(length / sectorBytes))) {
    throw new Qcow2Error("INVALID_ARGUMENT", `${name}: copy scan flags must be one byte per 512-byte sector of the range`);
  }
}

/** One flag per sector of `[offset, offset + length)`: `Math.ceil(length / 512)` bytes. */
export function zeroSectorFlags(length: number): Uint8Array {
  return new Uint8Array(Math.ceil(length / sectorBytes));
}

/**
 * `flags[at + i]` = 1 when sector i of `bytes` (512 bytes each from its start, the last one possibly
 * partial) is all zeros, else 0. Compares 32-bit words where the view is aligned.
 */
export function markZeroSectors(bytes: Uint8Array, flags: Uint8Array, at: number): void {
  const length = bytes.byteLength;
  const words = (bytes.byteOffset & 3) === 0 ? new Uint32Array(bytes.buffer, bytes.byteOffset, length >>> 2) : undefined;
  for (let start = 0, flag = at; start < length; start += sectorBytes, flag++) {
    const end = Math.min(start + sectorBytes, length);
    let zero = true;
    let i = start;
    if (words) {
      const wordEnd = end >>> 2;
      for (let w = start >>> 2; w < wordEnd; w++) {
        if (words[w] !== 0) {
          zero = false;
          break;
        }
      }
      i = wordEnd << 2;
    }
    for (; zero && i < end; i++) if (bytes[i] !== 0) zero = false;
    flags[flag] = zero ? 1 : 0;
  }
}

/**
 * ByteStore.zeroSectors by reading `store` in pieces of `pieceBytes`. `knownZero(start, end)`, when given,
 * may answer true for a range the store knows reads as zeros without reading it (a hole of a memory store).
 */
export async function zeroSectorsByReading(
  store: ByteStore,
  offset: number,
  length: number,
  knownZero?: (start: number, end: number) => boolean,
  pieceBytes = copyPieceBytes,
): Promise<Uint8Array> {
  const flags = zeroSectorFlags(length);
  if (length === 0) return flags;
  const buffer = new Uint8Array(Math.min(length, pieceBytes));
  for (let start = 0; start < length; start += buffer.byteLength) {
    const end = Math.min(start + buffer.byteLength, length);
    const at = start / sectorBytes;
    if (knownZero?.(offset + start, offset + end)) {
      flags.fill(1, at, at + Math.ceil((end - start) / sectorBytes));
      continue;
    }
    const piece = buffer.subarray(0, end - start);
    await store.read(offset + start, piece);
    markZeroSectors(piece, flags, at);
  }
  return flags;
}
