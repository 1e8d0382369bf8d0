/**
 * ENGINE BUGS: differences from QEMU 7.2 found while building the CLI, in @qcowkit/core files the CLI does not
 * own. Each test states QEMU's behaviour and FAILS until the engine is fixed (then it simply passes).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { normalizeQemu, qemuImg, qimg, tempDir } from "./helpers";

const dir = tempDir("qimg-engine-bugs-");

describe("ENGINE BUG (core/src/raw-image.ts): raw images are whole sectors", () => {
  it("a 1000-byte raw file has a virtual size of 1024 bytes, as in QEMU", async () => {
    fs.writeFileSync(path.join(dir, "odd.raw"), new Uint8Array(1000));
    const q = await qemuImg(["info", "--output=json", "odd.raw"], dir);
    const o = await qimg(["info", "--output=json", "odd.raw"], dir);
    expect(JSON.parse(q.stdout)["virtual-size"]).toBe(1024);
    expect(JSON.parse(o.stdout)["virtual-size"]).toBe(1024);
  });
});

describe("ENGINE BUG (core/src/create.ts): create checks run in QEMU's order", () => {
  // qcow2_co_create checks "extended L2 needs v3" before the cluster size and before lazy refcounts.
  for (const opts of ["compat=0.10,extended_l2=on,cluster_size=1000", "compat=0.10,extended_l2=on,lazy_refcounts=on"]) {
    it(opts, async () => {
      const q = await qemuImg(["create", "-f", "qcow2", "-o", opts, "a.qcow2", "64M"], dir);
      const o = await qimg(["create", "-f", "qcow2", "-o", opts, "b.qcow2", "64M"], dir);
      expect(q.stderr).toContain("Extended L2 entries are only supported with compatibility level 1.1");
      expect(o.stderr).toBe(normalizeQemu(q.stderr).replace("a.qcow2", "b.qcow2"));
    });
  }
});

describe("ENGINE BUG (core/src/node.ts probeFormat): QEMU probes qcow2 only for version >= 2", () => {
  it("a qcow2 magic with version 0 is probed as raw", async () => {
    await qemuImg(["create", "-q", "-f", "qcow2", "v0.qcow2", "1M"], dir);
    const fd = fs.openSync(path.join(dir, "v0.qcow2"), "r+");
    fs.writeSync(fd, new Uint8Array(4), 0, 4, 4);
    fs.closeSync(fd);
    const q = await qemuImg(["info", "--output=json", "v0.qcow2"], dir);
    const o = await qimg(["info", "--output=json", "v0.qcow2"], dir);
    expect(JSON.parse(q.stdout).format).toBe("raw");
    expect(o.stderr).toBe("");
    expect(JSON.parse(o.stdout || "{}").format).toBe("raw");
  });
});
