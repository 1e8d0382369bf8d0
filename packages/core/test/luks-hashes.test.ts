/**
 * LUKS's hashing, two ways: the Node entry's node:crypto (a synchronous digest for the key splitter, PBKDF2 on
 * libuv's thread pool) and the runtime-agnostic Web Crypto path other runtimes use. Both must give the same
 * bytes: the splitter's synchronous diffusion against its asynchronous one (hashes whose digest is shorter
 * than the key, so the last piece is cut), and PBKDF2 against RFC 7914's PBKDF2-HMAC-SHA256 test vector and
 * against Web Crypto for outputs longer than one digest (XTS keys: two blocks).
 */
import { afterEach, describe, expect, it } from "vitest";
import { afMerge, afSplit } from "../src/crypto/af-splitter";
import { pbkdf2, registerPbkdf2, registerSyncDigest, type HashAlg } from "../src/crypto/hash";
import { nodeDigest, nodePbkdf2 } from "../src/node/crypto";
import { rng } from "./helpers";

function bytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

function withNode(on: boolean): void {
  registerSyncDigest(on ? nodeDigest : undefined);
  registerPbkdf2(on ? nodePbkdf2 : undefined);
}

afterEach(() => withNode(true));

describe("LUKS hashes: node:crypto and Web Crypto agree", () => {
  for (const alg of ["sha1", "sha256", "sha512"] as HashAlg[]) {
    for (const keyBytes of [16, 32, 64]) {
      it(`key splitter, ${alg}, ${keyBytes}-byte key`, async () => {
        const material = bytes(keyBytes * 200, keyBytes);
        withNode(true);
        const merged = await afMerge(alg, material, keyBytes, 200);
        withNode(false);
        expect(await afMerge(alg, material, keyBytes, 200)).toEqual(merged);
        // And a split made one way merges back the other way.
        const key = bytes(keyBytes, 99);
        const split = await afSplit(alg, key, 50);
        withNode(true);
        expect(await afMerge(alg, split, keyBytes, 50)).toEqual(key);
      });
    }
  }

  it("PBKDF2-HMAC-SHA256: RFC 7914's vector (passwd, salt, c = 1, 64 bytes)", async () => {
    const expected =
      "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783";
    const text = (s: string) => new TextEncoder().encode(s);
    withNode(true);
    const native = await pbkdf2("sha256", text("passwd"), text("salt"), 1, 64);
    withNode(false);
    const web = await pbkdf2("sha256", text("passwd"), text("salt"), 1, 64);
    expect(Buffer.from(native).toString("hex")).toBe(expected);
    expect(Buffer.from(web).toString("hex")).toBe(expected);
  });

  it("PBKDF2: node:crypto and Web Crypto give the same keys", async () => {
    for (const alg of ["sha1", "sha256", "sha384", "sha512"] as HashAlg[]) {
      for (const length of [20, 32, 64]) {
        const password = bytes(12, length);
        const salt = bytes(32, length + 1);
        withNode(true);
        const native = await pbkdf2(alg, password, salt, 1000, length);
        withNode(false);
        expect(await pbkdf2(alg, password, salt, 1000, length)).toEqual(native);
      }
    }
  });
});
