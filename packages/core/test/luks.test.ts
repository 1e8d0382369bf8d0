/**
 * Sector encryption on AES engines: node:crypto's (what the Node entry installs) and the table-driven one
 * give the same bytes as OpenSSL's own XTS and CBC, sector by sector; and encrypted images (LUKS with
 * aes-xts-plain64 and aes-cbc-essiv, legacy AES) move both ways between QEMU 7.2 and us.
 */
import { createCipheriv, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { registerAesEngine, tableAesEngine, type AesEngine } from "../src/crypto/aes-engine";
import { SectorCipher, type CipherSpec } from "../src/crypto/sector-cipher";
import { nodeAesEngine } from "../src/node/crypto";
import { createImage, openImage } from "../src/node";
import { qemu, qemuCreatingLuks, randomData, tempDir } from "./helpers";

const SPECS: Array<[string, CipherSpec, number]> = [
  ["aes-256-xts-plain64", { alg: "aes-256", mode: "xts", ivgen: "plain64" }, 64],
  ["aes-128-xts-plain", { alg: "aes-128", mode: "xts", ivgen: "plain" }, 32],
  ["aes-256-cbc-essiv:sha256", { alg: "aes-256", mode: "cbc", ivgen: "essiv", ivgenHash: "sha256" }, 32],
  ["aes-128-cbc-plain64", { alg: "aes-128", mode: "cbc", ivgen: "plain64" }, 16],
  ["aes-192-cbc-plain", { alg: "aes-192", mode: "cbc", ivgen: "plain" }, 24],
];

/** The IV of `sector` as QEMU's plain/plain64 generators make it. */
function plainIv(sector: number, ivgen: string): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeUInt32LE(sector >>> 0, 0);
  if (ivgen === "plain64") iv.writeUInt32LE(Math.floor(sector / 2 ** 32), 4);
  return iv;
}

async function withEngine<T>(engine: AesEngine, f: () => Promise<T>): Promise<T> {
  registerAesEngine(engine);
  try {
    return await f();
  } finally {
    registerAesEngine(nodeAesEngine);
  }
}

describe("sector ciphers on node:crypto and on the table-driven AES", () => {
  afterEach(() => registerAesEngine(nodeAesEngine));

  for (const [name, spec, keyBytes] of SPECS) {
    it(`${name}: both engines give OpenSSL's bytes and decrypt back, sectors past 2^32 included`, async () => {
      const key = randomBytes(keyBytes);
      // 37 sectors, then a short unit of whole blocks (as LUKS key material ends); at an odd byte offset.
      const backing = new Uint8Array(37 * 512 + 128 + 3);
      const plain = backing.subarray(3);
      plain.set(randomBytes(plain.byteLength));
      const first = 2 ** 32 - 5;
      const results: Uint8Array[] = [];
      for (const engine of [nodeAesEngine, tableAesEngine]) {
        const cipher = await withEngine(engine, () => SectorCipher.create(spec, key));
        const data = Uint8Array.from(plain);
        cipher.encrypt(first, data);
        results.push(data);
        const back = Uint8Array.from(data);
        cipher.decrypt(first, back);
        expect(Buffer.compare(Buffer.from(back), Buffer.from(plain))).toBe(0);
      }
      expect(Buffer.compare(Buffer.from(results[0]!), Buffer.from(results[1]!))).toBe(0);
      // OpenSSL, one sector at a time (ESSIV's IV made here with AES-ECB under the hashed key).
      const essivKey = spec.ivgen === "essiv" ? (await crypto.subtle.digest("SHA-256", key)) : undefined;
      for (let k = 0; k * 512 < plain.byteLength; k++) {
        let iv = plainIv(first + k, spec.ivgen === "plain" ? "plain" : "plain64");
        if (essivKey) iv = createCipheriv("aes-256-ecb", Buffer.from(essivKey), null).setAutoPadding(false).update(iv);
        const c = createCipheriv(`${spec.alg}-${spec.mode}`, key, iv).setAutoPadding(false);
        const unit = plain.subarray(k * 512, Math.min(plain.byteLength, (k + 1) * 512));
        const expected = Buffer.concat([c.update(unit), c.final()]);
        expect(Buffer.compare(Buffer.from(results[0]!.subarray(k * 512, k * 512 + unit.byteLength)), expected), `sector ${k}`).toBe(0);
      }
    });
  }
});

