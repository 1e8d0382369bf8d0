/**
 * Block cipher modes over AES for sector encryption, in place and without padding. The data is a run of
 * data units (512-byte sectors; the last may be shorter, whole blocks), each with its own IV, and each
 * mode makes as few AES calls as it can, each over many blocks:
 * - XTS (IEEE 1619 / SP 800-38E): each block is XORed with a tweak before and after the data cipher; a
 *   unit's first tweak is its IV encrypted with the tweak key, the next ones multiply it by x in GF(2^128)
 *   (little-endian bytes, reduction 0x87). Units are whole blocks, so no ciphertext stealing. All first
 *   tweaks in one call, then all data blocks in one call.
 * - CBC (NIST SP 800-38A): each plaintext block is XORed with the previous ciphertext block (the IV first).
 *   Decryption is one call over all blocks; encryption chains, so it goes block position by block position,
 *   every unit's block at that position in one call.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { AesBlocks } from "./aes-engine";

export const BLOCK_BYTES = 16;

function checkBlocks(data: Uint8Array): void {
  if (data.byteLength % BLOCK_BYTES !== 0) {
    throw new Qcow2Error("INVALID_ARGUMENT", `Length ${data.byteLength} is not a multiple of the cipher block size`);
  }
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** 32-bit words over `b` when it is aligned for them on a little-endian machine. */
function wordsOf(b: Uint8Array): Uint32Array | undefined {
  return LITTLE_ENDIAN && b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2) : undefined;
}

/** dst ^= src (same length, a multiple of 16). */
function xorInto(dst: Uint8Array, src: Uint8Array): void {
  const d = wordsOf(dst);
  const s = wordsOf(src);
  if (d && s) {
    for (let i = 0; i < d.length; i++) d[i]! ^= s[i]!;
  } else {
    for (let i = 0; i < dst.byteLength; i++) dst[i]! ^= src[i]!;
  }
}

/**
 * The tweak of every block of `byteLength` bytes of units: unit k starts with `first[16k..16k+16]`, each
 * next block's tweak is the previous one times x.
 */
function expandTweaks(first: Uint8Array, byteLength: number, unit: number): Uint8Array {
  const out = new Uint8Array(byteLength);
  const w = wordsOf(out);
  for (let at = 0, k = 0; at < byteLength; at += unit, k++) {
    out.set(first.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES), at);
    const end = Math.min(byteLength, at + unit);
    if (w) {
      for (let p = (at >>> 2) + 4; p < end >>> 2; p += 4) {
        const a = w[p - 4]!;
        const b = w[p - 3]!;
        const c = w[p - 2]!;
        const d = w[p - 1]!;
        w[p] = (a << 1) ^ (d >>> 31 ? 0x87 : 0);
        w[p + 1] = (b << 1) | (a >>> 31);
        w[p + 2] = (c << 1) | (b >>> 31);
        w[p + 3] = (d << 1) | (c >>> 31);
      }
    } else {
      for (let b = at + BLOCK_BYTES; b < end; b += BLOCK_BYTES) {
        const carry = out[b - 1]! >>> 7;
        for (let i = 15; i > 0; i--) out[b + i] = ((out[b - 16 + i]! << 1) | (out[b - 17 + i]! >>> 7)) & 0xff;
        out[b] = ((out[b - 16]! << 1) & 0xff) ^ (carry ? 0x87 : 0);
      }
    }
  }
  return out;
}

/**
 * XTS over the units of `data` (`unit` bytes each, the last possibly shorter); `ivs` holds one 16-byte IV
 * per unit and is overwritten (with the first tweaks).
 */
export function xtsUnits(dataKey: AesBlocks, tweakKey: AesBlocks, ivs: Uint8Array, data: Uint8Array, unit: number, decrypt: boolean): void {
  checkBlocks(data);
  tweakKey.encrypt(ivs);
  const tweaks = expandTweaks(ivs, data.byteLength, unit);
  xorInto(data, tweaks);
  if (decrypt) dataKey.decrypt(data);
  else dataKey.encrypt(data);
  xorInto(data, tweaks);
}

/** CBC decryption of the units of `data`, one IV per unit in `ivs`. */
export function cbcDecryptUnits(aes: AesBlocks, ivs: Uint8Array, data: Uint8Array, unit: number): void {
  checkBlocks(data);
  // What each block is XORed with after decryption: its unit's IV, or the ciphertext block before it.
  const chain = new Uint8Array(data.byteLength);
  for (let at = 0, k = 0; at < data.byteLength; at += unit, k++) {
    const end = Math.min(data.byteLength, at + unit);
    chain.set(ivs.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES), at);
    chain.set(data.subarray(at, end - BLOCK_BYTES), at + BLOCK_BYTES);
  }
  aes.decrypt(data);
  xorInto(data, chain);
}

/** CBC encryption of the units of `data`, one IV per unit in `ivs`. */
export function cbcEncryptUnits(aes: AesBlocks, ivs: Uint8Array, data: Uint8Array, unit: number): void {
  checkBlocks(data);
  const units = Math.ceil(data.byteLength / unit);
  const column = new Uint8Array(units * BLOCK_BYTES);
  for (let pos = 0; pos < unit; pos += BLOCK_BYTES) {
    // Every unit that has a block at `pos`: plaintext XOR (IV or the previous ciphertext block).
    let n = 0;
    for (let at = 0, k = 0; at + pos < data.byteLength && k < units; at += unit, k++, n++) {
      const src = at + pos;
      const prev = pos === 0 ? ivs.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES) : data.subarray(src - BLOCK_BYTES, src);
      for (let i = 0; i < BLOCK_BYTES; i++) column[n * BLOCK_BYTES + i] = data[src + i]! ^ prev[i]!;
    }
    if (n === 0) break;
    aes.encrypt(column.subarray(0, n * BLOCK_BYTES));
    for (let k = 0; k < n; k++) data.set(column.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES), k * unit + pos);
  }
}
