/**
 * Where AES itself runs: an engine turns a key into something that encrypts or decrypts many 16-byte blocks
 * in one call (ECB, in place). The block modes (block-modes.ts) are built on that, so one native call can
 * cover a whole request. There is no default: the Node entry installs node:crypto's, and other runtimes
 * (the browser entry included) install their own with `registerAesEngine`. Until one is installed, unlocking
 * or creating an encrypted image fails with NOT_SUPPORTED. The table-driven AES of aes.ts is not installed
 * anywhere: table lookups indexed by key-dependent bytes leak timing through the processor's caches, so it is
 * kept only as a reference the tests compare the native engine with.
 */
import { Qcow2Error } from "@qcowkit/spec";
import { Aes } from "./aes";

/**
 * One AES key over whole blocks (`data.byteLength` is a multiple of 16). The result is `data` itself,
 * changed in place, or a new array (native engines): callers use what is returned, and `data` may be
 * changed either way.
 */
export interface AesBlocks {
  encrypt(data: Uint8Array): Uint8Array;
  decrypt(data: Uint8Array): Uint8Array;
}

/** Makes the AesBlocks of a 16, 24 or 32-byte key. */
export type AesEngine = (key: Uint8Array) => AesBlocks;

/** The table-driven AES, block after block: a reference for tests, never installed by qcowkit (see above). */
export const tableAesEngine: AesEngine = (key) => {
  const aes = new Aes(key);
  return {
    encrypt(data) {
      for (let at = 0; at < data.byteLength; at += 16) aes.encryptBlock(data, at, data, at);
      return data;
    },
    decrypt(data) {
      for (let at = 0; at < data.byteLength; at += 16) aes.decryptBlock(data, at, data, at);
      return data;
    },
  };
};

let engine: AesEngine | undefined;

/** The message of an encrypted image opened or created where no engine is installed. */
export const NO_AES_ENGINE =
  "Encrypted images need an AES engine and none is installed here (the Node entry installs node:crypto's; elsewhere call registerAesEngine)";

/** Use `e` for the ciphers of images unlocked from now on. */
export function registerAesEngine(e: AesEngine): void {
  engine = e;
}

/** The AesBlocks of `key` from the current engine. */
export function aesBlocks(key: Uint8Array): AesBlocks {
  if (engine === undefined) throw new Qcow2Error("NOT_SUPPORTED", NO_AES_ENGINE);
  return engine(key);
}
