/**
 * LUKS key slot management (QEMU 7.2's qcrypto_block_luks_amend_options): `qemu-img amend -o state=active`
 * puts the open volume's master key into a key slot under a new passphrase; `state=inactive` erases key
 * slots, chosen by number or by the passphrase they open with. QEMU's checks and messages, in its order;
 * refusals that would leave no way in need `force`.
 *
 * Order on disk: a new slot's key material is written before the header that makes it active; an erased
 * slot is first made inactive in the header, then its key material is overwritten with random bytes.
 */
import { Qcow2Error } from "@qcowkit/spec";
import { randomBytes } from "./hash";
import { DEFAULT_ITER_TIME_MS, sealKeySlot, slotOpensWith, type LuksReader, type LuksVolume } from "./luks";
import { LUKS_NUM_KEY_SLOTS, LUKS_SALT_BYTES, LUKS_SECTOR_BYTES, LUKS_SLOT_DISABLED, LUKS_SLOT_ENABLED, encodeLuksHeader } from "./luks-header";

/** Writes `bytes` at `offset` of the LUKS area. */
export type LuksWriter = (offset: number, bytes: Uint8Array) => Promise<void>;

/** QAPI's QCryptoBlockAmendOptionsLUKS; the secrets are looked up only when needed (QEMU's order of errors). */
export interface LuksAmendOptions {
  state: "active" | "inactive";
  keyslot?: number;
  oldSecret?: () => Uint8Array;
  newSecret?: () => Uint8Array;
  /** Milliseconds of PBKDF2 for a new key slot (default 2000). */
  iterTimeMs?: number;
}

/** Times an erased slot's key material is overwritten with random bytes (QEMU's ERASE_ITERATIONS). */
const ERASE_PASSES = 16;

const invalid = (message: string) => new Qcow2Error("INVALID_ARGUMENT", message);

/** Open access to a LUKS volume: its header, the master key, and its area's reader and writer. */
export interface LuksAccess {
  volume: LuksVolume;
  masterKey: Uint8Array;
  read: LuksReader;
  write: LuksWriter;
}

const activeCount = (volume: LuksVolume) => volume.header.slots.filter((s) => s.state === LUKS_SLOT_ENABLED).length;

async function storeHeader(a: LuksAccess): Promise<void> {
  await a.write(0, encodeLuksHeader(a.volume.header));
}

function checkSlotNumber(keyslot: number): void {
  if (!Number.isInteger(keyslot) || keyslot < 0 || keyslot >= LUKS_NUM_KEY_SLOTS) {
    throw invalid(`Invalid keyslot ${keyslot} specified, must be between 0 and ${LUKS_NUM_KEY_SLOTS - 1}`);
  }
}

async function eraseSlot(a: LuksAccess, index: number): Promise<void> {
  const slot = a.volume.header.slots[index]!;
  slot.salt = new Uint8Array(LUKS_SALT_BYTES);
  slot.iterations = 0;
  slot.state = LUKS_SLOT_DISABLED;
  await storeHeader(a);
  const bytes = a.masterKey.byteLength * slot.stripes;
  for (let pass = 0; pass < ERASE_PASSES; pass++) await a.write(slot.keyOffsetSector * LUKS_SECTOR_BYTES, randomBytes(bytes));
}

async function addKeyslot(a: LuksAccess, o: LuksAmendOptions, force: boolean): Promise<void> {
  if (!o.newSecret) throw invalid("'new-secret' is required to activate a keyslot");
  if (o.oldSecret) throw invalid("'old-secret' must not be given when activating keyslots");
  const slots = a.volume.header.slots;
  let index: number;
  if (o.keyslot !== undefined) {
    checkSlotNumber(o.keyslot);
    index = o.keyslot;
  } else {
    index = slots.findIndex((s) => s.state !== LUKS_SLOT_ENABLED);
    if (index < 0) throw invalid("Can't add a keyslot - all keyslots are in use");
  }
  if (!force && slots[index]!.state === LUKS_SLOT_ENABLED) throw invalid(`Refusing to overwrite active keyslot ${index} - please erase it first`);
  const password = o.newSecret();
  const slot = slots[index]!;
  const material = await sealKeySlot(a.volume, slot, password, a.masterKey, o.iterTimeMs ?? DEFAULT_ITER_TIME_MS);
  await a.write(slot.keyOffsetSector * LUKS_SECTOR_BYTES, material);
  slot.state = LUKS_SLOT_ENABLED;
  await storeHeader(a);
}

async function eraseKeyslots(a: LuksAccess, o: LuksAmendOptions, force: boolean): Promise<void> {
  if (o.newSecret) throw invalid("'new-secret' must not be given when erasing keyslots");
  if (o.keyslot !== undefined && o.oldSecret) throw invalid("'keyslot' and 'old-secret' are mutually exclusive");
  if (o.keyslot === undefined && !o.oldSecret) throw invalid("One of 'keyslot' and 'old-secret' is required for erasing");
  const slots = a.volume.header.slots;
  if (o.keyslot !== undefined) {
    checkSlotNumber(o.keyslot);
    if (slots[o.keyslot]!.state !== LUKS_SLOT_ENABLED) {
      if (force) return;
      throw invalid(`Given keyslot ${o.keyslot} is already erased (inactive) `);
    }
    if (activeCount(a.volume) === 1 && !force) {
      throw invalid(`Attempt to erase the only active keyslot ${o.keyslot} which will erase all the data in the image irreversibly - refusing operation`);
    }
    await eraseSlot(a, o.keyslot);
    return;
  }
  const password = o.oldSecret!();
  const matching: number[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) if (await slotOpensWith(a.volume, i, password, a.read)) matching.push(i);
  if (matching.length === 0) throw invalid("No keyslots match given (old) password for erase operation");
  if (!force && matching.length === activeCount(a.volume)) {
    throw invalid(
      "All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation",
    );
  }
  for (const i of matching) await eraseSlot(a, i);
}

/** Apply `o` to the open volume (`force`: qemu-img amend --force). */
export async function amendLuksKeyslots(a: LuksAccess, o: LuksAmendOptions, force = false): Promise<void> {
  if (o.state === "active") await addKeyslot(a, o, force);
  else await eraseKeyslots(a, o, force);
}
