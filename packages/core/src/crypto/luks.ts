/**
 * LUKS1 as QEMU 7.2's crypto block layer uses it (crypto/block-luks.c): the cipher named by the header,
 * key slots unlocked with PBKDF2 of the passphrase, the master key recovered from the anti-forensic split
 * key material and confirmed against the header's digest; creation with one active slot (slot 0), the
 * others disabled, QEMU's layout (key material from 4 KiB, each slot's area 4 KiB aligned) and its
 * defaults (aes-256, xts, plain64, sha256, 2000 ms of PBKDF2).
 *
 * The LUKS area is reached through a reader (`offset` from the start of the area) so that the caller
 * decides where it lives (in a qcow2 file: the full disk encryption header extension's range).
 */
import { Qcow2Error } from "@qcowkit/spec";
import { afMerge, afSplit } from "./af-splitter";
import { QEMU_HASH_ALGS, hashAlg, pbkdf2, pbkdf2IterationsPerSecond, randomBytes, type HashAlg } from "./hash";
import {
  LUKS_DIGEST_BYTES,
  LUKS_HEADER_BYTES,
  LUKS_KEY_SLOT_ALIGN,
  LUKS_KEY_SLOT_OFFSET,
  LUKS_NUM_KEY_SLOTS,
  LUKS_SALT_BYTES,
  LUKS_SECTOR_BYTES,
  LUKS_SLOT_DISABLED,
  LUKS_SLOT_ENABLED,
  LUKS_STRIPES,
  decodeLuksHeader,
  encodeLuksHeader,
  keyMaterialSectors,
  type LuksHeader,
  type LuksKeySlot,
} from "./luks-header";
import {
  QEMU_CIPHER_ALGS,
  QEMU_CIPHER_MODES,
  QEMU_IVGEN_ALGS,
  SectorCipher,
  aesKeyBytes,
  cipherAlg,
  cipherKeyBytes,
  cipherMode,
  type CipherSpec,
  type IvgenAlg,
} from "./sector-cipher";

/** Reads `into.byteLength` bytes at `offset` of the LUKS area. */
export type LuksReader = (offset: number, into: Uint8Array) => Promise<void>;

/**
 * PBKDF2 iteration counts above this are refused: a damaged or hostile header could otherwise keep an open
 * busy for hours (QEMU's default of 2 s of PBKDF2 gives a few million).
 */
export const MAX_PBKDF2_ITERATIONS = 50_000_000;

const fail = (message: string) => new Qcow2Error("INVALID_IMAGE", message);

export interface LuksVolume {
  header: LuksHeader;
  cipher: CipherSpec;
  hash: HashAlg;
}

/** The cipher, IV generator and hash a header names (QEMU's qcrypto_block_luks_parse_header). */
function parseVolume(header: LuksHeader): LuksVolume {
  const dash = header.cipherMode.indexOf("-");
  if (dash < 0) throw fail(`Unexpected cipher mode string format ${header.cipherMode}`);
  const modeName = header.cipherMode.slice(0, dash);
  let ivgenName = header.cipherMode.slice(dash + 1);
  let ivgenHashName: string | undefined;
  const colon = ivgenName.indexOf(":");
  if (colon >= 0) {
    ivgenHashName = ivgenName.slice(colon + 1);
    ivgenName = ivgenName.slice(0, colon);
  }
  const ivgenHash = ivgenHashName === undefined ? undefined : hashAlg(ivgenHashName);
  const mode = cipherMode(modeName);
  const aesBytes = header.keyBytes / (mode === "xts" ? 2 : 1);
  if (header.cipherName !== "aes") throw new Qcow2Error("NOT_SUPPORTED", `Cipher name '${header.cipherName}' is not supported`, { errno: "ENOTSUP" });
  const alg = (["aes-128", "aes-192", "aes-256"] as const).find((a) => aesKeyBytes(a) === aesBytes);
  if (!alg) throw fail(`Algorithm '${header.cipherName}' with key size ${header.keyBytes} bytes not supported`);
  const hash = hashAlg(header.hashSpec);
  if (!(QEMU_IVGEN_ALGS as readonly string[]).includes(ivgenName)) throw fail(`IV generator '${ivgenName}' is not supported`);
  const ivgen = ivgenName as IvgenAlg;
  if (ivgen === "essiv" && ivgenHash === undefined) throw fail("Missing IV generator hash specification");
  const cipher: CipherSpec = { alg, mode, ivgen, ...(ivgen === "essiv" ? { ivgenHash: ivgenHash! } : {}) };
  return { header, cipher, hash };
}

