/**
 * Hashes, PBKDF2 and random bytes through the Web Crypto API (`globalThis.crypto`, present in Node 20 and
 * in browsers): the parts of LUKS that need a hash. Algorithm names are QEMU's (QCryptoHashAlgorithm);
 * the ones Web Crypto lacks (md5, sha224, ripemd160) are refused.
 */
import { Qcow2Error } from "@qcowkit/spec";

export type HashAlg = "sha1" | "sha256" | "sha384" | "sha512";

/** QCryptoHashAlgorithm: every name QEMU accepts (not all are supported here). */
export const QEMU_HASH_ALGS = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"] as const;

const WEB_NAME: Record<HashAlg, string> = { sha1: "SHA-1", sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

/** Digest length in bytes. */
export const HASH_BYTES: Record<HashAlg, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

interface WebCrypto {
  getRandomValues(bytes: Uint8Array): Uint8Array;
  subtle: {
    digest(alg: string, data: Uint8Array): Promise<ArrayBuffer>;
    importKey(format: "raw", key: Uint8Array, alg: string, extractable: boolean, usages: string[]): Promise<unknown>;
    deriveBits(alg: { name: "PBKDF2"; hash: string; salt: Uint8Array; iterations: number }, key: unknown, bits: number): Promise<ArrayBuffer>;
  };
}

function webCrypto(): WebCrypto {
  const c = (globalThis as { crypto?: WebCrypto }).crypto;
  if (!c?.subtle) throw new Qcow2Error("NOT_SUPPORTED", "Encryption needs the Web Crypto API (globalThis.crypto.subtle)");
  return c;
}

/** A hash algorithm name as QEMU spells it, checked: refused unless Web Crypto has it. */
export function hashAlg(name: string): HashAlg {
  if (name in WEB_NAME) return name as HashAlg;
  throw new Qcow2Error("NOT_SUPPORTED", `Unsupported hash algorithm '${name}'`, { errno: "ENOTSUP" });
}

/** A digest computed on the calling thread, where the runtime has one (the Node entry installs node:crypto's). */
export type SyncDigest = (alg: HashAlg, data: Uint8Array) => Uint8Array;
let syncDigest: SyncDigest | undefined;

/**
 * Use `f` for digests from now on. LUKS's key splitter hashes thousands of small pieces, where one
 * asynchronous Web Crypto call per piece costs more than the hashing.
 */
export function registerSyncDigest(f: SyncDigest | undefined): void {
  syncDigest = f;
}

export async function digest(alg: HashAlg, data: Uint8Array): Promise<Uint8Array> {
  if (syncDigest) return syncDigest(alg, data);
  return new Uint8Array(await webCrypto().subtle.digest(WEB_NAME[alg], data));
}

/** The digest on the calling thread, when one is registered (undefined otherwise: use `digest`). */
export function digestNow(alg: HashAlg, data: Uint8Array): Uint8Array | undefined {
  return syncDigest?.(alg, data);
}

/** PBKDF2 with HMAC-`alg`, as `pbkdf2` below. */
export type Pbkdf2 = (alg: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, byteLength: number) => Promise<Uint8Array>;
let nativePbkdf2: Pbkdf2 | undefined;

/**
 * Use `f` for PBKDF2 from now on (the Node entry installs node:crypto's: Web Crypto's first call in a process
 * loads and sets up its own modules, tens of milliseconds of every unlock).
 */
export function registerPbkdf2(f: Pbkdf2 | undefined): void {
  nativePbkdf2 = f;
}

/** PBKDF2 with HMAC-`alg` (RFC 8018): `byteLength` bytes derived from `password` and `salt`. */
export async function pbkdf2(alg: HashAlg, password: Uint8Array, salt: Uint8Array, iterations: number, byteLength: number): Promise<Uint8Array> {
  if (nativePbkdf2) return nativePbkdf2(alg, password, salt, iterations, byteLength);
  const subtle = webCrypto().subtle;
  const key = await subtle.importKey("raw", password, "PBKDF2", false, ["deriveBits"]);
  const bits = await subtle.deriveBits({ name: "PBKDF2", hash: WEB_NAME[alg], salt, iterations }, key, byteLength * 8);
  return new Uint8Array(bits);
}

/** Cryptographically random bytes. */
export function randomBytes(byteLength: number): Uint8Array {
  const out = new Uint8Array(byteLength);
  const c = webCrypto();
  // getRandomValues fills at most 65536 bytes per call.
  for (let at = 0; at < byteLength; at += 65536) c.getRandomValues(out.subarray(at, Math.min(byteLength, at + 65536)));
  return out;
}

/**
 * PBKDF2 iterations per second for this password, salt and output length (QEMU's qcrypto_pbkdf2_count_iters,
 * measured in wall-clock time): the count grows until one run takes at least `minMs`.
 */
export async function pbkdf2IterationsPerSecond(
  alg: HashAlg,
  password: Uint8Array,
  salt: Uint8Array,
  byteLength: number,
  minMs = 40,
): Promise<number> {
  const now = () => (globalThis as { performance?: { now(): number } }).performance?.now() ?? Date.now();
  for (let iterations = 1 << 12; ; iterations *= 4) {
    const start = now();
    await pbkdf2(alg, password, salt, iterations, byteLength);
    const elapsed = now() - start;
    if (elapsed >= minMs || iterations >= 1 << 30) return Math.floor((iterations * 1000) / Math.max(elapsed, 1));
  }
}
