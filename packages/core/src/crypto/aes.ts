/**
 * The AES block cipher (FIPS-197) for 128, 192 and 256-bit keys: one 16-byte block at a time, in place or
 * between buffers. Table driven: the S-box is derived from the multiplicative inverse in GF(2^8) and the
 * affine map of FIPS-197 section 5.1.1; the round tables fold SubBytes, ShiftRows and MixColumns together
 * (decryption uses the equivalent inverse cipher of section 5.3.5). Runtime-agnostic: no platform crypto.
 */
import { Qcow2Error } from "@qcowkit/spec";

/** Multiplication by x (0x02) in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1. */
const xtime = (b: number) => ((b << 1) ^ (b & 0x80 ? 0x1b : 0)) & 0xff;

const SBOX = new Uint8Array(256);
const INV_SBOX = new Uint8Array(256);
const ENC = [new Uint32Array(256), new Uint32Array(256), new Uint32Array(256), new Uint32Array(256)] as const;
const DEC = [new Uint32Array(256), new Uint32Array(256), new Uint32Array(256), new Uint32Array(256)] as const;

function mul(a: number, b: number): number {
  let product = 0;
  for (; b; b >>= 1, a = xtime(a)) if (b & 1) product ^= a;
  return product;
}

const rotr8 = (w: number) => ((w >>> 8) | (w << 24)) >>> 0;

/** The tables are built on the first key (not at import: every program that links the core would pay). */
let tablesBuilt = false;

function buildTables(): void {
  if (tablesBuilt) return;
  tablesBuilt = true;
  // Powers and logarithms of the generator 0x03.
  const exp = new Uint8Array(255);
  const log = new Uint8Array(256);
  for (let i = 0, x = 1; i < 255; i++, x ^= xtime(x)) {
    exp[i] = x;
    log[x] = i;
  }
  for (let i = 0; i < 256; i++) {
    const inv = i === 0 ? 0 : exp[(255 - log[i]!) % 255]!;
    let s = inv;
    for (let r = 1; r <= 4; r++) s ^= ((inv << r) | (inv >>> (8 - r))) & 0xff;
    s ^= 0x63;
    SBOX[i] = s;
    INV_SBOX[s] = i;
  }
  for (let i = 0; i < 256; i++) {
    const s = SBOX[i]!;
    const e = ((xtime(s) << 24) | (s << 16) | (s << 8) | (xtime(s) ^ s)) >>> 0;
    const v = INV_SBOX[i]!;
    const d = ((mul(v, 14) << 24) | (mul(v, 9) << 16) | (mul(v, 13) << 8) | mul(v, 11)) >>> 0;
    for (let t = 0, ew = e, dw = d; t < 4; t++, ew = rotr8(ew), dw = rotr8(dw)) {
      ENC[t]![i] = ew;
      DEC[t]![i] = dw;
    }
  }
}

const RCON = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];

const subWord = (w: number) =>
  ((SBOX[w >>> 24]! << 24) | (SBOX[(w >>> 16) & 0xff]! << 16) | (SBOX[(w >>> 8) & 0xff]! << 8) | SBOX[w & 0xff]!) >>> 0;

const readWord = (b: Uint8Array, at: number) => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

function writeWord(b: Uint8Array, at: number, w: number): void {
  b[at] = w >>> 24;
  b[at + 1] = w >>> 16;
  b[at + 2] = w >>> 8;
  b[at + 3] = w;
}

/** One AES key, expanded for both directions. */
export class Aes {
  /** 10, 12 or 14. */
  readonly rounds: number;
  private readonly encKey: Uint32Array;
  private readonly decKey: Uint32Array;

  /** `key`: 16, 24 or 32 bytes. */
  constructor(key: Uint8Array) {
    buildTables();
    const nk = key.byteLength / 4;
    if (nk !== 4 && nk !== 6 && nk !== 8) {
      throw new Qcow2Error("INVALID_ARGUMENT", `Invalid AES key length ${key.byteLength}`);
    }
    this.rounds = nk + 6;
    const words = 4 * (this.rounds + 1);
    const w = new Uint32Array(words);
    for (let i = 0; i < nk; i++) w[i] = readWord(key, 4 * i);
    for (let i = nk; i < words; i++) {
      let t = w[i - 1]!;
      if (i % nk === 0) t = (subWord(((t << 8) | (t >>> 24)) >>> 0) ^ (RCON[i / nk - 1]! << 24)) >>> 0;
      else if (nk > 6 && i % nk === 4) t = subWord(t);
      w[i] = (w[i - nk]! ^ t) >>> 0;
    }
    this.encKey = w;
    // Equivalent inverse cipher: round keys in reverse order, InvMixColumns applied to the inner ones.
    const d = new Uint32Array(words);
    for (let r = 0; r <= this.rounds; r++) {
      for (let c = 0; c < 4; c++) {
        const k = w[4 * (this.rounds - r) + c]!;
        // Stored in the column order crypt() walks for decryption (0, 3, 2, 1).
        d[4 * r + ((4 - c) & 3)] =
          r === 0 || r === this.rounds
            ? k
            : (DEC[0][SBOX[k >>> 24]!]! ^ DEC[1][SBOX[(k >>> 16) & 0xff]!]! ^ DEC[2][SBOX[(k >>> 8) & 0xff]!]! ^ DEC[3][SBOX[k & 0xff]!]!) >>> 0;
      }
    }
    this.decKey = d;
  }