function checkIterations(count: number): void {
  if (count > MAX_PBKDF2_ITERATIONS) {
    throw new Qcow2Error("NOT_SUPPORTED", `LUKS PBKDF2 iteration count ${count} exceeds the limit of ${MAX_PBKDF2_ITERATIONS}`, { errno: "ENOTSUP" });
  }
}

/** Read, check and parse the header at the start of the LUKS area. */
export async function readLuksVolume(read: LuksReader): Promise<LuksVolume> {
  const bytes = new Uint8Array(LUKS_HEADER_BYTES);
  await read(0, bytes);
  return parseVolume(decodeLuksHeader(bytes));
}

/** Try one key slot: the master key when `password` opens it, undefined otherwise. */
async function unlockSlot(volume: LuksVolume, slot: LuksKeySlot, password: Uint8Array, read: LuksReader): Promise<Uint8Array | undefined> {
  const { header, hash } = volume;
  const keyBytes = header.keyBytes;
  checkIterations(slot.iterations);
  const slotKey = await pbkdf2(hash, password, slot.salt, slot.iterations, keyBytes);
  const material = new Uint8Array(keyBytes * slot.stripes);
  await read(slot.keyOffsetSector * LUKS_SECTOR_BYTES, material);
  const slotCipher = await SectorCipher.create(volume.cipher, slotKey);
  slotCipher.decrypt(0, material);
  const masterKey = await afMerge(hash, material, keyBytes, slot.stripes);
  const digest = await pbkdf2(hash, masterKey, header.mkDigestSalt, header.mkDigestIterations, LUKS_DIGEST_BYTES);
  return digest.every((b, i) => b === header.mkDigest[i]) ? masterKey : undefined;
}

/** True when active key slot `index` opens with `password`. */
export async function slotOpensWith(volume: LuksVolume, index: number, password: Uint8Array, read: LuksReader): Promise<boolean> {
  const slot = volume.header.slots[index]!;
  if (slot.state !== LUKS_SLOT_ENABLED) return false;
  checkIterations(volume.header.mkDigestIterations);
  return (await unlockSlot(volume, slot, password, read)) !== undefined;
}

/** Unlock the volume with `password`: the master key (key slots are tried in order). */
export async function unlockLuksMasterKey(volume: LuksVolume, password: Uint8Array, read: LuksReader): Promise<Uint8Array> {
  checkIterations(volume.header.mkDigestIterations);
  for (const slot of volume.header.slots) {
    if (slot.state !== LUKS_SLOT_ENABLED) continue;
    const masterKey = await unlockSlot(volume, slot, password, read);
    if (masterKey) return masterKey;
  }
  throw new Qcow2Error("INVALID_ARGUMENT", "Invalid password, cannot unlock any keyslot", { errno: "EPERM" });
}

/** Unlock the volume with `password`: the payload cipher. */
export async function unlockLuks(volume: LuksVolume, password: Uint8Array, read: LuksReader): Promise<SectorCipher> {
  return SectorCipher.create(volume.cipher, await unlockLuksMasterKey(volume, password, read));
}

/**
 * Put `masterKey` into `slot` under `password` (QEMU's qcrypto_block_luks_store_key, before the header is
 * written): a new salt, iterations for `iterTimeMs` of PBKDF2, the split key encrypted with the slot key.
 * Returns the key material to write at the slot's key offset; the slot is not yet marked active.
 */
export async function sealKeySlot(
  volume: Pick<LuksVolume, "cipher" | "hash">,
  slot: LuksKeySlot,
  password: Uint8Array,
  masterKey: Uint8Array,
  iterTimeMs: number,
): Promise<Uint8Array> {
  slot.salt = randomBytes(LUKS_SALT_BYTES);
  const rate = await pbkdf2IterationsPerSecond(volume.hash, password, slot.salt, masterKey.byteLength);
  slot.iterations = scaledIterations(rate, iterTimeMs, 1);
  const slotKey = await pbkdf2(volume.hash, password, slot.salt, slot.iterations, masterKey.byteLength);
  const material = await afSplit(volume.hash, masterKey, slot.stripes);
  (await SectorCipher.create(volume.cipher, slotKey)).encrypt(0, material);
  return material;
}

