/**
 * The qio features QEMU's iotests need, each against qemu-io on twin images: aio_read/aio_write/aio_flush
 * (output and order, the images equal afterwards), -s snapshot mode (writes seen in the session, the image left
 * alone), reopen (-r/-w/-c/-o and its refusals), the lazy-refcounts runtime option (the dirty bit after a
 * crash), and QEMU's order of errors when a data file is given for an image with internal data.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { filterTimings, neutralUsageSummaries, normalizeQemu, qemuImg, qemuIo, qio, subDir, tempDir } from "./helpers";

const root = tempDir("qio-iotests-");

/** Twin 4 MiB images made by qemu-img; returns [ours, theirs]. */
async function twins(dir: string, opts: string[] = []): Promise<[string, string]> {
  const a = path.join(dir, "ours.qcow2");
  const b = path.join(dir, "theirs.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", ...opts, a, "4M"]);
  fs.copyFileSync(a, b);
  return [a, b];
}

/** Run the same qemu-io arguments (IMG replaced) on both; expect the same output and exit code. */
async function same(args: (img: string) => string[], ours: string, theirs: string): Promise<string> {
  const [o, t] = await Promise.all([qio(args(ours)), qemuIo(args(theirs))]);
  const strip = (text: string, img: string) => neutralUsageSummaries(filterTimings(text.split(img).join("IMG")));
  expect(strip(o.stdout, ours)).toBe(strip(normalizeQemu(t.stdout), theirs));
  expect(strip(o.stderr, ours)).toBe(strip(normalizeQemu(t.stderr), theirs));
  expect(o.code).toBe(t.code);
  return o.stdout;
}

const cmds = (list: string[]) => (img: string) => [...list.flatMap((c) => ["-c", c]), "-f", "qcow2", img];

describe("qio aio_read / aio_write / aio_flush", () => {
  it("seeded sequences of one request at a time give QEMU's output and image", async () => {
    const dir = subDir(root, "aio-seq");
    const [a, b] = await twins(dir);
    const rnd = seededRandom(20);
    const list: string[] = [];
    for (let i = 0; i < 24; i++) {
      const off = Math.floor(rnd() * 8192) * 512;
      const len = (1 + Math.floor(rnd() * 128)) * 512;
      const p = Math.floor(rnd() * 256);
      const kind = Math.floor(rnd() * 4);
      if (kind === 0) list.push(`aio_write -P ${p} ${off} ${len}`);
      else if (kind === 1) list.push(`aio_write -z ${off} ${len}`);
      else if (kind === 2) list.push(`aio_read -P ${p} ${off} ${len}`);
      else list.push(`aio_write -P ${p} ${off} ${len >> 1} ${len >> 1}`);
      list.push("aio_flush");
    }
    list.push("aio_read -v 0 64", "aio_flush", "aio_read -q -P 0 4000000 512", "aio_flush");
    await same(cmds(list), a, b);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });

  it("completions are printed in the next command that does I/O (not before length), and at the end", async () => {
    // qemu-io's own order here depends on its thread pool's timing (one run in a few prints the read first);
    // qio's is fixed: requests run in order and print at QEMU's usual points.
    const dir = subDir(root, "aio-order");
    const [a] = await twins(dir);
    const r = await qio(["--cache", "writeback", ...cmds(["aio_write -P 7 0 4k", "length", "read -P 7 0 4k", "aio_write -i 0 1", "aio_write -P 8 4k 4k"])(a)]);
    const out = filterTimings(r.stdout);
    expect(out).toBe(
      "4 MiB\nwrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; TIME\nread 4096/4096 bytes at offset 0\n4 KiB, 1 ops; TIME\n" +
        "injecting invalid write request\nwrote 4096/4096 bytes at offset 4096\n4 KiB, 1 ops; TIME\n",
    );
    expect(r.code).toBe(0);
    expect((await qemuIo(["-c", "read -P 8 4k 4k", a])).stdout).toMatch(/^read 4096/);
  });

  it("argument errors as qemu-io's", async () => {
    const dir = subDir(root, "aio-errors");
    const [a, b] = await twins(dir);
    for (const c of ["aio_write -z 0 512 512", "aio_write -u 0 512", "aio_read 0", "aio_read 0 x", "aio_write -P 0x1000 0 512", "aio_read -i 0 512", "aio_flush 1"]) {
      await same(cmds([c]), a, b);
    }
  });

  it("a failed request prints QEMU's line and the command still succeeds", async () => {
    const dir = subDir(root, "aio-fail");
    const [a, b] = await twins(dir);
    await same(cmds(["aio_read 4M 512", "aio_flush"]), a, b);
  });
});

