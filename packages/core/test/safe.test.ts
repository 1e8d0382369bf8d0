/**
 * Safe mode for untrusted images (the CVE-2024-4467 class: a header naming a data file or backing file makes a
 * tool read a host file). Without it a stored absolute data file name exposes any host file through the image;
 * with it such references, "..", names outside the image's folder (symbolic links followed), protocol prefixes
 * and format probing are refused with one-line errors.
 */
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { openImage, type BlockImage } from "../src/node";
import { qemu, tempDir } from "./helpers";

const t = tempDir("qcowkit-safe-");
afterAll(() => t.cleanup());
let n = 0;

/**
 * A data-file image whose stored data file name is `name` (written by qemu-img amend, not checked); `raw`:
 * data_file_raw=on, so every guest cluster maps to the same offset of the data file.
 */
function dataFileImage(name: string, dir = t.dir, raw = false): string {
  const path = join(dir, `d${++n}.qcow2`);
  const data = join(dir, `d${n}.raw`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${data}${raw ? ",data_file_raw=on" : ""}`, path, "1M"]);
  qemu("qemu-img", ["amend", "-f", "qcow2", "-o", `data_file=${name}`, path]);
  return path;
}

/** An overlay naming `backing`; `withFormat` false hides the backing format extension (QEMU 7.2 creates none). */
function overlay(backing: string, dir = t.dir, withFormat = true): string {
  const path = join(dir, `o${++n}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", path, "1M"]);
  if (!withFormat) {
    const bytes = readFileSync(path);
    const at = bytes.indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca]), 104);
    expect(at).toBeGreaterThan(0);
    bytes.writeUInt32BE(0x0badf00d, at); // an unknown extension type: ignored
    writeFileSync(path, bytes);
  }
  return path;
}

async function refusal(p: Promise<BlockImage>): Promise<string> {
  try {
    const img = await p;
    await img.close();
  } catch (e) {
    expect((e as Error).message).not.toMatch(/\n/);
    return (e as Error).message;
  }
  throw new Error("the open succeeded");
}

describe("safe mode", () => {
  it("without it, a stored absolute data file name exposes a host file; with it the open is refused", async () => {
    const secret = t.path("secret.txt");
    writeFileSync(secret, "host secret\n".padEnd(512, "."));
    const img = dataFileImage(secret, mkdirAndReturn(t.path("elsewhere")), true);
    const unsafe = await openImage(img, { format: "qcow2", readOnly: true });
    const bytes = new Uint8Array(11);
    await unsafe.read(0, bytes);
    await unsafe.close();
    expect(new TextDecoder().decode(bytes)).toBe("host secret");
    expect(await refusal(openImage(img, { format: "qcow2", readOnly: true, safe: true }))).toBe(
      `Refusing data file '${secret}' in safe mode: absolute names are not allowed`,
    );
  });

  it("refuses '..' in a data file name, and relative names that resolve outside the folder", async () => {
    const dir = mkdirAndReturn(t.path("dotdot"));
    const img = dataFileImage("../x.raw", dir);
    expect(await refusal(openImage(img, { format: "qcow2", safe: true }))).toBe(
      "Refusing data file '../x.raw' in safe mode: '..' is not allowed",
    );
    // Relative data file names resolve against the working directory (as in QEMU), not the image's folder.
    const inside = dataFileImage(`d${n + 1}.raw`, dir);
    expect(await refusal(openImage(inside, { format: "qcow2", readOnly: true, safe: true }))).toMatch(
      /in safe mode: it resolves outside the image's folder/,
    );
  });

  it("accepts a relative data file inside the folder when run from there (and the data-file option as given)", async () => {
    const dir = mkdirAndReturn(t.path("cwd"));
    const img = dataFileImage("dfile.raw", dir);
    writeFileSync(join(dir, "dfile.raw"), new Uint8Array(1024 * 1024).fill(7));
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const fromThere = await openImage(img.split("/").pop()!, { format: "qcow2", readOnly: true, safe: true });
      await fromThere.close();
    } finally {
      process.chdir(cwd);
    }
    const opened = await openImage(img, { format: "qcow2", readOnly: true, safe: true, dataFile: join(dir, "dfile.raw") });
    const b = new Uint8Array(1);
    await opened.read(0, b);
    await opened.close();
    expect(b[0]).toBe(0); // the data file holds 7s but nothing is mapped yet: reads as zeros
  });

  it("backing files: absolute, '..', protocol prefixes and missing formats are refused; a sibling is fine", async () => {
    const dir = mkdirAndReturn(t.path("backing"));
    const base = join(dir, "base.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    qemu("qemu-io", ["-c", "write -P 0x5c 0 4k", base]);
    const sibling = overlay("base.qcow2", dir);
    const ok = await openImage(sibling, { format: "qcow2", readOnly: true, safe: true });
    const b = new Uint8Array(1);
    await ok.read(0, b);
    await ok.close();
    expect(b[0]).toBe(0x5c);
    expect(await refusal(openImage(overlay(base, dir), { format: "qcow2", readOnly: true, safe: true }))).toBe(
      `Could not open backing file: Refusing backing file '${base}' in safe mode: absolute names are not allowed`,
    );
    const sub = mkdirAndReturn(join(dir, "sub"));
    expect(await refusal(openImage(overlay("../base.qcow2", sub), { format: "qcow2", readOnly: true, safe: true }))).toBe(
      "Could not open backing file: Refusing backing file '../base.qcow2' in safe mode: '..' is not allowed",
    );
    expect(await refusal(openImage(overlay("file:base.qcow2", dir), { format: "qcow2", readOnly: true, safe: true }))).toBe(
      "Could not open backing file: Refusing backing file 'file:base.qcow2' in safe mode: protocol prefixes are not allowed",
    );
    expect(await refusal(openImage(overlay("base.qcow2", dir, false), { format: "qcow2", readOnly: true, safe: true }))).toBe(
      "Could not open backing file: Refusing to probe the backing file format in safe mode",
    );
    // Each image of the chain is held to its own folder: a sibling's sibling is fine, a climb is not.
    const mid = overlay("base.qcow2", dir);
    const top = overlay(mid.split("/").pop()!, dir);
    const chain = await openImage(top, { format: "qcow2", readOnly: true, safe: true });
    await chain.close();
  });

  it("symbolic links out of the folder are refused, links within it are fine", async () => {
    const dir = mkdirAndReturn(t.path("links"));
    const outside = mkdirAndReturn(t.path("outside"));
    const base = join(outside, "base.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    symlinkSync(base, join(dir, "link.qcow2"));
    expect(await refusal(openImage(overlay("link.qcow2", dir), { format: "qcow2", readOnly: true, safe: true }))).toBe(
      "Could not open backing file: Refusing backing file 'link.qcow2' in safe mode: the file opened lies outside the image's folder",
    );
    const real = join(dir, "real.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", real, "1M"]);
    symlinkSync("real.qcow2", join(dir, "inner-link.qcow2"));
    const ok = await openImage(overlay("inner-link.qcow2", dir), { format: "qcow2", readOnly: true, safe: true });
    await ok.close();
    // Without safe mode the link out is followed (QEMU's behaviour).
    const unsafe = await openImage(overlay("link.qcow2", dir), { format: "qcow2", readOnly: true });
    await unsafe.close();
  });

  it("the image format is never probed in safe mode", async () => {
    const img = t.path("probe.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    expect(await refusal(openImage(img, { readOnly: true, safe: true }))).toBe(
      "Refusing to probe the image format in safe mode; give the format",
    );
  });
});

function mkdirAndReturn(path: string): string {
  mkdirSync(path, { recursive: true });
  return path;
}