/** encrypt.* creation options of the luks format (QCryptoBlockCreateOptionsLUKS), as given. */
export interface LuksCreateOptions {
  cipherAlg?: string;
  cipherMode?: string;
  ivgenAlg?: string;
  ivgenHashAlg?: string;
  hashAlg?: string;
  /** Milliseconds of PBKDF2 to aim for when unlocking (default 2000). */
  iterTimeMs?: number;
}

export const DEFAULT_ITER_TIME_MS = 2000;
const MIN_ITERATIONS = 1000;

function enumValue(value: string | undefined, allowed: readonly string[], name: string): string | undefined {
  if (value !== undefined && !allowed.includes(value)) {
    throw new Qcow2Error("INVALID_ARGUMENT", `Parameter '${name}' does not accept value '${value}'`);
  }
  return value;
}

interface ResolvedLuksOptions {
  cipher: CipherSpec;
  hash: HashAlg;
  /** The IV generator hash written into the mode string (given, or essiv's default). */
  ivgenHash: HashAlg | undefined;
  iterTimeMs: number;
}

/**
 * Check creation options (QAPI's enum checks in QEMU's wording, then what this implementation supports:
 * AES in CBC or XTS mode, SHA-1/256/384/512) and fill in QEMU's defaults.
 */
export function resolveLuksCreateOptions(o: LuksCreateOptions): ResolvedLuksOptions {
  enumValue(o.cipherAlg, QEMU_CIPHER_ALGS, "cipher-alg");
  enumValue(o.cipherMode, QEMU_CIPHER_MODES, "cipher-mode");
  enumValue(o.ivgenAlg, QEMU_IVGEN_ALGS, "ivgen-alg");
  enumValue(o.ivgenHashAlg, QEMU_HASH_ALGS, "ivgen-hash-alg");
  enumValue(o.hashAlg, QEMU_HASH_ALGS, "hash-alg");
  const alg = cipherAlg(o.cipherAlg ?? "aes-256");
  const mode = cipherMode(o.cipherMode ?? "xts");
  const ivgen = (o.ivgenAlg ?? "plain64") as IvgenAlg;
  // QEMU defaults the essiv hash to sha256 and records a given ivgen hash in the mode string.
  const ivgenHashName = o.ivgenHashAlg ?? (ivgen === "essiv" ? "sha256" : undefined);
  const ivgenHash = ivgenHashName === undefined ? undefined : hashAlg(ivgenHashName);
  const hash = hashAlg(o.hashAlg ?? "sha256");
  const iterTimeMs = o.iterTimeMs ?? DEFAULT_ITER_TIME_MS;
  if (!Number.isSafeInteger(iterTimeMs) || iterTimeMs < 0) throw new Qcow2Error("INVALID_ARGUMENT", `Invalid iter-time ${iterTimeMs}`);
  return {
    cipher: { alg, mode, ivgen, ...(ivgen === "essiv" ? { ivgenHash: ivgenHash! } : {}) },
    hash,
    ivgenHash,
    iterTimeMs,
  };
}

/** Iterations for `iterTimeMs` of PBKDF2 at `perSecond` (QEMU's scaling, at least 1000). */
function scaledIterations(perSecond: number, iterTimeMs: number, divisor: number): number {
  const count = Math.floor(Math.floor((perSecond * iterTimeMs) / 1000) / divisor);
  if (count > 0xffffffff) throw new Qcow2Error("INVALID_ARGUMENT", `PBKDF iterations ${count} larger than ${0xffffffff}`);
  return Math.max(count, MIN_ITERATIONS);
}

