/**
 * Stored data file and backing file names that leave the image's folder (absolute, or with ".."): qimg and
 * qio follow them as qemu-img and qemu-io do, with the same output, plus one warning line on stderr. Names
 * that stay in the folder (relative, or absolute into the folder) give no warning.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ok, qemuImg, qemuIo, qimg, qio, subDir, tempDir } from "./helpers";

const dir = tempDir("qimg-refs-");
const img = subDir(dir, "img");
const other = subDir(dir, "other");

beforeAll(async () => {
  await ok(qemuImg(["create", "-q", "-f", "qcow2", path.join(other, "base.qcow2"), "1M"]));
  await ok(qemuIo(["-c", "write -P 0x5a 0 64k", path.join(other, "base.qcow2")]));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", path.join(img, "local.qcow2"), "1M"]));
  await ok(qemuIo(["-c", "write -P 0x6b 0 64k", path.join(img, "local.qcow2")]));
  const create = (name: string, ...opts: string[]) => ok(qemuImg(["create", "-q", "-f", "qcow2", ...opts, path.join(img, name), "1M"]));
  await create("parent.qcow2", "-b", "../other/base.qcow2", "-F", "qcow2");
  await create("absolute.qcow2", "-b", path.join(other, "base.qcow2"), "-F", "qcow2");
  await create("absolute-inside.qcow2", "-b", path.join(img, "local.qcow2"), "-F", "qcow2");
  await create("relative.qcow2", "-b", "local.qcow2", "-F", "qcow2");
  await create("datafile.qcow2", "-o", `data_file=${path.join(other, "data.raw")}`);
  await ok(qemuIo(["-c", "write -P 0x7c 0 64k", path.join(img, "datafile.qcow2")]));
}, 60_000);

const warning = (image: string, label: string, name: string, reason: string) =>
  `qio: warning: '${image}' names ${label} '${name}' (${reason}) outside its folder; following it\n`;

describe("references that leave the image's folder", () => {
  const cases: Array<[image: string, pattern: string, expected: string]> = [
    ["parent.qcow2", "0x5a", warning("parent.qcow2", "backing file", "../other/base.qcow2", "a name with '..'")],
    ["absolute.qcow2", "0x5a", warning("absolute.qcow2", "backing file", path.join(other, "base.qcow2"), "an absolute name")],
    ["datafile.qcow2", "0x7c", warning("datafile.qcow2", "data file", path.join(other, "data.raw"), "an absolute name")],
    ["absolute-inside.qcow2", "0x6b", ""],
    ["relative.qcow2", "0x6b", ""],
  ];
  for (const [image, pattern, expected] of cases) {
    it(`${image}: ${expected ? "followed, with a warning" : "followed silently"}`, async () => {
      const args = ["-r", "-c", `read -P ${pattern} 0 64k`, image];
      const q = await qemuIo(args, img);
      const o = await qio(args, img);
      expect(q.stdout).toMatch(/^read 65536\/65536 bytes/);
      expect(o.code).toBe(q.code);
      expect(o.stdout.split("\n")[0]).toBe(q.stdout.split("\n")[0]);
      expect(o.stderr).toBe(q.stderr + expected);
    });
  }

  it("qimg convert follows a backing name with '..' and warns once, on stderr", async () => {
    const o = await qimg(["convert", "-O", "raw", "parent.qcow2", "out.raw"], img);
    expect(o.code).toBe(0);
    expect(o.stderr).toBe(warning("parent.qcow2", "backing file", "../other/base.qcow2", "a name with '..'").replace(/^qio/, "qimg"));
    expect(fs.readFileSync(path.join(img, "out.raw")).subarray(0, 65536).every((b) => b === 0x5a)).toBe(true);
  });
});