describe("qio -s (snapshot mode)", () => {
  it("writes are seen in the session and the image is left alone", async () => {
    const dir = subDir(root, "snapshot");
    const [a, b] = await twins(dir);
    await same(cmds(["write -P 1 0 64k"]), a, b);
    const before = fs.readFileSync(a);
    await same((img) => ["-s", ...cmds(["write -P 2 0 1M", "read -P 2 0 1M", "read -P 0 1M 1M"])(img)], a, b);
    await same((img) => ["-c", `open -s ${img}`, "-c", "write -P 3 32k 4k", "-c", "read -P 3 32k 4k", "-c", "read -P 1 0 32k"], a, b);
    expect(fs.readFileSync(a).equals(before)).toBe(true);
    await same(cmds(["read -P 1 0 64k"]), a, b);
  });
});

describe("qio reopen", () => {
  it("-r/-w switch the access mode; refusals as qemu-io's", async () => {
    const dir = subDir(root, "reopen");
    const [a, b] = await twins(dir);
    await same((img) => ["-r", ...cmds(["write 0 64k"])(img)], a, b);
    await same((img) => ["-r", ...cmds(["reopen -w", "write 0 64k"])(img)], a, b);
    await same((img) => ["-r", ...cmds(["reopen -w", "reopen -r", "write 0 64k"])(img)], a, b);
    for (const c of ["reopen -r -w", "reopen -r -o read-only=on", "reopen -c none -o cache.direct=on", "reopen -o read-only=foo", "reopen -o driver=raw", "reopen -o driver=qcow2", "reopen -c bogus", "reopen x"]) {
      await same(cmds([c, "write -P 5 0 512"]), a, b);
    }
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });

  it("lazy-refcounts=on leaves the dirty bit after a crash, =off does not", async () => {
    for (const [create, option, dirty] of [["lazy_refcounts=off", "on", true], ["lazy_refcounts=on", "off", false]] as const) {
      const dir = subDir(root, `lazy-${option}`);
      const [a, b] = await twins(dir, ["-o", `compat=1.1,${create}`]);
      await same(cmds([`reopen -o lazy-refcounts=${option}`, "write -P 0x5a 0 512", "sigraise 9"]), a, b);
      for (const img of [a, b]) {
        const info = JSON.parse((await qemuImg(["info", "-U", "--output=json", img])).stdout);
        expect(info["dirty-flag"], `${img} after lazy-refcounts=${option}`).toBe(dirty);
      }
    }
  });

  it("lazy-refcounts=on on a compat=0.10 image is refused as QEMU refuses it", async () => {
    const dir = subDir(root, "lazy-v2");
    const [a, b] = await twins(dir, ["-o", "compat=0.10"]);
    await same(cmds(["reopen -o lazy-refcounts=on"]), a, b);
  });
});

describe("data-file given for an image with internal data", () => {
  it("the data file's open error comes first, then the refusal", async () => {
    const dir = subDir(root, "data-file-order");
    const [a, b] = await twins(dir);
    fs.writeFileSync(path.join(dir, "exists.raw"), "");
    for (const name of [path.join(dir, "inexistent"), path.join(dir, "exists.raw")]) {
      await same((img) => ["-c", `open -odata-file.filename=${name} ${img}`, "-c", "read -P 0 0 64k"], a, b);
    }
  });
});

