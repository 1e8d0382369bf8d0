/**
 * Sector encryption as QEMU's block crypto does it (qcrypto_block_cipher_*_helper): data in 512-byte
 * sectors, each encrypted on its own with an IV made from its sector number by the IV generator:
 * - plain: the sector number's low 32 bits, little-endian, zero padded to the block size;
 * - plain64: the sector number as 64 bits, little-endian, zero padded;
 * - essiv: the plain64 block encrypted with AES keyed by a hash of the data key ("ivgen-hash-alg").
 * Supported ciphers: AES-128/192/256 in CBC or XTS mode (XTS keys are twice as long: data key, then tweak key).
 */
import { Qcow2Error } from "@qcowkit/spec";
import { aesBlocks, type AesBlocks } from "./aes-engine";
import { BLOCK_BYTES, cbcDecryptUnits, cbcEncryptUnits, xtsUnits } from "./block-modes";
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
  private constructor(
    readonly spec: CipherSpec,
    private readonly dataKey: AesBlocks,
    private readonly tweakKey: AesBlocks | undefined,
    private readonly essivKey: AesBlocks | undefined,
  ) {}

  /** `key`: cipherKeyBytes(spec) bytes. The AES runs on the engine installed now (see aes-engine.ts). */
  static async create(spec: CipherSpec, key: Uint8Array): Promise<SectorCipher> {
    const expected = cipherKeyBytes(spec);
    if (key.byteLength !== expected) {
      throw new Qcow2Error("INVALID_ARGUMENT", `Cipher key length ${key.byteLength} does not match ${spec.alg}-${spec.mode} (${expected} bytes)`);
    }
    const half = AES_KEY_BYTES[spec.alg];
    const dataKey = aesBlocks(key.subarray(0, half));
    const tweakKey = spec.mode === "xts" ? aesBlocks(key.subarray(half)) : undefined;
    let essivKey: AesBlocks | undefined;
    if (spec.ivgen === "essiv") {
      const hash = spec.ivgenHash ?? "sha256";
      essivKeyCheck(hash);
      essivKey = aesBlocks(await digest(hash, key));
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

  /** All sectors at once; a last partial sector (LUKS key material) is one shorter unit of whole blocks. */
  private run(firstSector: number, data: Uint8Array, decrypt: boolean): void {
    if (data.byteLength === 0) return;
    const ivs = this.ivsFor(firstSector, Math.ceil(data.byteLength / SECTOR_BYTES));
    if (this.tweakKey) xtsUnits(this.dataKey, this.tweakKey, ivs, data, SECTOR_BYTES, decrypt);
    else if (decrypt) cbcDecryptUnits(this.dataKey, ivs, data, SECTOR_BYTES);
    else cbcEncryptUnits(this.dataKey, ivs, data, SECTOR_BYTES);
  }

  /** The IVs of `count` sectors from `firstSector`, 16 bytes each. */
  private ivsFor(firstSector: number, count: number): Uint8Array {
    const ivs = new Uint8Array(count * BLOCK_BYTES);
    for (let k = 0; k < count; k++) {
      const sector = firstSector + k;
      const at = k * BLOCK_BYTES;
      const low = sector >>> 0;
      ivs[at] = low;
      ivs[at + 1] = low >>> 8;
      ivs[at + 2] = low >>> 16;
      ivs[at + 3] = low >>> 24;
      if (this.spec.ivgen !== "plain") {
        const high = Math.floor(sector / 2 ** 32) >>> 0;
        ivs[at + 4] = high;
        ivs[at + 5] = high >>> 8;
        ivs[at + 6] = high >>> 16;
        ivs[at + 7] = high >>> 24;
      }
    }
    return this.essivKey ? this.essivKey.encrypt(ivs) : ivs;
  }
}
