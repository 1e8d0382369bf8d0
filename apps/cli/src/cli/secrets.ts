/**
 * QEMU's secret objects (`--object secret,id=ID,data=TEXT|file=PATH[,format=raw|base64][,keyid=ID,iv=B64]`),
 * as qemu-img and qemu-io 7.2 create them from the command line, with their messages, and their lookup by
 * id for `encrypt.key-secret`. The value is the data (or the file's whole content), base64-decoded with
 * format=base64, then, with keyid, decrypted with AES-256-CBC keyed by that other secret (PKCS#7 padding).
 * The secrets live for one run of a program: its main calls `resetSecrets()` first.
 */
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import type { EncryptionOpenOptions } from "@qcowkit/core/node";
import type { EncryptOptions } from "./block-options";
import { CliError } from "./errors";
import { splitOptionList } from "./qemu-opts";

const secrets = new Map<string, Uint8Array>();

export function resetSecrets(): void {
  secrets.clear();
}

const SECRET_KEYS = ["qom-type", "id", "data", "file", "format", "keyid", "iv", "loaded"];

/** keyval parsing of an --object argument: the first element may be the type alone (implied key qom-type). */
function parseObjectOptions(text: string): Map<string, string> {
  const out = new Map<string, string>();
  splitOptionList(text).forEach((element, i) => {
    const eq = element.indexOf("=");
    if (eq >= 0) out.set(element.slice(0, eq), element.slice(eq + 1));
    else if (i === 0) out.set("qom-type", element);
    else throw new CliError(`Expected '=' after parameter '${element}'`);
  });
  return out;
}

/** QEMU's base64 check (qbase64_decode), then the lenient decode glib does. */
function base64Decode(text: string): Buffer {
  if (!/^[A-Za-z0-9+/=\n]*$/.test(text)) throw new CliError("Base64 data contains invalid characters");
  return Buffer.from(text, "base64");
}

/** "Unable to read PATH: ..." as glib words a failed g_file_get_contents. */
function readSecretFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT" ? "No such file or directory" : code === "EACCES" ? "Permission denied" : code === "EISDIR" ? "Is a directory" : (e as Error).message;
    const verb = code === "EISDIR" ? "read from" : "open";
    throw new CliError(`Unable to read ${path}: Failed to ${verb} file “${path}”: ${reason}`);
  }
}

/** keyid/iv: AES-256-CBC with the other secret as key, PKCS#7 padding (qcrypto_secret_decrypt). */
function decryptSecret(input: Buffer, keyId: string, ivText: string | undefined, selfId: string): Buffer {
  if (keyId === selfId) throw new CliError(`Secret with id '${keyId}' has no data`);
  const key = secrets.get(keyId);
  if (!key) throw new CliError(`No secret with id '${keyId}'`);
  if (key.byteLength !== 32) throw new CliError("Key should be 32 bytes in length");
  if (ivText === undefined) throw new CliError("IV is required to decrypt secret");
  const iv = base64Decode(ivText);
  if (iv.byteLength !== 16) throw new CliError(`IV should be 16 bytes in length not ${iv.byteLength}`);
  if (input.byteLength % 16 !== 0) throw new CliError(`Length ${input.byteLength} must be a multiple of block size 16`);
  // node:crypto is loaded only when a secret is encrypted (it costs every command ~8 ms at start-up).
  const { createDecipheriv } = createRequire(import.meta.url)("node:crypto") as typeof import("node:crypto");
  const decipher = createDecipheriv("aes-256-cbc", key, iv);
  decipher.setAutoPadding(false);
  const plain = Buffer.concat([decipher.update(input), decipher.final()]);
  const pad = plain.byteLength > 0 ? plain[plain.byteLength - 1]! : 0;
  if (plain.byteLength === 0 || pad > 16 || pad > plain.byteLength) {
    throw new CliError(`Incorrect number of padding bytes (${pad}) found on decrypted data`);
  }
  return plain.subarray(0, plain.byteLength - pad);
}

/** --object OBJECTDEF: define a secret (the only object type qimg and qio know). */
export function defineObject(text: string): void {
  const o = parseObjectOptions(text);
  const type = o.get("qom-type");
  if (type === undefined) throw new CliError("Parameter 'qom-type' is missing");
  if (type !== "secret") throw new CliError(`Parameter 'qom-type' does not accept value '${type}'`);
  const id = o.get("id");
  if (id === undefined) throw new CliError("Parameter 'id' is missing");
  const format = o.get("format") ?? "raw";
  if (format !== "raw" && format !== "base64") throw new CliError(`Parameter 'format' does not accept value '${format}'`);
  if (o.has("loaded")) throw new CliError("Property 'secret.loaded' is not writable");
  for (const key of o.keys()) if (!SECRET_KEYS.includes(key)) throw new CliError(`Parameter '${key}' is unexpected`);
  if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(id)) {
    throw new CliError("Parameter 'id' expects an identifier", { hint: "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter." });
  }
  const data = o.get("data");
  const file = o.get("file");
  if (data !== undefined && file !== undefined) throw new CliError("'file' and 'data' are mutually exclusive");
  if (data === undefined && file === undefined) throw new CliError("Either 'file' or 'data' must be provided");
  let value = data !== undefined ? Buffer.from(data, "utf8") : readSecretFile(file!);
  if (format === "base64") value = base64Decode(value.toString("latin1"));
  const keyId = o.get("keyid");
  if (keyId !== undefined) value = decryptSecret(value, keyId, o.get("iv"), id);
  if (secrets.has(id)) throw new CliError(`attempt to add duplicate property '${id}' to object (type 'container')`);
  secrets.set(id, new Uint8Array(value));
}

/** The secret `id` as text for a cipher (qcrypto_secret_lookup_as_utf8): its bytes, which must be UTF-8. */
export function lookupSecretText(id: string): Uint8Array {
  const bytes = secrets.get(id);
  if (!bytes) throw new CliError(`No secret with id '${id}'`);
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new CliError(`Data from secret ${id} is not valid UTF-8`);
  }
  return bytes;
}

/** The engine's encrypt options for block options' encrypt.*: the key secret is looked up when needed. */
export function encryptOpenOptions(e: EncryptOptions): EncryptionOpenOptions {
  const id = e.keySecret;
  return {
    ...(e.format !== undefined ? { format: e.format } : {}),
    ...(id !== undefined ? { keySecret: () => lookupSecretText(id) } : {}),
    unexpected: e.unexpected,
  };
}