describe("json: filenames and blkdebug on the data file", () => {
  const json = (img: string, dataFile: Record<string, unknown>) =>
    `json:${JSON.stringify({ driver: "qcow2", file: { driver: "file", filename: img }, "data-file": dataFile }).replace(/"/g, "'")}`;

  it("a json: filename opens the image it describes (single-quoted strings, as QEMU's JSON)", async () => {
    const dir = subDir(root, "json");
    const [a, b] = await twins(dir, ["-o", `data_file=${path.join(dir, "DATA")}`]);
    // Both images name the same data file: give each its own.
    fs.copyFileSync(path.join(dir, "DATA"), path.join(dir, "DATA2"));
    const desc = (img: string) => json(img, { driver: "file", filename: path.join(dir, img === a ? "DATA" : "DATA2") });
    await same((img) => ["-c", "write -P 9 0 64k", "-c", "read -P 9 0 64k", desc(img)], a, b);
    expect(fs.readFileSync(path.join(dir, "DATA")).equals(fs.readFileSync(path.join(dir, "DATA2")))).toBe(true);
  });

  it("blkdebug inject-error (event none) fails the data file's flushes and writes as QEMU's", async () => {
    const dir = subDir(root, "blkdebug");
    const [a, b] = await twins(dir, ["-o", `data_file=${path.join(dir, "DATA")}`]);
    const blk = (rule: Record<string, unknown>) => ({ driver: "blkdebug", "inject-error": [rule], image: { driver: "file", filename: path.join(dir, "DATA") } });
    const cases: Array<[Record<string, unknown>, string[]]> = [
      [{ event: "none", iotype: "flush" }, ["write 0 512", "flush"]],
      [{ event: "none", iotype: "write", errno: 28 }, ["write 0 512"]],
      [{ event: "none", iotype: "read", errno: 5, once: true }, ["write -P 3 0 4k", "read -P 3 0 4k", "read -P 3 0 4k"]],
    ];
    for (const [rule, list] of cases) {
      // One run each, one after the other: both images use the same data file.
      const o = await qio(["-t", "writeback", ...list.flatMap((c) => ["-c", c]), json(a, blk(rule))]);
      const t = await qemuIo(["-t", "writeback", ...list.flatMap((c) => ["-c", c]), json(b, blk(rule))]);
      expect(filterTimings(o.stdout), JSON.stringify(rule)).toBe(filterTimings(t.stdout));
      expect(o.stderr, JSON.stringify(rule)).toBe(normalizeQemu(t.stderr));
      expect(o.code, JSON.stringify(rule)).toBe(t.code);
    }
  });
});

describe("qcow2 runtime options", () => {
  it("cache options are checked as QEMU checks them, and accepted when valid", async () => {
    const dir = subDir(root, "cache-opts");
    const [a, b] = await twins(dir);
    for (const o of [
      "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
      "cache-size=1M,l2-cache-size=2M",
      "cache-size=1M,refcount-cache-size=2M",
      "l2-cache-entry-size=256",
      "l2-cache-entry-size=4242",
      "l2-cache-entry-size=128k",
      "cache-size=0",
      "cache-size=2M,l2-cache-size=1M",
      "l2-cache-entry-size=16k",
      "cache-clean-interval=10,overlap-check=all,overlap-check.inactive-l2=off,lazy-refcounts=off",
      "overlap-check=some",
    ]) {
      await same((img) => ["-c", `open -o ${o} ${img}`, "-c", "read -P 0 0 64k"], a, b);
    }
  });
});

describe("null-co", () => {
  it("null-co:// leaves reads unfilled and drops writes; json: driver=null-co converts as QEMU's", async () => {
    const dir = subDir(root, "null-co");
    const cmdsNull = ["write -P 1 0 4k", "read -P 0 0 4k", "length"];
    const [o, t] = await Promise.all([
      qio(["-f", "raw", ...cmdsNull.flatMap((c) => ["-c", c]), "null-co://"]),
      qemuIo(["-f", "raw", ...cmdsNull.flatMap((c) => ["-c", c]), "null-co://"]),
    ]);
    expect(filterTimings(o.stdout)).toBe(filterTimings(t.stdout));
    expect(o.code).toBe(t.code);
    const src = "json:{ 'driver': 'null-co', 'size': 1048576, 'read-zeroes': true }";
    const [a, b] = [path.join(dir, "ours.qcow2"), path.join(dir, "theirs.qcow2")];
    const { qimg } = await import("./helpers");
    expect((await qimg(["convert", "-O", "qcow2", "-S", "512", src, a])).code).toBe(0);
    expect((await qemuImg(["convert", "-O", "qcow2", "-S", "512", src, b])).code).toBe(0);
    expect((await qemuImg(["map", "--output=json", a])).stdout).toBe((await qemuImg(["map", "--output=json", b])).stdout);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });

  it("a null-co data file (json:) takes writes without space, as QEMU's", async () => {
    const dir = subDir(root, "null-data");
    const [a, b] = await twins(dir, ["-o", `data_file=${path.join(dir, "DATA")}`]);
    const desc = (img: string) => `json:{'driver':'qcow2','file':{'filename':'${img}'},'data-file':{'driver':'null-co','size':'4294967296','read-zeroes':true}}`;
    const before = fs.readFileSync(path.join(dir, "DATA"));
    await same((img) => ["-c", "write -P 1 0 2M", "-c", "read -P 0 0 2M", desc(img)], a, b);
    expect(fs.readFileSync(path.join(dir, "DATA")).equals(before)).toBe(true);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });
});
