/**
 * Confined references (qnbd's default, implied by safe mode): data file and backing file names stored in an
 * image must lead to a regular file inside the image's folder, judged by the file actually opened (the open
 * descriptor's real path), never by a check of the name made before the open.
 */
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeEach, describe, expect, it, vi } from "vitest";
import { openImage, type BlockImage } from "../src/node";
import { qemu, tempDir } from "./helpers";

/** When armed: the first realpath() of a path ending in `trigger` repoints `link` (a check-then-swap race). */
const race = { trigger: "", swap: () => {} };
vi.mock("node:fs/promises", async (importOriginal) => {
  const original = await importOriginal<typeof import("node:fs/promises")>();
  const realpath = async (...args: Parameters<typeof original.realpath>) => {
    const result = await original.realpath(...args);
    if (race.trigger !== "" && String(args[0]).endsWith(race.trigger)) {
      race.trigger = "";
      race.swap();
    }
    return result;
  };
  return { ...original, realpath, default: { ...original, realpath } };
});

const t = tempDir("qcowkit-confine-");
afterAll(() => t.cleanup());
beforeEach(() => {
  race.trigger = "";
});
let n = 0;

function folder(name: string): string {
  const dir = t.path(name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A data-file image (data_file_raw=on) in `dir` whose stored data file name is `name`. */
function dataFileImage(dir: string, name: string): string {
  const path = join(dir, `d${++n}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${join(dir, `d${n}.raw`)},data_file_raw=on`, path, "1M"]);
  qemu("qemu-img", ["amend", "-f", "qcow2", "-o", `data_file=${name}`, path]);
  return path;
}

function rawFile(path: string, fill: number): string {
  writeFileSync(path, Buffer.alloc(1024 * 1024, fill));
  return path;
}

async function firstByte(image: BlockImage): Promise<number> {
  const b = new Uint8Array(1);
  await image.read(0, b);
  await image.close();
  return b[0]!;
}

async function refusal(p: Promise<BlockImage>): Promise<string> {
  try {
    await (await p).close();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("the open succeeded");
}

describe("confineReferences", () => {
  it("allows absolute and '..' names that stay inside the folder, refuses those that leave it", async () => {
    const dir = folder("inside");
    const outside = rawFile(join(folder("outside"), "secret.raw"), 0x5e);
    rawFile(join(dir, "data.raw"), 0x11);
    mkdirSync(join(dir, "sub"), { recursive: true });
    const absoluteInside = dataFileImage(dir, join(dir, "data.raw"));
    expect(await firstByte(await openImage(absoluteInside, { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(0x11);
    const dotted = dataFileImage(dir, join(dir, "sub", "..", "data.raw"));
    expect(await firstByte(await openImage(dotted, { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(0x11);
    const leaving = dataFileImage(dir, outside);
    expect(await refusal(openImage(leaving, { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(
      `Refusing data file '${outside}' in confined mode: the file opened lies outside the image's folder`,
    );
    // Not confined: followed, as QEMU follows it.
    expect(await firstByte(await openImage(leaving, { format: "qcow2", readOnly: true }))).toBe(0x5e);
  });

  it("refuses backing files outside the folder (also through a link) and NBD backing names", async () => {
    const dir = folder("backing");
    const base = join(folder("backing-outside"), "base.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    symlinkSync(base, join(dir, "link.qcow2"));
    const overlay = (name: string) => {
      const path = join(dir, `o${++n}.qcow2`);
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "qcow2", path, "1M"]);
      return path;
    };
    expect(await refusal(openImage(overlay(base), { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(
      `Could not open backing file: Refusing backing file '${base}' in confined mode: the file opened lies outside the image's folder`,
    );
    expect(await refusal(openImage(overlay("link.qcow2"), { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(
      "Could not open backing file: Refusing backing file 'link.qcow2' in confined mode: the file opened lies outside the image's folder",
    );
    expect(await refusal(openImage(overlay("nbd://127.0.0.1:1/x"), { format: "qcow2", readOnly: true, confineReferences: true }))).toBe(
      "Could not open backing file: Refusing backing file 'nbd://127.0.0.1:1/x' in confined mode: it is not a file in the image's folder",
    );
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "inner.qcow2"), "1M"]);
    await (await openImage(overlay("inner.qcow2"), { format: "qcow2", readOnly: true, confineReferences: true })).close();
  });
});

describe("safe mode checks the file opened, not a name checked before", () => {
  it("a link repointed outside right after its path was resolved still serves the file inside", async () => {
    const dir = folder("race");
    const inside = rawFile(join(dir, "inside.raw"), 0x11);
    const outside = rawFile(join(folder("race-outside"), "secret.raw"), 0x5e);
    const link = join(dir, "link.raw");
    symlinkSync(inside, link);
    const img = dataFileImage(dir, "link.raw");
    // The attacker wins the race as soon as anything resolves the link's path: it then points outside.
    race.trigger = "link.raw";
    race.swap = () => {
      rmSync(link);
      symlinkSync(outside, link);
    };
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      const result = await openImage(img, { format: "qcow2", readOnly: true, safe: true }).then(firstByte, (e: Error) => e.message);
      // Either the file inside is served, or the open is refused: never the secret outside.
      expect(result === 0x11 || /outside the image's folder/.test(String(result)), `got ${String(result)}`).toBe(true);
      // Once the link points outside (swapped now if nothing resolved it), the descriptor shows it: refused.
      if (race.trigger !== "") {
        race.trigger = "";
        race.swap();
      }
      expect(await refusal(openImage(img, { format: "qcow2", readOnly: true, safe: true }))).toBe(
        "Refusing data file 'link.raw' in safe mode: the file opened lies outside the image's folder",
      );
    } finally {
      process.chdir(cwd);
    }
  });
});
