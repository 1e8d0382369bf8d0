/**
 * Creating the encryption of a new qcow2 image (QEMU's qcow2_set_up_encryption, run once the image has its
 * size and backing file): crypt_method 1 for legacy AES; for LUKS a volume whose header and key material
 * fill clusters allocated in the qcow2 file (zeroed first), named by the full disk encryption header
 * extension, crypt_method 2.
 */
import { CRYPT_AES, CRYPT_LUKS, Qcow2Error } from "@qcowkit/spec";
import type { Qcow2Image } from "../qcow2-image";
import { secretText, type EncryptionFormat } from "./image-encryption";
import { createLuks, resolveLuksCreateOptions, type LuksCreateOptions } from "./luks";

const invalid = (message: string) => new Qcow2Error("INVALID_ARGUMENT", message);

/** encrypt.* creation options (QEMU's QCryptoBlockCreateOptions for the qcow2 driver). */
export interface EncryptionCreateOptions extends LuksCreateOptions {
  format: EncryptionFormat;
  /** The secret's bytes: the AES key text or the LUKS passphrase (required; checked when creating). */
  keySecret?: Uint8Array;
}

/** The encrypt.* options in QAPI order, with their create-option names. */
const LUKS_ONLY_OPTIONS: Array<[keyof LuksCreateOptions, string]> = [
  ["cipherAlg", "cipher-alg"],
  ["cipherMode", "cipher-mode"],
  ["ivgenAlg", "ivgen-alg"],
  ["ivgenHashAlg", "ivgen-hash-alg"],
  ["hashAlg", "hash-alg"],
  ["iterTimeMs", "iter-time"],
];

/** Creation-time checks that need no secret (QAPI's, then what this implementation supports). */
export function validateEncryptionCreateOptions(o: EncryptionCreateOptions): void {
  if ((o.format as string) !== "aes" && (o.format as string) !== "luks") {
    throw invalid(`Parameter 'format' does not accept value '${o.format}'`);
  }
  if (o.format === "aes") {
    const extra = LUKS_ONLY_OPTIONS.find(([key]) => o[key] !== undefined);
    if (extra) throw invalid(`Parameter 'encrypt.${extra[1]}' is unexpected`);
    return;
  }
  resolveLuksCreateOptions(o);
}

/** The secret is needed before anything is written (QEMU finds it missing only at the end, then deletes the files). */
export function requireKeySecret(o: EncryptionCreateOptions): Uint8Array {
  if (o.keySecret === undefined) throw invalid("Parameter 'encrypt.key-secret' is required for cipher");
  return o.keySecret;
}

/** Encrypt the new, still empty `image` (its header is rewritten). */
export async function setUpImageEncryption(image: Qcow2Image, o: EncryptionCreateOptions): Promise<void> {
  validateEncryptionCreateOptions(o);
  const secret = requireKeySecret(o);
  if (o.format === "aes") {
    await image.metadata.updateHeader(({ header }) => {
      header.cryptMethod = CRYPT_AES;
    });
    return;
  }
  const luks = await createLuks(o, secretText(secret));
  const cs = image.clusterSize;
  const clusters = Math.ceil(luks.areaBytes / cs);
  const offset = (await image.metadata.refcounts.allocate(clusters)) * cs;
  await image.metadata.meta.write(offset, new Uint8Array(clusters * cs));
  for (const w of luks.writes) await image.metadata.meta.write(offset + w.offset, w.bytes);
  await image.metadata.writeback();
  await image.metadata.meta.flush();
  await image.metadata.updateHeader((hdr) => {
    hdr.header.cryptMethod = CRYPT_LUKS;
    hdr.extensions.cryptoHeader = { offset, length: luks.areaBytes };
  });
}
