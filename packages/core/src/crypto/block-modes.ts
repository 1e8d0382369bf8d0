/**
 * Block cipher modes over AES, in place and without padding (lengths are whole 16-byte blocks):
 * - CBC (NIST SP 800-38A): each plaintext block is XORed with the previous ciphertext block (the IV first);
 * - XTS (IEEE 1619 / SP 800-38E): each block is XORed with a tweak before and after the data cipher; the
 *   first tweak is the IV encrypted with the tweak key, the next ones multiply it by x in GF(2^128)
 *   (little-endian bytes, reduction 0x87). Data units here are whole blocks, so no ciphertext stealing.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { Aes } from "./aes";

export const BLOCK_BYTES = 16;

function checkBlocks(data: Uint8Array): void {
  if (data.byteLength % BLOCK_BYTES !== 0) {
    throw new Qcow2Error("INVALID_ARGUMENT", `Length ${data.byteLength} is not a multiple of the cipher block size`);
  }
}

function xorBlock(dst: Uint8Array, at: number, mask: Uint8Array): void {
  for (let i = 0; i < BLOCK_BYTES; i++) dst[at + i]! ^= mask[i]!;
}

export function cbcEncrypt(aes: Aes, iv: Uint8Array, data: Uint8Array): void {
  checkBlocks(data);
  let chain = iv;
  for (let at = 0; at < data.byteLength; at += BLOCK_BYTES) {
    xorBlock(data, at, chain);
    aes.encryptBlock(data, at, data, at);
    chain = data.subarray(at, at + BLOCK_BYTES);
  }
}

export function cbcDecrypt(aes: Aes, iv: Uint8Array, data: Uint8Array): void {
  checkBlocks(data);
  const chain = Uint8Array.from(iv.subarray(0, BLOCK_BYTES));
  const saved = new Uint8Array(BLOCK_BYTES);
  for (let at = 0; at < data.byteLength; at += BLOCK_BYTES) {
    saved.set(data.subarray(at, at + BLOCK_BYTES));
    aes.decryptBlock(data, at, data, at);
    xorBlock(data, at, chain);
    chain.set(saved);
  }
}

/** Multiply the tweak by x in GF(2^128) (IEEE 1619 section 5.2). */
function nextTweak(t: Uint8Array): void {
  const carry = t[15]! >>> 7;
  for (let i = 15; i > 0; i--) t[i] = ((t[i]! << 1) | (t[i - 1]! >>> 7)) & 0xff;
  t[0] = ((t[0]! << 1) & 0xff) ^ (carry ? 0x87 : 0);
}

/** XTS over `data` (one data unit) with the tweak from `iv`; `decrypt` picks the direction of the data cipher. */
export function xtsCrypt(dataKey: Aes, tweakKey: Aes, iv: Uint8Array, data: Uint8Array, decrypt: boolean): void {
  checkBlocks(data);
  const tweak = new Uint8Array(BLOCK_BYTES);
  tweakKey.encryptBlock(iv, 0, tweak, 0);
  for (let at = 0; at < data.byteLength; at += BLOCK_BYTES) {
    xorBlock(data, at, tweak);
    if (decrypt) dataKey.decryptBlock(data, at, data, at);
    else dataKey.encryptBlock(data, at, data, at);
    xorBlock(data, at, tweak);
    nextTweak(tweak);
  }
}
