/**
 * The LUKS1 partition header (LUKS On-Disk Format Specification 1.2.x, "PHDR"), 592 big-endian bytes:
 *
 *    0  magic            6  "LUKS" 0xba 0xbe
 *    6  version          2  1
 *    8  cipher-name     32  e.g. "aes" (NUL terminated)
 *   40  cipher-mode     32  e.g. "xts-plain64", "cbc-essiv:sha256"
 *   72  hash-spec       32  e.g. "sha256"
 *  104  payload-offset   4  sectors (512 bytes) from the start of the LUKS area
 *  108  key-bytes        4  master key length
 *  112  mk-digest       20  PBKDF2 of the master key
 *  132  mk-digest-salt  32
 *  164  mk-digest-iter   4
 *  168  uuid            40  text
 *  208  key slots    8x48  active (0x00ac71f3 enabled, 0x0000dead disabled), iterations, salt[32],
 *                          key-material-offset (sectors), stripes
 *
 * Plus the checks QEMU 7.2 makes on a header it reads (qcrypto_block_luks_check_header), in its words.
 */
import { Qcow2Error } from "@qcowkit/spec";

export const LUKS_HEADER_BYTES = 592;
export const LUKS_SECTOR_BYTES = 512;
export const LUKS_NUM_KEY_SLOTS = 8;
export const LUKS_STRIPES = 4000;
export const LUKS_SALT_BYTES = 32;
export const LUKS_DIGEST_BYTES = 20;
/** Key material of the first slot starts here (bytes from the start of the LUKS area). */
export const LUKS_KEY_SLOT_OFFSET = 4096;
/** Key material areas are aligned to this many bytes. */
export const LUKS_KEY_SLOT_ALIGN = 4096;
export const LUKS_SLOT_ENABLED = 0x00ac71f3;
export const LUKS_SLOT_DISABLED = 0x0000dead;

const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const SLOT_AT = 208;
const SLOT_BYTES = 48;

export interface LuksKeySlot {
  /** LUKS_SLOT_ENABLED or LUKS_SLOT_DISABLED (other values are corruption). */
  state: number;
  iterations: number;
  salt: Uint8Array;
  keyOffsetSector: number;
  stripes: number;
}

export interface LuksHeader {
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffsetSector: number;
  keyBytes: number;
  mkDigest: Uint8Array;
  mkDigestSalt: Uint8Array;
  mkDigestIterations: number;
  uuid: string;
  slots: LuksKeySlot[];
}

const fail = (message: string) => new Qcow2Error("INVALID_IMAGE", message);

/** A NUL-terminated text field (undefined when it has no NUL). */
function cString(bytes: Uint8Array): string | undefined {
  const end = bytes.indexOf(0);
  if (end < 0) return undefined;
  return String.fromCharCode(...bytes.subarray(0, end));
}

function putString(dst: Uint8Array, text: string, fieldBytes: number): void {
  for (let i = 0; i < text.length && i < fieldBytes - 1; i++) dst[i] = text.charCodeAt(i) & 0xff;
}

/** Sectors of one slot's key material (QEMU's qcrypto_block_luks_splitkeylen_sectors). */
export function keyMaterialSectors(keyBytes: number, stripes: number): number {
  return Math.ceil((keyBytes * stripes) / LUKS_SECTOR_BYTES);
}

