/**
 * The standalone luks format, key slot management and the qcow2 VM state area, against QEMU 7.2: images made
 * by qemu-img are read by us and ours by qemu-io/qemu-img, with the same seeded data; key slots we add or
 * erase open (or no longer open) in QEMU; VM state written by either is read back by the other.
 */
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { LuksImage, amendEncryption, createImage, openImage, readVmState, writeVmState } from "../src/node";
import { qemu, qemuCreatingLuks, qemuStatus, randomData, rng, tempDir } from "./helpers";

const SECRETS = ["--object", "secret,id=sec0,data=hunter0", "--object", "secret,id=sec1,data=hunter1"];
const enc = (s: string) => new TextEncoder().encode(s);

/** Seeded writes (offset, length) that cross sector boundaries. */
function seededWrites(size: number, seed: number, count: number): Array<[number, number]> {
  const r = rng(seed);
  const out: Array<[number, number]> = [];
  for (let i = 0; i < count; i++) {
    const len = 1 + Math.floor(r() * 20000);
    out.push([Math.floor(r() * (size - len)), len]);
  }
  return out;
}

const luksOpts = (file: string, secret = "sec0") => `driver=luks,file.filename=${file},key-secret=${secret}`;

describe("standalone luks images between QEMU and us", () => {
  it("we read what QEMU wrote, refuse a wrong or missing key with QEMU's messages, and report QEMU's info", async () => {
    const dir = tempDir();
    try {
      const img = dir.path("q.luks");
      const size = 2 * 1024 * 1024;
      qemuCreatingLuks(["create", "-q", "-f", "luks", ...SECRETS, "-o", "key-secret=sec0,iter-time=10", img, String(size)]);
      const raw = dir.path("src.raw");
      const data = randomData(size, 7);
      writeFileSync(raw, data);
      qemu("qemu-img", ["convert", "-n", ...SECRETS, "-f", "raw", raw, "--target-image-opts", luksOpts(img)]);
      const image = await openImage(img, { readOnly: true, encrypt: { keySecret: enc("hunter0") } });
      expect(image.format).toBe("luks");
      expect(image.virtualSize).toBe(size);
      const all = new Uint8Array(size);
      await image.read(0, all);
      const piece = new Uint8Array(3001);
      await image.read(1_000_003, piece);
      await image.close();
      expect(Buffer.compare(Buffer.from(all), Buffer.from(data))).toBe(0);
      expect(Buffer.compare(Buffer.from(piece), Buffer.from(data.subarray(1_000_003, 1_003_004)))).toBe(0);
      // QEMU's own words for a wrong and a missing key.
      const wrong = qemuStatus("qemu-io", ["--object", "secret,id=sec0,data=nope", "--image-opts", luksOpts(img), "-c", "read 0 512"]);
      await expect(openImage(img, { readOnly: true, encrypt: { keySecret: enc("nope") } })).rejects.toThrow(wrong.stderr.replace(/^qemu-io: can't open: /, "").trim());
      const missing = qemuStatus("qemu-io", ["-f", "luks", img, "-c", "read 0 512"]);
      await expect(openImage(img, { readOnly: true })).rejects.toThrow(missing.stderr.replace(/^qemu-io: can't open device [^:]*: /, "").trim());
      // Without I/O (info) no key is needed, and the header reads as QEMU reads it.
      const info = await openImage(img, { readOnly: true, noIo: true });
      const theirs = JSON.parse(qemu("qemu-img", ["info", "--output=json", img])) as { "format-specific": { data: unknown } };
      expect((info as LuksImage).info()).toEqual(theirs["format-specific"].data);
      await info.close();
    } finally {
      dir.cleanup();
    }
  });

  it("QEMU reads what we created and wrote (unaligned seeded writes), and sees QEMU's layout", async () => {
    const dir = tempDir();
    try {
      const img = dir.path("o.luks");
      const size = 3 * 1024 * 1024;
      await createImage(img, { format: "luks", size, encrypt: { format: "luks", keySecret: enc("hunter0"), iterTimeMs: 10 } });
      const image = await openImage(img, { encrypt: { keySecret: enc("hunter0") } });
      // A new luks disk does not read as zeros (its sectors were never encrypted): fill it first.
      const expected = randomData(size, 99);
      await image.write(0, expected.slice());
      for (const [i, [off, len]] of seededWrites(size, 11, 40).entries()) {
        const d = randomData(len, 100 + i);
        await image.write(off, d);
        expected.set(d, off);
      }
      await image.writeZeroes(5000, 3000);
      expected.fill(0, 5000, 8000);
      await image.close();
      const out = dir.path("out.raw");
      qemu("qemu-img", ["convert", ...SECRETS, "--image-opts", luksOpts(img), "-O", "raw", out]);
      expect(Buffer.compare(readFileSync(out), Buffer.from(expected))).toBe(0);
      const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", img])) as { format: string; "virtual-size": number; "format-specific": { data: { "payload-offset": number } } };
      expect(info.format).toBe("luks");
      expect(info["virtual-size"]).toBe(size);
      // QEMU's default aes-256-xts header area: 8 key slots of 252 KiB after the 4 KiB header.
      expect(info["format-specific"].data["payload-offset"]).toBe(2068480);
      expect(statSync(img).size).toBe(2068480 + size);
    } finally {
      dir.cleanup();
    }
  });
});

describe("LUKS key slots (qemu-img amend's state/keyslot/old-secret/new-secret)", () => {
  for (const kind of ["luks", "qcow2"] as const) {
    it(`${kind}: a slot we add opens in QEMU, a slot we erase no longer does, the last one is kept without force`, async () => {
      const dir = tempDir();
      try {
        const img = dir.path(`k.${kind}`);
        const encrypt = { format: "luks" as const, keySecret: enc("hunter0"), iterTimeMs: 10 };
        await createImage(img, { format: kind, size: 1024 * 1024, encrypt });
        const spec = (secret: string) => (kind === "luks" ? luksOpts(img, secret) : `driver=qcow2,file.filename=${img},encrypt.key-secret=${secret}`);
        const qemuOpens = (secret: string) => qemuStatus("qemu-io", [...SECRETS, "--image-opts", spec(secret), "-c", "read 0 512"]);
        let image = await openImage(img, { encrypt: { keySecret: enc("hunter0") } });
        await amendEncryption(image, { state: "active", newSecret: () => enc("hunter1"), keyslot: 3, iterTimeMs: 10 });
        await expect(amendEncryption(image, { state: "active", newSecret: () => enc("hunter1"), keyslot: 3 })).rejects.toThrow(
          "Refusing to overwrite active keyslot 3 - please erase it first",
        );
        await image.close();
        expect(qemuOpens("sec1").status).toBe(0);
        image = await openImage(img, { encrypt: { keySecret: enc("hunter1") } });
        await amendEncryption(image, { state: "inactive", oldSecret: () => enc("hunter0") });
        await expect(amendEncryption(image, { state: "inactive", keyslot: 3 })).rejects.toThrow(
          "Attempt to erase the only active keyslot 3 which will erase all the data in the image irreversibly - refusing operation",
        );
        await image.close();
        expect(qemuOpens("sec0").stderr).toContain("Invalid password, cannot unlock any keyslot");
        expect(qemuOpens("sec1").status).toBe(0);
        const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", img])) as { "format-specific": { data: { slots?: Array<{ active: boolean }>; encrypt?: { slots: Array<{ active: boolean }> } } } };
        const slots = info["format-specific"].data.slots ?? info["format-specific"].data.encrypt!.slots;
        expect(slots.map((s) => s.active)).toEqual([false, false, false, true, false, false, false, false]);
        if (kind === "qcow2") expect(qemu("qemu-img", ["check", ...SECRETS, "--image-opts", spec("sec1")])).toContain("No errors were found");
      } finally {
        dir.cleanup();
      }
    });
  }
});

describe("the qcow2 VM state area (qemu-io read -b / write -b)", () => {
  it("what either side writes past the disk the other reads back; snapshots keep it; qemu-img check is clean", async () => {
    const dir = tempDir();
    try {
      const img = dir.path("v.qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "6G"]);
      qemu("qemu-io", ["-c", "write -b -P 0x33 10485760 32768", img]);
      // qemu-io's -b wants whole sectors; the engine's API takes any range.
      const image = await openImage(img);
      const got = new Uint8Array(32768);
      await readVmState(image, 10485760, got);
      expect(got.every((b) => b === 0x33)).toBe(true);
      const ours = randomData(70_001, 3);
      await writeVmState(image, 4294967296 + 17, ours);
      // The disk itself is untouched.
      const disk = new Uint8Array(4096);
      await image.read(image.virtualSize - 4096, disk);
      expect(disk.every((b) => b === 0)).toBe(true);
      await image.close();
      const read = qemuStatus("qemu-io", ["-c", `read -b -v ${4294967296 + 512} 512`, img]);
      expect(read.stdout).toContain([...ours.subarray(512 - 17, 512 - 17 + 16)].map((b) => b.toString(16).padStart(2, "0")).join(" "));
      expect(qemu("qemu-img", ["check", img])).toContain("No errors were found on the image.");
      qemu("qemu-img", ["snapshot", "-c", "s1", img]);
      const again = await openImage(img, { readOnly: true });
      const back = new Uint8Array(ours.byteLength);
      await readVmState(again, 4294967296 + 17, back);
      await again.close();
      expect(Buffer.compare(Buffer.from(back), Buffer.from(ours))).toBe(0);
    } finally {
      dir.cleanup();
    }
  });
});
