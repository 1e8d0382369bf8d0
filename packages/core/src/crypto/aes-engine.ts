/**
 * Where AES itself runs: an engine turns a key into something that encrypts or decrypts many 16-byte blocks
 * in one call (ECB, in place). The block modes (block-modes.ts) are built on that, so one native call can
 * cover a whole request. The default engine is the table-driven AES of aes.ts (any runtime); the Node entry
 * installs node:crypto's, and a browser embedder can install its own with `registerAesEngine`.
 */
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

/** The table-driven AES, block after block. */
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

let engine: AesEngine = tableAesEngine;

/** Use `e` for the ciphers of images unlocked from now on. */
export function registerAesEngine(e: AesEngine): void {
  engine = e;
}

/** The AesBlocks of `key` from the current engine. */
export function aesBlocks(key: Uint8Array): AesBlocks {
  return engine(key);
}
