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

/** 32-bit words over `b` when it is aligned for them on a little-endian machine (lengths are whole blocks). */
function wordsOf(b: Uint8Array): Uint32Array | undefined {
  return LITTLE_ENDIAN && b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2) : undefined;
}

/** dst = a ^ b (all of the same length, a multiple of 16; `a` may be `dst`). */
function xorTo(dst: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  const d = wordsOf(dst);
  const x = wordsOf(a);
  const y = wordsOf(b);
  if (d && x && y) {
    for (let i = 0; i < d.length; i++) d[i] = x[i]! ^ y[i]!;
  } else {
    for (let i = 0; i < dst.byteLength; i++) dst[i] = a[i]! ^ b[i]!;
  }
}

/**
 * dst = src ^ (the tweak of each block): unit k's first tweak is `first[16k..16k+16]`, each next block's is
 * the previous one times x. The tweaks are made again on each pass rather than stored (cheaper than memory).
 */
function xorTweaks(first: Uint8Array, dst: Uint8Array, src: Uint8Array, unit: number): void {
  const f = wordsOf(first);
  const w = wordsOf(dst);
  const v = wordsOf(src);
  if (f && w && v) {
    for (let at = 0, k = 0; at < dst.byteLength; at += unit, k++) {
      let a = f[4 * k]! | 0;
      let b = f[4 * k + 1]! | 0;
      let c = f[4 * k + 2]! | 0;
      let d = f[4 * k + 3]! | 0;
      const end = Math.min(dst.byteLength, at + unit) >>> 2;
      for (let p = at >>> 2; p < end; p += 4) {
        w[p] = v[p]! ^ a;
        w[p + 1] = v[p + 1]! ^ b;
        w[p + 2] = v[p + 2]! ^ c;
        w[p + 3] = v[p + 3]! ^ d;
        const carry = d >>> 31;
        d = (d << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ (carry * 0x87);
      }
    }
    return;
  }
  const t = new Uint8Array(BLOCK_BYTES);
  for (let at = 0, k = 0; at < dst.byteLength; at += unit, k++) {
    t.set(first.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES));
    const end = Math.min(dst.byteLength, at + unit);
    for (let blk = at; blk < end; blk += BLOCK_BYTES) {
      for (let i = 0; i < BLOCK_BYTES; i++) dst[blk + i] = src[blk + i]! ^ t[i]!;
      const carry = t[15]! >>> 7;
      for (let i = 15; i > 0; i--) t[i] = ((t[i]! << 1) | (t[i - 1]! >>> 7)) & 0xff;
      t[0] = ((t[0]! << 1) & 0xff) ^ (carry ? 0x87 : 0);
    }
  }
}

/**
 * XTS over the units of `data` (`unit` bytes each, the last possibly shorter), in place; `ivs` holds one
 * 16-byte IV per unit (and may be changed).
 */
export function xtsUnits(dataKey: AesBlocks, tweakKey: AesBlocks, ivs: Uint8Array, data: Uint8Array, unit: number, decrypt: boolean): void {
  checkBlocks(data);
  const first = tweakKey.encrypt(ivs);
  xorTweaks(first, data, data, unit);
  xorTweaks(first, data, decrypt ? dataKey.decrypt(data) : dataKey.encrypt(data), unit);
}

/** CBC decryption of the units of `data`, in place, one IV per unit in `ivs`. */
export function cbcDecryptUnits(aes: AesBlocks, ivs: Uint8Array, data: Uint8Array, unit: number): void {
  checkBlocks(data);
  // What each block is XORed with after decryption: its unit's IV, or the ciphertext block before it.
  const chain = new Uint8Array(data.byteLength);
  for (let at = 0, k = 0; at < data.byteLength; at += unit, k++) {
    const end = Math.min(data.byteLength, at + unit);
    chain.set(ivs.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES), at);
    chain.set(data.subarray(at, end - BLOCK_BYTES), at + BLOCK_BYTES);
  }
  xorTo(data, aes.decrypt(data), chain);
}

/** CBC encryption of the units of `data`, in place, one IV per unit in `ivs`. */
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
    const out = aes.encrypt(column.subarray(0, n * BLOCK_BYTES));
    for (let k = 0; k < n; k++) data.set(out.subarray(k * BLOCK_BYTES, (k + 1) * BLOCK_BYTES), k * unit + pos);
  }
}
