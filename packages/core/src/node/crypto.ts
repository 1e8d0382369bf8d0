/**
 * AES and hashes through node:crypto (OpenSSL, with the CPU's AES instructions where it has them) for the
 * Node entry.
 * ECB is stateless, so one cipher and one decipher per key serve every call; with padding off, each
 * `update` returns exactly the blocks it was given, in a new Buffer (handed back as it is: no copy).
 */
import { builtin } from "./builtin";
import { Qcow2Error } from "@qcowkit/spec";
import type { AesBlocks, AesEngine } from "../crypto/aes-engine";
import type { Pbkdf2, SyncDigest } from "../crypto/hash";

/**
 * Hashes on the calling thread (LUKS's key splitter makes thousands of small ones): node:crypto's one-shot
 * `hash` where Node has it (20.12 and later: no Hash object per call), else createHash.
 */
export const nodeDigest: SyncDigest = (alg, data) => {
  const c = builtin("node:crypto");
  const d = typeof c.hash === "function" ? c.hash(alg, data, "buffer") : c.createHash(alg).update(data).digest();
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
};

/** PBKDF2 on libuv's thread pool (OpenSSL). */
export const nodePbkdf2: Pbkdf2 = (alg, password, salt, iterations, byteLength) =>
  new Promise((resolve, reject) =>
    builtin("node:crypto").pbkdf2(password, salt, iterations, byteLength, alg, (error, key) =>
      error ? reject(error) : resolve(new Uint8Array(key.buffer, key.byteOffset, key.byteLength)),
    ),
  );

export const nodeAesEngine: AesEngine = (key) => {
  if (key.byteLength !== 16 && key.byteLength !== 24 && key.byteLength !== 32) {
    throw new Qcow2Error("INVALID_ARGUMENT", `Invalid AES key length ${key.byteLength}`);
  }
  const name = `aes-${key.byteLength * 8}-ecb`;
  const { createCipheriv, createDecipheriv } = builtin("node:crypto");
  const enc = createCipheriv(name, key, null).setAutoPadding(false);
  const dec = createDecipheriv(name, key, null).setAutoPadding(false);
  const run = (c: typeof enc | typeof dec, data: Uint8Array): Uint8Array => {
    const out = c.update(data);
    if (out.byteLength !== data.byteLength) throw new Qcow2Error("INTERNAL", "AES returned a different number of bytes");
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  };
  const blocks: AesBlocks = {
    encrypt: (data) => run(enc, data),
    decrypt: (data) => run(dec, data),
  };
  return blocks;
};
