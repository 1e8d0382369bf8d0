/**
 * Sector encryption as QEMU's block crypto does it (qcrypto_block_cipher_*_helper): data in 512-byte
 * sectors, each encrypted on its own with an IV made from its sector number by the IV generator:
 * - plain: the sector number's low 32 bits, little-endian, zero padded to the block size;
 * - plain64: the sector number as 64 bits, little-endian, zero padded;
 * - essiv: the plain64 block encrypted with AES keyed by a hash of the data key ("ivgen-hash-alg").
 * Supported ciphers: AES-128/192/256 in CBC or XTS mode (XTS keys are twice as long: data key, then tweak key).
 */
import { Qcow2Error } from "@qcowkit/spec";
import { Aes } from "./aes";
import { BLOCK_BYTES, cbcDecrypt, cbcEncrypt, xtsCrypt } from "./block-modes";
import { HASH_BYTES, digest, type HashAlg } from "./hash";

export const SECTOR_BYTES = 512;

/** QCryptoCipherAlgorithm of QEMU 7.2 (only the AES ones are supported). */
export const QEMU_CIPHER_ALGS = [
  "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
  "serpent-128", "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256",
] as const;
/** QCryptoCipherMode (only cbc and xts are supported). */
export const QEMU_CIPHER_MODES = ["ecb", "cbc", "xts", "ctr"] as const;
/** QCryptoIVGenAlgorithm. */
export const QEMU_IVGEN_ALGS = ["plain", "plain64", "essiv"] as const;

export type CipherAlg = "aes-128" | "aes-192" | "aes-256";
export type CipherMode = "cbc" | "xts";
export type IvgenAlg = (typeof QEMU_IVGEN_ALGS)[number];

export interface CipherSpec {
  alg: CipherAlg;
  mode: CipherMode;
  ivgen: IvgenAlg;
  /** The hash of essiv (required with it, ignored otherwise). */
  ivgenHash?: HashAlg;
}

const AES_KEY_BYTES: Record<CipherAlg, number> = { "aes-128": 16, "aes-192": 24, "aes-256": 32 };

/** A cipher algorithm name as QEMU spells it, checked: refused unless supported. */
export function cipherAlg(name: string): CipherAlg {
  if (name in AES_KEY_BYTES) return name as CipherAlg;
  throw new Qcow2Error("NOT_SUPPORTED", `Unsupported cipher algorithm '${name}'`, { errno: "ENOTSUP" });
}

/** A cipher mode name as QEMU spells it, checked: refused unless supported. */
export function cipherMode(name: string): CipherMode {
  if (name === "cbc" || name === "xts") return name;
  throw new Qcow2Error("NOT_SUPPORTED", `Unsupported cipher mode '${name}'`, { errno: "ENOTSUP" });
}

/** The AES key length of a cipher algorithm (one half of an XTS key). */
export function aesKeyBytes(alg: CipherAlg): number {
  return AES_KEY_BYTES[alg];
}

/** The key length a cipher spec takes. */
export function cipherKeyBytes(spec: Pick<CipherSpec, "alg" | "mode">): number {
  return AES_KEY_BYTES[spec.alg] * (spec.mode === "xts" ? 2 : 1);
}

/** ESSIV's cipher: the AES whose key is as long as the hash (QEMU's qcrypto_block_luks_essiv_cipher). */
function essivKeyCheck(hash: HashAlg): void {
  const n = HASH_BYTES[hash];
  if (n !== 16 && n !== 24 && n !== 32) throw new Qcow2Error("NOT_SUPPORTED", `No AES cipher with key size ${n} available`, { errno: "ENOTSUP" });
}

export class SectorCipher {
  private readonly iv = new Uint8Array(BLOCK_BYTES);

  private constructor(
    readonly spec: CipherSpec,
    private readonly dataKey: Aes,
    private readonly tweakKey: Aes | undefined,
    private readonly essivKey: Aes | undefined,
  ) {}

  /** `key`: cipherKeyBytes(spec) bytes. */
  static async create(spec: CipherSpec, key: Uint8Array): Promise<SectorCipher> {
    const expected = cipherKeyBytes(spec);
    if (key.byteLength !== expected) {
      throw new Qcow2Error("INVALID_ARGUMENT", `Cipher key length ${key.byteLength} does not match ${spec.alg}-${spec.mode} (${expected} bytes)`);
    }
    const half = AES_KEY_BYTES[spec.alg];
    const dataKey = new Aes(key.subarray(0, half));
    const tweakKey = spec.mode === "xts" ? new Aes(key.subarray(half)) : undefined;
    let essivKey: Aes | undefined;
    if (spec.ivgen === "essiv") {
      const hash = spec.ivgenHash ?? "sha256";
      essivKeyCheck(hash);
      essivKey = new Aes(await digest(hash, key));
    }
    return new SectorCipher(spec, dataKey, tweakKey, essivKey);
  }

  /** Encrypt sectors in place; the first is sector number `firstSector`. */
  encrypt(firstSector: number, data: Uint8Array): void {
    this.run(firstSector, data, false);
  }

  /** Decrypt sectors in place; the first is sector number `firstSector`. */
  decrypt(firstSector: number, data: Uint8Array): void {
    this.run(firstSector, data, true);
  }

  /** Sector by sector; a last partial sector (LUKS key material) is one shorter unit of whole blocks. */
  private run(firstSector: number, data: Uint8Array, decrypt: boolean): void {
    for (let at = 0, sector = firstSector; at < data.byteLength; at += SECTOR_BYTES, sector++) {
      const iv = this.ivFor(sector);
      const unit = data.subarray(at, Math.min(data.byteLength, at + SECTOR_BYTES));
      if (this.tweakKey) xtsCrypt(this.dataKey, this.tweakKey, iv, unit, decrypt);
      else if (decrypt) cbcDecrypt(this.dataKey, iv, unit);
      else cbcEncrypt(this.dataKey, iv, unit);
    }
  }

  private ivFor(sector: number): Uint8Array {
    const iv = this.iv;
    iv.fill(0);
    const low = sector >>> 0;
    iv[0] = low;
    iv[1] = low >>> 8;
    iv[2] = low >>> 16;
    iv[3] = low >>> 24;
    if (this.spec.ivgen !== "plain") {
      const high = Math.floor(sector / 2 ** 32) >>> 0;
      iv[4] = high;
      iv[5] = high >>> 8;
      iv[6] = high >>> 16;
      iv[7] = high >>> 24;
    }
    if (this.essivKey) this.essivKey.encryptBlock(iv, 0, iv, 0);
    return iv;
  }
}
