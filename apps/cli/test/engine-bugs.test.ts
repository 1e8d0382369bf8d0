/**
 * ENGINE BUGS: differences from QEMU 7.2 found while building the CLI, in @qcowkit/core files the CLI does not
 * own. Each test states QEMU's behaviour and FAILS until the engine is fixed (then it simply passes).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { normalizeQemu, qemuImg, qemuIo, qimg, qio, tempDir } from "./helpers";

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

describe("ENGINE BUG (core/src/qcow2-image.ts): compressed writes", () => {
  // QEMU writes the clusters of one compressed request as parallel tasks: a cluster that cannot be written
  // compressed (already allocated: EIO) fails the request, but the others are still written.
  it("write -c over an allocated cluster still writes the unallocated clusters of the request", async () => {
    const cmds = ["-c", "write -P 46 6253568 78336", "-c", "write -c -P 57 6291456 65536"];
    await qemuImg(["create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=16k", "c1.qcow2", "8M"], dir);
    fs.copyFileSync(path.join(dir, "c1.qcow2"), path.join(dir, "c2.qcow2"));
    await qemuIo([...cmds, "c1.qcow2"], dir);
    await qio([...cmds, "c2.qcow2"], dir);
    const cmp = await qemuImg(["compare", "c1.qcow2", "c2.qcow2"], dir);
    expect(cmp.stdout).toBe("Images are identical.\n");
  });

  // With 1-bit refcounts a cluster cannot be shared by two compressed clusters: QEMU starts a new one.
  it("compressed writes with refcount_bits=1 succeed", async () => {
    await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "r1.qcow2", "8M"], dir);
    const r = await qio(["-c", "write -c -P 1 0 4k", "-c", "write -c -P 2 4k 4k", "r1.qcow2"], dir);
    expect(r.stdout).not.toContain("failed");
    expect((await qemuImg(["check", "r1.qcow2"], dir)).code).toBe(0);
  });
});

describe("ENGINE BUG (datafile FileStore / core createImage): QEMU allocates the first block of a new file", () => {
  // file-posix: growing a file from size 0 without preallocation writes zeros over its first 4 KiB (512 bytes
  // when smaller), to make later alignment probing work. Visible in qemu-img map of raw images.
  it("qimg create -f raw gives the map qemu-img create gives", async () => {
    await qemuImg(["create", "-q", "-f", "raw", "q.raw", "4M"], dir);
    await qimg(["create", "-q", "-f", "raw", "o.raw", "4M"], dir);
    const q = await qemuImg(["map", "--output=json", "q.raw"], dir);
    const o = await qemuImg(["map", "--output=json", "o.raw"], dir);
    expect(q.stdout).toContain('"start": 0, "length": 4096, "depth": 0, "present": true, "zero": false, "data": true');
    expect(o.stdout).toBe(q.stdout);
  });
});
