/**
 * amendQcow2 through the engine API: every change leaves an image qemu-img check finds clean with the same
 * guest content, and QEMU's refusals come with QEMU's messages.
 */
import { readFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { Qcow2Image, amendQcow2, createSnapshot, type AmendOptions } from "../src/index";
import { openImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

const tmp = tempDir("qcowkit-amend-");
afterAll(tmp.cleanup);
let n = 0;

async function withImage(opts: string[], cmds: string[], fn: (img: Qcow2Image, path: string) => Promise<void>): Promise<string> {
  const path = tmp.path(`a${++n}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, path, "16M"]);
  if (cmds.length) qemu("qemu-io", [...cmds.flatMap((c) => ["-c", c]), path]);
  const img = await openImage(path);
  if (!(img instanceof Qcow2Image)) throw new Error("not qcow2");
  try {
    await fn(img, path);
  } finally {
    await img.close();
  }
  return path;
}

function flat(path: string): Buffer {
  const out = `${path}.raw`;
  qemu("qemu-img", ["convert", "-U", "-O", "raw", path, out]);
  return readFileSync(out);
}

function info(path: string): { "format-specific": { data: Record<string, unknown> } } {
  return JSON.parse(qemu("qemu-img", ["info", "--output=json", path]));
}

const WRITES = ["write -P 1 0 1M", "write -z 2M 1M", "write -c -P 3 4M 64k"];

describe("amendQcow2", () => {
  it.each([1, 2, 4, 8, 32, 64])("refcount_bits=%i rewrites the refcount structures", async (bits) => {
    const path = await withImage([], WRITES, async (img) => {
      await amendQcow2(img, { refcountBits: bits });
      expect(img.header.refcountOrder).toBe(Math.log2(bits));
      // The image stays usable through the new structures.
      await img.write(6 * 1024 * 1024, new Uint8Array(70000).fill(9));
    });
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
    expect(info(path)["format-specific"].data["refcount-bits"]).toBe(bits);
    const content = flat(path);
    expect(content[6 * 1024 * 1024]).toBe(9);
    expect(content.subarray(0, 1024 * 1024).every((b) => b === 1)).toBe(true);
    expect(content.subarray(4 * 1024 * 1024, 4 * 1024 * 1024 + 65536).every((b) => b === 3)).toBe(true);
  });

  it("downgrade and upgrade keep the content", async () => {
    let reference: Buffer | undefined;
    const path = await withImage([], WRITES, async (img, p) => {
      reference = flat(p);
      await amendQcow2(img, { compat: "0.10" });
      expect(img.version).toBe(2);
    });
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
    expect(info(path)["format-specific"].data.compat).toBe("0.10");
    expect(flat(path).equals(reference!)).toBe(true);
    const img = await openImage(path);
    await amendQcow2(img as Qcow2Image, { compat: "1.1", lazyRefcounts: true });
    await img.close();
    expect(info(path)["format-specific"].data).toMatchObject({ compat: "1.1", "lazy-refcounts": true });
    expect(flat(path).equals(reference!)).toBe(true);
  });

  const refusals: Array<[string, string[], AmendOptions, string]> = [
    ["unknown compat", [], { compat: "0.42" }, "Unknown compatibility level 0.42"],
    ["bad width", [], { refcountBits: 3 }, "Refcount width must be a power of two and may not exceed 64 bits"],
    ["data file name without a data file", [], { dataFile: "x" }, "data-file can only be set for images that use an external data file"],
    ["raw bit on", [], { dataFileRaw: true }, "data-file-raw cannot be set on existing images"],
    ["other backing file", [], { backingFile: "x" }, "Cannot amend the backing file"],
    ["downgrade with 1-bit refcounts", ["-o", "refcount_bits=1"], { compat: "0.10" }, "compat=0.10 requires refcount_bits=16"],
    ["downgrade with extended L2", ["-o", "extended_l2=on"], { compat: "0.10" }, "Cannot downgrade an image with incompatible features 0x10 set"],
    ["lazy refcounts on v2", ["-o", "compat=0.10"], { lazyRefcounts: true }, "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"],
  ];
  it.each(refusals)("refuses: %s", async (_name, opts, amend, message) => {
    await withImage(opts, [], async (img) => {
      await expect(amendQcow2(img, amend)).rejects.toThrow(message);
    });
  });

  it("a refcount that does not fit the new width is refused before anything changes", async () => {
    const path = await withImage([], ["write 0 64k"], async (img) => {
      await createSnapshot(img, "s");
      await expect(amendQcow2(img, { refcountBits: 1 })).rejects.toThrow(
        /^Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x[0-9a-f]+ has a refcount of 2$/,
      );
    });
    expect(info(path)["format-specific"].data["refcount-bits"]).toBe(16);
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
  });
});
