/**
 * The table-driven AES against the known-answer vectors of FIPS-197 appendix C (one per key size), and
 * encryption/decryption round trips in place. The tables are built on the first key.
 */
import { describe, expect, it } from "vitest";
import { Aes } from "../src/crypto/aes";

const hex = (s: string) => Uint8Array.from(s.match(/../g)!.map((b) => parseInt(b, 16)));
const toHex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const keyOf = (bytes: number) => Uint8Array.from({ length: bytes }, (_, i) => i);
const plaintext = "00112233445566778899aabbccddeeff";

describe("AES (FIPS-197 appendix C)", () => {
  it.each([
    [16, "69c4e0d86a7b0430d8cdb78070b4c55a"],
    [24, "dda97ca4864cdfe06eaf70a0ec0d7191"],
    [32, "8ea2b7ca516745bfeafc49904b496089"],
  ])("%i-byte key: encrypts to the published block and decrypts back", (keyBytes, ciphertext) => {
    const aes = new Aes(keyOf(keyBytes));
    const out = new Uint8Array(16);
    aes.encryptBlock(hex(plaintext), 0, out, 0);
    expect(toHex(out)).toBe(ciphertext);
    const back = new Uint8Array(16);
    aes.decryptBlock(out, 0, back, 0);
    expect(toHex(back)).toBe(plaintext);
  });

  it("works in place at an offset", () => {
    const aes = new Aes(keyOf(32));
    const buf = new Uint8Array(40);
    buf.set(hex(plaintext), 7);
    aes.encryptBlock(buf, 7, buf, 7);
    expect(toHex(buf.subarray(7, 23))).toBe("8ea2b7ca516745bfeafc49904b496089");
    aes.decryptBlock(buf, 7, buf, 7);
    expect(toHex(buf.subarray(7, 23))).toBe(plaintext);
    expect(buf[6]).toBe(0);
    expect(buf[23]).toBe(0);
  });

  it("refuses other key lengths", () => {
    expect(() => new Aes(new Uint8Array(20))).toThrow(/Invalid AES key length 20/);
  });
});
