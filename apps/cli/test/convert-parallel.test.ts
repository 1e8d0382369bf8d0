/**
 * qimg convert -m N / -W on compressed targets: N clusters compress at once, and the file is the same as
 * with -m 1 (clusters are placed in the order they were issued); QEMU reads it and checks it clean.
 * Uncompressed copies (raw <-> qcow2, and from a compressed qcow2, which goes through memory with reads
 * ahead and writes in flight): -m 8 -W gives the file -m 1 gives, and the allocation map QEMU's in-order copy
 * (qemu-img convert -m 1) gives.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { ok, qemuImg, qimg, tempDir } from "./helpers";

const dir = tempDir("qimg-convert-parallel-");

/** Text-like bytes (compressible), a zero run, then random bytes (stored uncompressed). */
function sourceData(): Buffer {
  const out = Buffer.alloc(6 * 1024 * 1024 + 12345);
  let x = 7;
  const words = ["disk", "image", "cluster", "qcow2", "sector", "table", "guest", "host", "refcount"];
  let at = 0;
  while (at < 3 * 1024 * 1024) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    at += out.write(`${words[x % words.length]}${x % 7 === 0 ? "\n" : " "}`, at);
  }
  for (let i = 4 * 1024 * 1024; i < out.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

describe("convert -c with requests in flight", () => {
  it("-m 1, -m 8, -m 16 -W give the same file; QEMU reads it back and checks it clean", async () => {
    const src = path.join(dir, "src.raw");
    fs.writeFileSync(src, sourceData());
    const files: Buffer[] = [];
    for (const opts of [["-m", "1"], ["-m", "8"], ["-m", "16", "-W"]]) {
      const out = path.join(dir, `out${opts.join("")}.qcow2`);
      await ok(qimg(["convert", "-c", ...opts, "-f", "raw", "-O", "qcow2", src, out]));
      expect(await ok(qemuImg(["compare", "-f", "raw", "-F", "qcow2", src, out]))).toContain("Images are identical.");
      expect(await ok(qemuImg(["check", out]))).toContain("No errors were found on the image.");
      files.push(fs.readFileSync(out));
    }
    expect(Buffer.compare(files[0]!, files[1]!)).toBe(0);
    expect(Buffer.compare(files[0]!, files[2]!)).toBe(0);
  });
});

/** The JSON map of an image as QEMU reports it. */
async function qemuMap(file: string): Promise<unknown> {
  return JSON.parse(await ok(qemuImg(["map", "--output=json", file])));
}

describe("uncompressed convert with requests in flight", () => {
  const src = path.join(dir, "plain-src.raw");
  const compressedSrc = path.join(dir, "plain-src-c.qcow2");
  const plainSrc = path.join(dir, "plain-src.qcow2");

  it.each([
    ["raw -> qcow2", "raw", () => src, "qcow2"],
    ["qcow2 -> raw", "qcow2", () => plainSrc, "raw"],
    ["compressed qcow2 -> qcow2 (through memory)", "qcow2", () => compressedSrc, "qcow2"],
    ["compressed qcow2 -> raw (through memory)", "qcow2", () => compressedSrc, "raw"],
  ] as const)("%s: -m 1 and -m 8 -W give the same file, and QEMU's in-order map", async (_title, inFmt, input, outFmt) => {
    if (!fs.existsSync(src)) {
      fs.writeFileSync(src, sourceData());
      await ok(qemuImg(["convert", "-f", "raw", "-O", "qcow2", src, plainSrc]));
      await ok(qemuImg(["convert", "-c", "-f", "raw", "-O", "qcow2", src, compressedSrc]));
    }
    const tag = `${_title.replace(/[^a-z0-9]+/g, "-")}`;
    const files: Buffer[] = [];
    const outs: string[] = [];
    for (const opts of [["-m", "1"], ["-m", "8", "-W"]]) {
      const out = path.join(dir, `${tag}${opts.join("")}.${outFmt}`);
      await ok(qimg(["convert", ...opts, "-f", inFmt, "-O", outFmt, input(), out]));
      expect(await ok(qemuImg(["compare", "-f", inFmt, "-F", outFmt, input(), out]))).toContain("Images are identical.");
      if (outFmt === "qcow2") expect(await ok(qemuImg(["check", out]))).toContain("No errors were found on the image.");
      files.push(fs.readFileSync(out));
      outs.push(out);
    }
    expect(Buffer.compare(files[0]!, files[1]!)).toBe(0);
    const theirs = path.join(dir, `${tag}-qemu.${outFmt}`);
    await ok(qemuImg(["convert", "-m", "1", "-f", inFmt, "-O", outFmt, input(), theirs]));
    expect(await qemuMap(outs[1]!)).toEqual(await qemuMap(theirs));
  });
});
