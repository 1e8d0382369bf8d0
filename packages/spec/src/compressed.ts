/**
 * Compressed cluster descriptor (bit 62 of an L2 entry set), docs/interop/qcow2.txt:
 *   x = 62 - (cluster_bits - 8)
 *   bits 0..x-1   host byte offset of the compressed data (any alignment)
 *   bits x..61    number of additional 512-byte sectors used by the compressed data
 * The compressed data may run into the next host cluster; its byte length is
 * (additional + 1) * 512 - (offset % 512).
 */
import { OFLAG_COMPRESSED_HI } from "./constants";
import { Qcow2Error } from "./errors";

const TWO_32 = 4294967296;

export interface CompressedDescriptor {
  /** Host byte offset of the compressed data. */
  hostOffset: number;
  /** Bytes to read starting at hostOffset (an upper bound of the compressed stream's length). */
  byteLength: number;
}

/** Number of offset bits in a descriptor (QEMU's csize_shift). */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

export function decodeCompressedDescriptor(hi: number, lo: number, clusterBits: number): CompressedDescriptor {
  const x = compressedOffsetBits(clusterBits); // 49..61, always > 32
  const hiOffsetBits = x - 32;
  const hostOffset = (hi & ((1 << hiOffsetBits) - 1)) * TWO_32 + (lo >>> 0);
  const sizeMask = (1 << (clusterBits - 8)) - 1;
  const additional = (hi >>> hiOffsetBits) & sizeMask;
  const byteLength = (additional + 1) * 512 - (hostOffset % 512);
  return { hostOffset, byteLength };
}

/** Build the descriptor's two halves for compressed data of `byteLength` bytes at `hostOffset`. */
export function encodeCompressedDescriptor(
  hostOffset: number,
  byteLength: number,
  clusterBits: number,
): { hi: number; lo: number } {
  const x = compressedOffsetBits(clusterBits);
  const hiOffsetBits = x - 32;
  if (!Number.isSafeInteger(hostOffset) || hostOffset < 0 || hostOffset >= 2 ** x) {
    throw new Qcow2Error("INVALID_ARGUMENT", "compressed cluster offset too large");
  }
  if (!Number.isSafeInteger(byteLength) || byteLength < 1) {
    throw new Qcow2Error("INVALID_ARGUMENT", "compressed cluster length must be at least 1 byte");
  }
  const additional = Math.floor((hostOffset + byteLength - 1) / 512) - Math.floor(hostOffset / 512);
  if (additional >= 2 ** (clusterBits - 8)) {
    throw new Qcow2Error("INVALID_ARGUMENT", "compressed cluster too large");
  }
  const hi = (OFLAG_COMPRESSED_HI | (additional << hiOffsetBits) | Math.floor(hostOffset / TWO_32)) >>> 0;
  return { hi, lo: hostOffset >>> 0 };
}