/** Decode and check a header (`bytes`: at least LUKS_HEADER_BYTES). */
export function decodeLuksHeader(bytes: Uint8Array): LuksHeader {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < LUKS_HEADER_BYTES || MAGIC.some((b, i) => bytes[i] !== b)) throw fail("Volume is not in LUKS format");
  const version = v.getUint16(6);
  if (version !== 1) throw fail(`LUKS version ${version} is not supported`);
  const field = (at: number, what: string) => {
    const s = cString(bytes.subarray(at, at + 32));
    if (s === undefined) throw fail(`LUKS header ${what} is not NUL terminated`);
    return s;
  };
  const cipherName = field(8, "cipher name");
  const cipherMode = field(40, "cipher mode");
  const hashSpec = field(72, "hash spec");
  const uuidBytes = bytes.subarray(168, 208);
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const at = SLOT_AT + i * SLOT_BYTES;
    slots.push({
      state: v.getUint32(at),
      iterations: v.getUint32(at + 4),
      salt: bytes.slice(at + 8, at + 40),
      keyOffsetSector: v.getUint32(at + 40),
      stripes: v.getUint32(at + 44),
    });
  }
  const header: LuksHeader = {
    version,
    cipherName,
    cipherMode,
    hashSpec,
    payloadOffsetSector: v.getUint32(104),
    keyBytes: v.getUint32(108),
    mkDigest: bytes.slice(112, 132),
    mkDigestSalt: bytes.slice(132, 164),
    mkDigestIterations: v.getUint32(164),
    uuid: cString(uuidBytes) ?? String.fromCharCode(...uuidBytes),
    slots,
  };
  checkLuksHeader(header);
  return header;
}

/** QEMU's consistency checks of a decoded header. */
function checkLuksHeader(h: LuksHeader): void {
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_BYTES;
  if (h.payloadOffsetSector < headerSectors) throw fail("LUKS payload is overlapping with the header");
  if (h.mkDigestIterations === 0) throw fail("LUKS key iteration count is zero");
  h.slots.forEach((s, i) => {
    if (s.stripes !== LUKS_STRIPES) throw fail(`Keyslot ${i} is corrupted (stripes ${s.stripes | 0} != ${LUKS_STRIPES})`);
    if (s.state !== LUKS_SLOT_ENABLED && s.state !== LUKS_SLOT_DISABLED) throw fail(`Keyslot ${i} state (active/disable) is corrupted`);
    if (s.state === LUKS_SLOT_ENABLED && s.iterations === 0) throw fail(`Keyslot ${i} iteration count is zero`);
    const start = s.keyOffsetSector;
    const end = start + keyMaterialSectors(h.keyBytes, s.stripes);
    if (start < headerSectors) throw fail(`Keyslot ${i} is overlapping with the LUKS header`);
    if (end > h.payloadOffsetSector) throw fail(`Keyslot ${i} is overlapping with the encrypted payload`);
    for (let j = i + 1; j < LUKS_NUM_KEY_SLOTS; j++) {
      const o = h.slots[j]!;
      const oEnd = o.keyOffsetSector + keyMaterialSectors(h.keyBytes, o.stripes);
      if (end > o.keyOffsetSector && oEnd > start) throw fail(`Keyslots ${i} and ${j} are overlapping in the header`);
    }
  });
}

export function encodeLuksHeader(h: LuksHeader): Uint8Array {
  const bytes = new Uint8Array(LUKS_HEADER_BYTES);
  const v = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  v.setUint16(6, h.version);
  putString(bytes.subarray(8, 40), h.cipherName, 32);
  putString(bytes.subarray(40, 72), h.cipherMode, 32);
  putString(bytes.subarray(72, 104), h.hashSpec, 32);
  v.setUint32(104, h.payloadOffsetSector);
  v.setUint32(108, h.keyBytes);
  bytes.set(h.mkDigest.subarray(0, LUKS_DIGEST_BYTES), 112);
  bytes.set(h.mkDigestSalt.subarray(0, LUKS_SALT_BYTES), 132);
  v.setUint32(164, h.mkDigestIterations);
  putString(bytes.subarray(168, 208), h.uuid, 40);
  h.slots.forEach((s, i) => {
    const at = SLOT_AT + i * SLOT_BYTES;
    v.setUint32(at, s.state);
    v.setUint32(at + 4, s.iterations);
    bytes.set(s.salt.subarray(0, LUKS_SALT_BYTES), at + 8);
    v.setUint32(at + 40, s.keyOffsetSector);
    v.setUint32(at + 44, s.stripes);
  });
  return bytes;
}
