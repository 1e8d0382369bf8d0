/**
 * The standalone `luks` format (QEMU 7.2's block/crypto.c over crypto/block-luks.c): a file that is a LUKS1
 * volume, its header and key material first, then the encrypted guest disk from the payload offset to the
 * end of the file. Guest sector N is encrypted with the IV of sector N (the guest's, not the file's).
 *
 * The LUKS volume itself (header codec, key derivation, anti-forensic splitting, ciphers) is the one qcow2's
 * LUKS encryption uses (crypto/luks.ts); this file only places it at the start of a file.
 */
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import type { BlockImage, BlockStatusExtent, ResizeOptions, WriteOptions, ZeroOptions } from "./block-image";
import { secretText, type EncryptionOpenOptions } from "./crypto/image-encryption";
import { createLuks, luksInfo, readLuksVolume, unlockLuksMasterKey, type LuksCreateOptions, type LuksInfo, type LuksReader, type LuksVolume } from "./crypto/luks";
import { LUKS_SECTOR_BYTES } from "./crypto/luks-header";
import { amendLuksKeyslots, type LuksAccess, type LuksAmendOptions } from "./crypto/luks-keyslots";
import { SectorCipher } from "./crypto/sector-cipher";

/** Bytes encrypted or decrypted per step of a large request (bounded memory). */
const CHUNK_BYTES = 1024 * 1024;

export interface LuksOpenOptions {
  /** The passphrase (`key-secret`), or a function that produces it; needed unless `noIo`. */
  keySecret?: EncryptionOpenOptions["keySecret"];
  /** Only the header is read (qemu-img info): no key, no guest I/O. */
  noIo?: boolean;
}

export interface LuksImageCreateOptions extends LuksCreateOptions {
  /** Guest disk size in bytes (a multiple of 512). */
  size: number;
  /** The passphrase of key slot 0. */
  keySecret?: Uint8Array;
  /** How the file is allocated, header area included ("metadata": as "off"). */
  preallocation?: "off" | "metadata" | "falloc" | "full";
}

const storeReader =
  (store: ByteStore): LuksReader =>
  (offset, into) =>
    store.read(offset, into);

/** QEMU's message when a luks image is opened for I/O without its key (crypto/block.c's option name). */
export const LUKS_KEY_REQUIRED = "Parameter 'key-secret' is required for cipher";

export class LuksImage implements BlockImage {
  readonly format = "luks" as const;
  readonly clusterSize = LUKS_SECTOR_BYTES;
  readonly filename: string;
  private size: number;
  private closed = false;

  private constructor(
    readonly store: ByteStore,
    readonly volume: LuksVolume,
    private readonly cipher: SectorCipher | undefined,
    size: number,
    private readonly masterKey: Uint8Array | undefined,
  ) {
    this.size = size;
    this.filename = store.name;
  }

  /** Bytes before the guest disk. */
  get payloadOffset(): number {
    return this.volume.header.payloadOffsetSector * LUKS_SECTOR_BYTES;
  }

  /** Open the LUKS volume `store` holds; unless `noIo`, unlock it with the key secret. */
  static async open(store: ByteStore, opts: LuksOpenOptions = {}): Promise<LuksImage> {
    const read = storeReader(store);
    const volume = await readLuksVolume(read);
    let cipher: SectorCipher | undefined;
    let masterKey: Uint8Array | undefined;
    if (!opts.noIo) {
      const secret = typeof opts.keySecret === "function" ? opts.keySecret() : opts.keySecret;
      if (secret === undefined) throw new Qcow2Error("INVALID_ARGUMENT", LUKS_KEY_REQUIRED);
      masterKey = await unlockLuksMasterKey(volume, secretText(secret), read);
      cipher = await SectorCipher.create(volume.cipher, masterKey);
    }
    const payload = volume.header.payloadOffsetSector * LUKS_SECTOR_BYTES;
    const fileSize = await store.size();
    // QEMU sees the file in whole sectors; a file shorter than its header has an empty disk.
    const size = Math.max(0, Math.ceil(fileSize / LUKS_SECTOR_BYTES) * LUKS_SECTOR_BYTES - payload);
    return new LuksImage(store, volume, cipher, size, masterKey);
  }

  /**
   * Write a new LUKS volume into the (empty) `store` whose key slot 0 opens with the key secret, then size
   * the file for the guest disk (QEMU's block_crypto_co_create_generic).
   */
  static async create(store: ByteStore, o: LuksImageCreateOptions): Promise<void> {
    if (!Number.isSafeInteger(o.size) || o.size < 0) throw new Qcow2Error("INVALID_ARGUMENT", "Invalid image size specified");
    // The file has no metadata of its own to preallocate: "metadata" is "off" (as in QEMU).
    const prealloc: StorePreallocation = o.preallocation === undefined || o.preallocation === "metadata" ? "off" : o.preallocation;
    if (o.keySecret === undefined) throw new Qcow2Error("INVALID_ARGUMENT", LUKS_KEY_REQUIRED);
    const luks = await createLuks(o, secretText(o.keySecret));
    await store.resize(0);
    await store.resize(luks.areaBytes, prealloc);
    for (const w of luks.writes) await store.write(w.offset, w.bytes);
    await store.resize(luks.areaBytes + o.size, prealloc);
    await store.flush();
  }

