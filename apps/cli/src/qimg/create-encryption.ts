/**
 * The encryption options of `qimg create -f qcow2 -o ...` (and convert's target), turned into the engine's
 * as QEMU 7.2's qcow2_co_create_opts does: `encryption=on` is the old spelling of `encrypt.format=aes`
 * (both at once are refused; `encryption=off` is dropped), "aes" is QAPI's "qcow", then QAPI's checks of
 * the encrypt member. The key secret is looked up among the --object secrets.
 */
import { validateEncryptionCreateOptions, type EncryptionCreateOptions, type EncryptionFormat } from "@qcowkit/core/node";
import { CliError } from "../cli/errors";
import type { QemuOpts } from "../cli/qemu-opts";
import { lookupSecretText } from "../cli/secrets";

/** The -o names of the luks options (after qcow2's "encrypt." prefix), by the engine's name. */
const LUKS_OPTION_NAMES = {
  cipherAlg: "cipher-alg",
  cipherMode: "cipher-mode",
  ivgenAlg: "ivgen-alg",
  ivgenHashAlg: "ivgen-hash-alg",
  hashAlg: "hash-alg",
} as const;

/** The luks options named `${prefix}cipher-alg` and so on, into `o`. */
function readLuksOptions(o: EncryptionCreateOptions, opts: QemuOpts, prefix: string): EncryptionCreateOptions {
  for (const [key, name] of Object.entries(LUKS_OPTION_NAMES)) {
    const value = opts.string(prefix + name);
    if (value !== undefined) o[key as keyof typeof LUKS_OPTION_NAMES] = value;
  }
  const iterTime = opts.integer(`${prefix}iter-time`);
  if (iterTime !== undefined) o.iterTimeMs = Number(BigInt.asIntN(64, iterTime));
  validateEncryptionCreateOptions(o);
  return o;
}

/** The options of the standalone luks format (`qimg create -f luks -o key-secret=...,iter-time=...`), without the secret. */
export function luksFormatCreateOptions(opts: QemuOpts): EncryptionCreateOptions {
  return readLuksOptions({ format: "luks" }, opts, "");
}

/** QEMU's rename of the legacy option: refused when both spellings are given (checked before anything else). */
export function checkEncryptionAlias(opts: QemuOpts): void {
  if (opts.bool("encryption") === true && opts.has("encrypt.format")) {
    throw new CliError("'encrypt.format' and its alias 'encryption' can't be used at the same time");
  }
}

/** True when the options ask for an encrypted image. */
export function wantsEncryption(opts: QemuOpts): boolean {
  return opts.bool("encryption") === true || opts.has("encrypt.format");
}

/**
 * The encrypt member (QAPI's checks, in QEMU's words), without the secret; undefined when no encrypt.*
 * option is given.
 */
export function encryptionCreateOptions(opts: QemuOpts): EncryptionCreateOptions | undefined {
  const legacy = opts.bool("encryption") === true;
  const given = opts.names().filter((n) => n.startsWith("encrypt."));
  if (!legacy && given.length === 0) return undefined;
  let format = legacy ? "qcow" : opts.string("encrypt.format");
  if (format === undefined) throw new CliError("Parameter 'encrypt.format' is missing");
  if (format === "aes") format = "qcow";
  if (format !== "qcow" && format !== "luks") throw new CliError(`Parameter 'format' does not accept value '${format}'`);
  return readLuksOptions({ format: (format === "qcow" ? "aes" : "luks") as EncryptionFormat }, opts, "encrypt.");
}

/** The options with the key secret's bytes (looked up by encrypt.key-secret, or `name`, when given). */
export function withKeySecret(o: EncryptionCreateOptions, opts: QemuOpts, name = "encrypt.key-secret"): EncryptionCreateOptions {
  const id = opts.string(name);
  return id === undefined ? o : { ...o, keySecret: lookupSecretText(id) };
}