  /** Encrypt the block at `src[srcAt..+16]` into `dst[dstAt..+16]` (the two may be the same bytes). */
  encryptBlock(src: Uint8Array, srcAt: number, dst: Uint8Array, dstAt: number): void {
    this.crypt(src, srcAt, dst, dstAt, this.encKey, ENC, SBOX, 4, 12);
  }

  /** Decrypt the block at `src[srcAt..+16]` into `dst[dstAt..+16]` (the two may be the same bytes). */
  decryptBlock(src: Uint8Array, srcAt: number, dst: Uint8Array, dstAt: number): void {
    this.crypt(src, srcAt, dst, dstAt, this.decKey, DEC, INV_SBOX, 12, 4);
  }

  /**
   * The rounds of both directions. Encryption takes row r of output column c from input column c + r
   * (ShiftRows); decryption from column c - r. Walking the columns of a decryption in the order 0, 3, 2, 1
   * (byte offsets `at1` = 12 and `at3` = 4 instead of 4 and 12) turns c - r into c + r, so one round
   * function serves both, with the decryption round keys stored in that order.
   */
  private crypt(
    src: Uint8Array,
    srcAt: number,
    dst: Uint8Array,
    dstAt: number,
    rk: Uint32Array,
    tables: readonly [Uint32Array, Uint32Array, Uint32Array, Uint32Array],
    box: Uint8Array,
    at1: number,
    at3: number,
  ): void {
    const [t0, t1, t2, t3] = tables;
    let s0 = readWord(src, srcAt) ^ rk[0]!;
    let s1 = readWord(src, srcAt + at1) ^ rk[1]!;
    let s2 = readWord(src, srcAt + 8) ^ rk[2]!;
    let s3 = readWord(src, srcAt + at3) ^ rk[3]!;
    let k = 4;
    for (let round = 1; round < this.rounds; round++, k += 4) {
      const n0 = t0[s0 >>> 24]! ^ t1[(s1 >>> 16) & 0xff]! ^ t2[(s2 >>> 8) & 0xff]! ^ t3[s3 & 0xff]! ^ rk[k]!;
      const n1 = t0[s1 >>> 24]! ^ t1[(s2 >>> 16) & 0xff]! ^ t2[(s3 >>> 8) & 0xff]! ^ t3[s0 & 0xff]! ^ rk[k + 1]!;
      const n2 = t0[s2 >>> 24]! ^ t1[(s3 >>> 16) & 0xff]! ^ t2[(s0 >>> 8) & 0xff]! ^ t3[s1 & 0xff]! ^ rk[k + 2]!;
      const n3 = t0[s3 >>> 24]! ^ t1[(s0 >>> 16) & 0xff]! ^ t2[(s1 >>> 8) & 0xff]! ^ t3[s2 & 0xff]! ^ rk[k + 3]!;
      s0 = n0;
      s1 = n1;
      s2 = n2;
      s3 = n3;
    }
    const last = (a: number, b: number, c: number, d: number, key: number) =>
      ((box[a >>> 24]! << 24) | (box[(b >>> 16) & 0xff]! << 16) | (box[(c >>> 8) & 0xff]! << 8) | box[d & 0xff]!) ^ key;
    const n0 = last(s0, s1, s2, s3, rk[k]!);
    const n1 = last(s1, s2, s3, s0, rk[k + 1]!);
    const n2 = last(s2, s3, s0, s1, rk[k + 2]!);
    const n3 = last(s3, s0, s1, s2, rk[k + 3]!);
    writeWord(dst, dstAt, n0);
    writeWord(dst, dstAt + at1, n1);
    writeWord(dst, dstAt + 8, n2);
    writeWord(dst, dstAt + at3, n3);
  }
}