function randomUuid(): string {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** QEMU's layout of a LUKS area for a key of `keyBytes`: slot key material from 4 KiB, each slot 4 KiB aligned. */
function luksLayout(keyBytes: number): { firstSector: number; slotStride: number; payloadOffsetSector: number } {
  const splitSectors = keyMaterialSectors(keyBytes, LUKS_STRIPES);
  const alignSectors = LUKS_KEY_SLOT_ALIGN / LUKS_SECTOR_BYTES;
  const slotStride = Math.ceil(splitSectors / alignSectors) * alignSectors;
  const firstSector = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_BYTES;
  return { firstSector, slotStride, payloadOffsetSector: firstSector + LUKS_NUM_KEY_SLOTS * slotStride };
}

/** Bytes of the LUKS area a volume made with these options takes (QEMU's qcrypto_block_calculate_payload_offset). */
export function luksAreaBytes(options: LuksCreateOptions): number {
  return luksLayout(cipherKeyBytes(resolveLuksCreateOptions(options).cipher)).payloadOffsetSector * LUKS_SECTOR_BYTES;
}

export interface NewLuksVolume {
  /** Bytes of the LUKS area (up to the payload offset). */
  areaBytes: number;
  /** What to write into the (zeroed) area: the header and slot 0's key material. */
  writes: Array<{ offset: number; bytes: Uint8Array }>;
  /** The payload cipher (master key). */
  cipher: SectorCipher;
  volume: LuksVolume;
}

/** Create a LUKS volume whose slot 0 opens with `password` (QEMU's qcrypto_block_luks_create). */
export async function createLuks(options: LuksCreateOptions, password: Uint8Array): Promise<NewLuksVolume> {
  const o = resolveLuksCreateOptions(options);
  const keyBytes = cipherKeyBytes(o.cipher);
  const masterKey = randomBytes(keyBytes);
  const payloadCipher = await SectorCipher.create(o.cipher, masterKey);
  const mkDigestSalt = randomBytes(LUKS_SALT_BYTES);
  const mkRate = await pbkdf2IterationsPerSecond(o.hash, masterKey, mkDigestSalt, LUKS_DIGEST_BYTES);
  // Like cryptsetup, the digest gets an eighth of the slot's time.
  const mkDigestIterations = scaledIterations(mkRate, o.iterTimeMs, 8);
  const mkDigest = await pbkdf2(o.hash, masterKey, mkDigestSalt, mkDigestIterations, LUKS_DIGEST_BYTES);
  const { firstSector, slotStride, payloadOffsetSector } = luksLayout(keyBytes);
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    slots.push({ state: LUKS_SLOT_DISABLED, iterations: 0, salt: new Uint8Array(LUKS_SALT_BYTES), keyOffsetSector: firstSector + i * slotStride, stripes: LUKS_STRIPES });
  }
  // Slot 0: the master key, split and encrypted with the key derived from the password.
  const slot = slots[0]!;
  const material = await sealKeySlot(o, slot, password, masterKey, o.iterTimeMs);
  slot.state = LUKS_SLOT_ENABLED;
  const c = o.cipher;
  const header: LuksHeader = {
    version: 1,
    cipherName: "aes",
    cipherMode: `${c.mode}-${c.ivgen}${o.ivgenHash !== undefined ? `:${o.ivgenHash}` : ""}`,
    hashSpec: o.hash,
    payloadOffsetSector,
    keyBytes,
    mkDigest,
    mkDigestSalt,
    mkDigestIterations,
    uuid: randomUuid(),
    slots,
  };
  return {
    areaBytes: header.payloadOffsetSector * LUKS_SECTOR_BYTES,
    writes: [
      { offset: 0, bytes: encodeLuksHeader(header) },
      { offset: slot.keyOffsetSector * LUKS_SECTOR_BYTES, bytes: material },
    ],
    cipher: payloadCipher,
    volume: { header, cipher: c, hash: o.hash },
  };
}

/** QAPI's QCryptoBlockInfoLUKSSlot. */
export interface LuksSlotInfo {
  active: boolean;
  iters?: number;
  stripes?: number;
  "key-offset": number;
}

/** QAPI's QCryptoBlockInfoLUKS (fields in schema order). */
export interface LuksInfo {
  "cipher-alg": string;
  "cipher-mode": string;
  "ivgen-alg": string;
  "ivgen-hash-alg"?: string;
  "hash-alg": string;
  "payload-offset": number;
  "master-key-iters": number;
  uuid: string;
  slots: LuksSlotInfo[];
}

/** What qemu-img info shows of a LUKS volume (qcrypto_block_luks_get_info). */
export function luksInfo(volume: LuksVolume): LuksInfo {
  const h = volume.header;
  const c = volume.cipher;
  const info: LuksInfo = {
    "cipher-alg": c.alg,
    "cipher-mode": c.mode,
    "ivgen-alg": c.ivgen,
  } as LuksInfo;
  if (c.ivgen === "essiv") info["ivgen-hash-alg"] = c.ivgenHash!;
  info["hash-alg"] = volume.hash;
  info["payload-offset"] = h.payloadOffsetSector * LUKS_SECTOR_BYTES;
  info["master-key-iters"] = h.mkDigestIterations;
  info.uuid = h.uuid;
  info.slots = h.slots.map((s) => {
    const active = s.state === LUKS_SLOT_ENABLED;
    return {
      active,
      ...(active ? { iters: s.iterations, stripes: s.stripes } : {}),
      "key-offset": s.keyOffsetSector * LUKS_SECTOR_BYTES,
    };
  });
  return info;
}