  get virtualSize(): number {
    return this.size;
  }

  get readOnly(): boolean {
    return this.store.readOnly;
  }

  /** The format-specific part of qemu-img info (QAPI's QCryptoBlockInfoLUKS). */
  info(): LuksInfo {
    return luksInfo(this.volume);
  }

  /** Add or erase key slots (qemu-img amend -o state=...; `force`: --force). Each header write is flushed. */
  async amendKeyslots(o: LuksAmendOptions, force = false): Promise<void> {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    if (this.store.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (!this.masterKey) throw new Qcow2Error("INTERNAL", "Encrypted image opened without I/O");
    const access: LuksAccess = {
      volume: this.volume,
      masterKey: this.masterKey,
      read: storeReader(this.store),
      write: async (offset, bytes) => {
        await this.store.write(offset, bytes);
        await this.store.flush();
      },
    };
    await amendLuksKeyslots(access, o, force);
  }

  private check(offset: number, length: number, write = false): SectorCipher {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    if (write && this.store.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
    if (!this.cipher) throw new Qcow2Error("INTERNAL", "Encrypted image opened without I/O");
    return this.cipher;
  }

  /** Read and decrypt the whole sectors `[start, start + buf.byteLength)` of the guest disk into `buf`. */
  private async readSectors(cipher: SectorCipher, start: number, buf: Uint8Array): Promise<void> {
    await this.store.read(this.payloadOffset + start, buf);
    cipher.decrypt(start / LUKS_SECTOR_BYTES, buf);
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    const cipher = this.check(guestOffset, into.byteLength);
    for (let done = 0; done < into.byteLength; ) {
      const offset = guestOffset + done;
      const head = offset % LUKS_SECTOR_BYTES;
      const length = Math.min(into.byteLength - done, CHUNK_BYTES - head);
      const start = offset - head;
      const buf = new Uint8Array(Math.ceil((head + length) / LUKS_SECTOR_BYTES) * LUKS_SECTOR_BYTES);
      await this.readSectors(cipher, start, buf);
      into.set(buf.subarray(head, head + length), done);
      done += length;
    }
  }

  /** Encrypt and store `data` at `guestOffset`; sectors only partly covered are completed from the disk. */
  private async writeData(cipher: SectorCipher, guestOffset: number, data: Uint8Array): Promise<void> {
    const head = guestOffset % LUKS_SECTOR_BYTES;
    const start = guestOffset - head;
    const buf = new Uint8Array(Math.ceil((head + data.byteLength) / LUKS_SECTOR_BYTES) * LUKS_SECTOR_BYTES);
    const last = buf.byteLength - LUKS_SECTOR_BYTES;
    if (head) await this.readSectors(cipher, start, buf.subarray(0, LUKS_SECTOR_BYTES));
    if ((head + data.byteLength) % LUKS_SECTOR_BYTES && (last > 0 || !head)) await this.readSectors(cipher, start + last, buf.subarray(last));
    buf.set(data, head);
    cipher.encrypt(start / LUKS_SECTOR_BYTES, buf);
    await this.store.write(this.payloadOffset + start, buf);
  }

  async write(guestOffset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    const cipher = this.check(guestOffset, data.byteLength, true);
    if (opts.compressed) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    for (let done = 0; done < data.byteLength; done += CHUNK_BYTES) {
      await this.writeData(cipher, guestOffset + done, data.subarray(done, Math.min(data.byteLength, done + CHUNK_BYTES)));
    }
    if (opts.fua) await this.store.flush();
  }

  /** Zeros are written as encrypted zero sectors (the ciphertext of zeros is not zeros). */
  async writeZeroes(guestOffset: number, byteLength: number, opts: ZeroOptions = {}): Promise<void> {
    const cipher = this.check(guestOffset, byteLength, true);
    if (opts.noFallback) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    for (let done = 0; done < byteLength; done += CHUNK_BYTES) {
      await this.writeData(cipher, guestOffset + done, new Uint8Array(Math.min(CHUNK_BYTES, byteLength - done)));
    }
    if (opts.fua) await this.store.flush();
  }

  /** Discarded sectors keep their bytes (QEMU's crypto driver passes no discard down). */
  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.check(guestOffset, byteLength, true);
  }

  async flush(): Promise<void> {
    if (!this.store.readOnly) await this.store.flush();
  }

  /** Every byte is data (QEMU's crypto driver reports no block status of its own, and no host offsets). */
  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
    if (guestOffset < 0 || byteLength < 0 || guestOffset + byteLength > this.size) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
    if (byteLength === 0) return [];
    return [{ offset: guestOffset, length: byteLength, present: true, zero: false, data: true, depth: 0 }];
  }

  async resize(newVirtualSize: number, opts: ResizeOptions = {}): Promise<void> {
    if (this.store.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
    if (newVirtualSize < this.size && !opts.shrink) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Use the --shrink option to perform a shrink operation.");
    }
    const p = opts.preallocation ?? "off";
    if (p === "metadata") throw new Qcow2Error("NOT_SUPPORTED", "Unsupported preallocation mode: metadata", { errno: "ENOTSUP" });
    await this.store.resize(this.payloadOffset + newVirtualSize, p);
    this.size = newVirtualSize;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.store.close();
  }
}
