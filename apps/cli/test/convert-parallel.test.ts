/**
 * qimg convert -m N / -W on compressed targets: N clusters compress at once, and the file is the same as
 * with -m 1 (clusters are placed in the order they were issued); QEMU reads it and checks it clean.
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
