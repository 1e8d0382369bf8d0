/**
 * qcow2 encryption as QEMU 7.2 implements it (block/qcow2.c, crypto/block-qcow.c, crypto/block-luks.c):
 * - crypt_method 1, legacy AES: AES-128-CBC per 512-byte sector, the key is the secret's text (at most 16
 *   bytes, zero padded), the IV is plain64 of the GUEST sector number;
 * - crypt_method 2, LUKS: a LUKS1 volume header in the qcow2 file where the full disk encryption header
 *   extension points; guest data is encrypted with the volume's cipher, the IV made from the HOST sector
 *   number (QEMU's crypt_physical_offset).
 * Compressed clusters are stored unencrypted (QEMU reads them without decryption).
 *
 * Opening applies QEMU's runtime encrypt.* options: `format` must match the header, other options are
 * "unexpected", the key secret is needed unless the image is opened without I/O (qemu-img info, which
 * still reads the LUKS header for its report).
 */
import { CRYPT_AES, CRYPT_LUKS, CRYPT_NONE, Qcow2Error, type ByteStore, type ImageHeader } from "@qcowkit/spec";
import type { BlockStatusExtent } from "../block-image";
import { luksInfo, readLuksVolume, unlockLuksMasterKey, type LuksInfo, type LuksReader, type LuksVolume } from "./luks";
import type { LuksAccess, LuksWriter } from "./luks-keyslots";
import { SECTOR_BYTES, SectorCipher, type CipherSpec } from "./sector-cipher";

export type EncryptionFormat = "aes" | "luks";

/** QEMU's encrypt.* runtime options of a qcow2 image. */
export interface EncryptionOpenOptions {
  /** encrypt.format: must name the header's method ("aes" or "luks"). */
  format?: string;
  /**
   * encrypt.key-secret: the secret's bytes (the AES key text or the LUKS passphrase; used up to the first
   * NUL byte, as QEMU uses it as a C string), or a function that produces them. The function is called only
   * for an encrypted image opened for I/O; what it throws (an unknown secret, say) fails the open.
   */
  keySecret?: Uint8Array | (() => Uint8Array);
  /** Names (without "encrypt.") of other encrypt.* options given: refused as unexpected for encrypted images. */
  unexpected?: string[];
}

/** QAPI's ImageInfoSpecificQCow2Encryption. */
export type EncryptionInfo = { format: "aes" } | ({ format: "luks" } & LuksInfo);

const QCOW_AES: CipherSpec = { alg: "aes-128", mode: "cbc", ivgen: "plain64" };
const QCOW_KEY_BYTES = 16;

const invalid = (message: string) => new Qcow2Error("INVALID_ARGUMENT", message);

/** The secret as QEMU's C string: the bytes before the first NUL. */
export function secretText(secret: Uint8Array): Uint8Array {
  const end = secret.indexOf(0);
  return end < 0 ? secret : secret.subarray(0, end);
}

/** The legacy AES key: the secret's first 16 bytes, zero padded (QEMU's qcrypto_block_qcow_init). */
function qcowKey(secret: Uint8Array): Uint8Array {
  const key = new Uint8Array(QCOW_KEY_BYTES);
  const text = secretText(secret);
  key.set(text.subarray(0, QCOW_KEY_BYTES));
  return key;
}

/** An open image's encryption: what info reports, and (unless opened without I/O) the data cipher. */
export class ImageEncryption {
  constructor(
    readonly format: EncryptionFormat,
    private readonly cipher: SectorCipher | undefined,
    readonly luks: LuksVolume | undefined,
    /** LUKS opened for I/O: the master key and the LUKS area's reader and writer (key slot management). */
    readonly luksAccess?: LuksAccess,
  ) {}

  /** The sector number whose IV encrypts data at these offsets (LUKS: host, AES: guest). */
  private sector(hostOffset: number, guestOffset: number): number {
    return Math.floor((this.format === "luks" ? hostOffset : guestOffset) / SECTOR_BYTES);
  }

  private requireCipher(): SectorCipher {
    if (!this.cipher) throw new Qcow2Error("INTERNAL", "Encrypted image opened without I/O");
    return this.cipher;
  }

  /**
   * Read guest bytes stored at `hostOffset` of `store` into `dst` and decrypt them; the sectors around a
   * range that is not whole sectors are read and decrypted too. Guest and host offsets share their position
   * within a sector (both are offsets into clusters).
   */
  async read(store: ByteStore, hostOffset: number, guestOffset: number, dst: Uint8Array): Promise<void> {
    const cipher = this.requireCipher();
    const head = hostOffset % SECTOR_BYTES;
    if (head === 0 && dst.byteLength % SECTOR_BYTES === 0) {
      await store.read(hostOffset, dst);
      cipher.decrypt(this.sector(hostOffset, guestOffset), dst);
      return;
    }
    const buf = new Uint8Array(Math.ceil((head + dst.byteLength) / SECTOR_BYTES) * SECTOR_BYTES);
    await store.read(hostOffset - head, buf);
    cipher.decrypt(this.sector(hostOffset - head, guestOffset - head), buf);
    dst.set(buf.subarray(head, head + dst.byteLength));
  }

