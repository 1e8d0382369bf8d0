/**
 * The LUKS anti-forensic information splitter (LUKS1 on-disk format, section "AF-Splitter"): a key of n
 * bytes becomes `stripes` blocks of n bytes; all but the last are random, and the key is recovered only
 * from all of them together. Between stripes the running value passes through the diffusion function H:
 * the value is cut into digest-sized pieces, piece i becomes hash(be32(i) || piece), truncated to the
 * piece's length.
 */
import { HASH_BYTES, digest, digestNow, randomBytes, type HashAlg } from "./hash";

/** H on the calling thread, when a synchronous digest is registered (the Node entry): undefined otherwise. */
function diffuseNow(alg: HashAlg, block: Uint8Array, input: Uint8Array): Uint8Array | undefined {
  const size = HASH_BYTES[alg];
  const out = new Uint8Array(block.byteLength);
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  for (let i = 0; i * size < block.byteLength; i++) {
    const length = Math.min(size, block.byteLength - i * size);
    view.setUint32(0, i);
    input.set(block.subarray(i * size, i * size + length), 4);
    const d = digestNow(alg, input.subarray(0, 4 + length));
    if (d === undefined) return undefined;
    out.set(d.subarray(0, length), i * size);
  }
  return out;
}

async function diffuse(alg: HashAlg, block: Uint8Array): Promise<Uint8Array> {
  const size = HASH_BYTES[alg];
  const pieces: Promise<Uint8Array>[] = [];
  for (let i = 0; i * size < block.byteLength; i++) {
    const piece = block.subarray(i * size, Math.min(block.byteLength, (i + 1) * size));
    const input = new Uint8Array(4 + piece.byteLength);
    new DataView(input.buffer).setUint32(0, i);
    input.set(piece, 4);
    pieces.push(digest(alg, input).then((d) => d.subarray(0, piece.byteLength)));
  }
  const out = new Uint8Array(block.byteLength);
  let at = 0;
  for (const p of await Promise.all(pieces)) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function xorInto(dst: Uint8Array, src: Uint8Array): void {
  for (let i = 0; i < dst.byteLength; i++) dst[i]! ^= src[i]!;
}

/** The running value after the first `stripes - 1` stripes of `material`. */
async function accumulate(alg: HashAlg, material: Uint8Array, keyBytes: number, stripes: number): Promise<Uint8Array> {
  let d: Uint8Array = new Uint8Array(keyBytes);
  // One scratch input for the synchronous digests: 4 bytes of piece number, then the piece.
  const input = new Uint8Array(4 + HASH_BYTES[alg]);
  for (let s = 0; s < stripes - 1; s++) {
    xorInto(d, material.subarray(s * keyBytes, (s + 1) * keyBytes));
    d = diffuseNow(alg, d, input) ?? (await diffuse(alg, d));
  }
  return d;
}

/** Split `key` into `stripes` stripes (key.byteLength * stripes bytes). */
export async function afSplit(alg: HashAlg, key: Uint8Array, stripes: number): Promise<Uint8Array> {
  const n = key.byteLength;
  const material = randomBytes(n * stripes);
  const d = await accumulate(alg, material, n, stripes);
  const last = material.subarray((stripes - 1) * n);
  last.set(d);
  xorInto(last, key);
  return material;
}

/** Recover the key of `keyBytes` bytes from split `material` (keyBytes * stripes bytes). */
export async function afMerge(alg: HashAlg, material: Uint8Array, keyBytes: number, stripes: number): Promise<Uint8Array> {
  const d = await accumulate(alg, material, keyBytes, stripes);
  xorInto(d, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes));
  return d;
}