const SECRET = "s3cret-passphrase";

interface Interop {
  name: string;
  /** qemu-img -o options after encrypt.format=...,encrypt.key-secret=sec0. */
  qemuOptions: string;
  create: { format: "aes" | "luks"; cipherAlg?: string; cipherMode?: string; ivgenAlg?: string; ivgenHashAlg?: string };
}

const INTEROP: Interop[] = [
  { name: "LUKS aes-256-xts-plain64 (QEMU's default)", qemuOptions: "encrypt.format=luks,encrypt.iter-time=100", create: { format: "luks" } },
  {
    name: "LUKS aes-128-cbc-essiv:sha256",
    qemuOptions: "encrypt.format=luks,encrypt.iter-time=100,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256",
    create: { format: "luks", cipherAlg: "aes-128", cipherMode: "cbc", ivgenAlg: "essiv", ivgenHashAlg: "sha256" },
  },
  { name: "legacy AES", qemuOptions: "encrypt.format=aes", create: { format: "aes" } },
];

describe("encrypted images between QEMU and us", () => {
  const secretArgs = ["--object", `secret,id=sec0,data=${SECRET}`];
  const keySecret = new TextEncoder().encode(SECRET);

  for (const t of INTEROP) {
    it(`${t.name}: we decrypt what QEMU wrote`, async () => {
      const dir = tempDir();
      try {
        const raw = dir.path("src.raw");
        const data = randomData(3 * 1024 * 1024 + 4096, 5);
        data.fill(0, 1024 * 1024, 2 * 1024 * 1024);
        writeFileSync(raw, data);
        const img = dir.path("q.qcow2");
        qemuCreatingLuks(["convert", ...secretArgs, "-O", "qcow2", "-o", `${t.qemuOptions},encrypt.key-secret=sec0`, raw, img]);
        const image = await openImage(img, { readOnly: true, encrypt: { keySecret } });
        const buf = new Uint8Array(image.virtualSize);
        await image.read(0, buf);
        // An unaligned read within sectors too.
        const piece = new Uint8Array(1000);
        await image.read(2 * 1024 * 1024 + 77, piece);
        await image.close();
        expect(Buffer.compare(Buffer.from(buf), Buffer.from(data))).toBe(0);
        expect(Buffer.compare(Buffer.from(piece), Buffer.from(data.subarray(2 * 1024 * 1024 + 77, 2 * 1024 * 1024 + 1077)))).toBe(0);
      } finally {
        dir.cleanup();
      }
    });

    it(`${t.name}: QEMU decrypts what we wrote`, async () => {
      const dir = tempDir();
      try {
        const img = dir.path("o.qcow2");
        const size = 4 * 1024 * 1024;
        await createImage(img, { size, encrypt: { ...t.create, keySecret, ...(t.create.format === "luks" && { iterTimeMs: 100 }) } });
        const image = await openImage(img, { encrypt: { keySecret } });
        const expected = new Uint8Array(size);
        const writes: Array<[number, number]> = [
          [0, 256 * 1024],
          [1024 * 1024 + 100, 70_000],
          [3 * 1024 * 1024 - 511, 1],
          [3 * 1024 * 1024 + 4096, 65536 * 3],
        ];
        for (const [i, [off, len]] of writes.entries()) {
          const d = randomData(len, 10 + i);
          await image.write(off, d);
          expected.set(d, off);
        }
        await image.close();
        const out = dir.path("out.raw");
        const opts = `driver=qcow2,file.filename=${img},encrypt.key-secret=sec0`;
        qemu("qemu-img", ["convert", ...secretArgs, "--image-opts", opts, "-O", "raw", out]);
        expect(Buffer.compare(readFileSync(out), Buffer.from(expected))).toBe(0);
        expect(qemu("qemu-img", ["check", ...secretArgs, "--image-opts", opts])).toContain("No errors were found on the image.");
      } finally {
        dir.cleanup();
      }
    });
  }
});