  /**
   * The bytes to store for guest `data` at `hostOffset`: a new buffer (the caller's is left as it is) of
   * whole sectors, encrypted; partial sectors at either end are completed from what `store` holds there.
   */
  async seal(store: ByteStore, hostOffset: number, guestOffset: number, data: Uint8Array): Promise<{ hostOffset: number; bytes: Uint8Array }> {
    const cipher = this.requireCipher();
    const head = hostOffset % SECTOR_BYTES;
    const byteLength = Math.ceil((head + data.byteLength) / SECTOR_BYTES) * SECTOR_BYTES;
    const start = hostOffset - head;
    const guestStart = guestOffset - head;
    const buf = new Uint8Array(byteLength);
    const lastSector = byteLength - SECTOR_BYTES;
    if (head) await this.read(store, start, guestStart, buf.subarray(0, SECTOR_BYTES));
    if ((head + data.byteLength) % SECTOR_BYTES && (lastSector > 0 || !head)) {
      await this.read(store, start + lastSector, guestStart + lastSector, buf.subarray(lastSector));
    }
    buf.set(data, head);
    cipher.encrypt(this.sector(start, guestStart), buf);
    return { hostOffset: start, bytes: buf };
  }

  /** QAPI's encrypt member of the qcow2 format-specific info. */
  info(): EncryptionInfo {
    if (this.format === "aes" || !this.luks) return { format: "aes" };
    return { format: "luks", ...luksInfo(this.luks) };
  }
}

/**
 * Block status of an encrypted image without host offsets for its own extents (QEMU reports none: the
 * host bytes are not the guest's); extents of backing images keep theirs.
 */
export function withoutHostOffsets(extents: BlockStatusExtent[]): BlockStatusExtent[] {
  return extents.map((e) => {
    if (e.depth !== 0 || e.hostOffset === undefined) return e;
    const { hostOffset: _offset, hostFile: _file, ...rest } = e;
    return rest;
  });
}

/** Reads the LUKS area of a qcow2 file (QEMU's qcow2_crypto_hdr_read_func and its range check). */
function luksAreaReader(meta: ByteStore, area: { offset: number; length: number }): LuksReader {
  return async (offset, into) => {
    if (offset + into.byteLength > area.length) throw new Qcow2Error("INVALID_IMAGE", "Request for data outside of extension header");
    await meta.read(area.offset + offset, into);
  };
}

/** Writes the LUKS area of a qcow2 file (QEMU's qcow2_crypto_hdr_write_func), each write made durable. */
function luksAreaWriter(meta: ByteStore, area: { offset: number; length: number }): LuksWriter {
  return async (offset, bytes) => {
    if (offset + bytes.byteLength > area.length) throw new Qcow2Error("INVALID_IMAGE", "Request for data outside of extension header");
    await meta.write(area.offset + offset, bytes);
    await meta.flush();
  };
}

/**
 * Open the encryption of an image: undefined for an unencrypted one (after QEMU's check that no format was
 * asked for). `noIo`: only the header is read (no key needed, no cipher).
 */
export async function openImageEncryption(
  hdr: { readonly header: { readonly cryptMethod: number }; readonly extensions: Pick<ImageHeader["extensions"], "cryptoHeader"> },
  meta: ByteStore,
  opts: EncryptionOpenOptions | undefined,
  noIo: boolean,
): Promise<ImageEncryption | undefined> {
  const method = hdr.header.cryptMethod;
  const given = opts?.format;
  if (method === CRYPT_NONE) {
    if (given !== undefined) throw invalid(`No encryption in image header, but options specified format '${given}'`);
    return undefined;
  }
  const format: EncryptionFormat = method === CRYPT_AES ? "aes" : "luks";
  if (given !== undefined && given !== format) {
    throw invalid(`Header reported '${format}' encryption format but options specify '${given}'`);
  }
  const unexpected = opts?.unexpected?.[0];
  if (unexpected !== undefined) throw invalid(`Parameter '${unexpected}' is unexpected`);
  let luks: LuksVolume | undefined;
  let read: LuksReader | undefined;
  let area: { offset: number; length: number } | undefined;
  if (method === CRYPT_LUKS) {
    area = hdr.extensions.cryptoHeader;
    if (!area) throw new Qcow2Error("INVALID_IMAGE", `Missing CRYPTO header for crypt method ${method}`);
    read = luksAreaReader(meta, area);
    luks = await readLuksVolume(read);
  }
  if (noIo) return new ImageEncryption(format, undefined, luks);
  const secret = typeof opts?.keySecret === "function" ? opts.keySecret() : opts?.keySecret;
  if (secret === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  if (!luks) return new ImageEncryption(format, await SectorCipher.create(QCOW_AES, qcowKey(secret)), undefined);
  const masterKey = await unlockLuksMasterKey(luks, secretText(secret), read!);
  const access: LuksAccess = { volume: luks, masterKey, read: read!, write: luksAreaWriter(meta, area!) };
  return new ImageEncryption(format, await SectorCipher.create(luks.cipher, masterKey), luks, access);
}
