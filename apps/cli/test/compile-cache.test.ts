/**
 * The bins' code cache (scripts/compile-cache.cjs, built as dist/compile-cache.cjs and loaded by the #! scripts):
 * written on a first run, used afterwards, and never able to change what a run prints. A damaged entry is
 * compiled over; a cache directory other users may write to is not used at all; QCOWKIT_COMPILE_CACHE=0 turns
 * it off. (How much time it saves is measured in the bench, never here.)
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { QIMG_BIN, QIO_BIN, ok, qemuImg, run, tempDir } from "./helpers";

const dir = tempDir("qimg-compile-cache-");

async function info(cache: string, image: string): Promise<string> {
  return ok(run(process.execPath, [QIMG_BIN, "info", "--output=json", image], { env: { QCOWKIT_COMPILE_CACHE: cache } }));
}

/** The cache entries of qimg's bundle (other files in the directory are the code cache loader's own). */
const qimgEntries = (cache: string) => fs.readdirSync(cache).filter((f) => f.includes("-qimg.cjs-"));

describe("the bins' code cache", () => {
  it("is written by the first run, used by the next, and a damaged entry is compiled over", async () => {
    const image = path.join(dir, "a.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", image, "64M"]));
    const cache = path.join(dir, "cache");
    const first = await info(cache, image);
    expect(JSON.parse(first)["virtual-size"]).toBe(64 * 1024 * 1024);
    const entries = qimgEntries(cache);
    expect(entries).toHaveLength(1);
    expect(fs.statSync(cache).mode & 0o777).toBe(0o700);
    const entry = path.join(cache, entries[0]!);
    const written = fs.readFileSync(entry);
    expect(written.byteLength).toBeGreaterThan(1000);

    // Used as it is: the same output, the entry left alone.
    expect(await info(cache, image)).toBe(first);
    expect(fs.readFileSync(entry).equals(written)).toBe(true);

    // Damaged: V8 refuses it, the bundle is compiled from source, the output is the same and the entry replaced.
    const damaged = Buffer.alloc(written.byteLength, 0x5a);
    fs.writeFileSync(entry, damaged);
    expect(await info(cache, image)).toBe(first);
    expect(fs.readFileSync(entry).equals(damaged)).toBe(false);
    expect(qimgEntries(cache)).toHaveLength(1);
  });

  it("is written again by a run of 2 s or more that compiled clearly more, and left alone by short runs", async () => {
    const image = path.join(dir, "c.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", image, "64M"]));
    const cache = path.join(dir, "cache-long");
    const qio = (...commands: string[]) =>
      ok(run(process.execPath, [QIO_BIN, ...commands.flatMap((c) => ["-c", c]), image], { env: { QCOWKIT_COMPILE_CACHE: cache } }));
    await qio("read 0 512");
    const entries = fs.readdirSync(cache).filter((f) => f.includes("-qio.cjs-"));
    expect(entries).toHaveLength(1);
    const entry = path.join(cache, entries[0]!);
    const short = fs.readFileSync(entry);
    // A short run that compiles more (writes, map) is not long enough to write the entry again.
    await qio("write -P 7 0 1M", "map", "read -P 7 0 1M");
    expect(fs.readFileSync(entry).equals(short)).toBe(true);
    // The same work in a run of over 2 s: the entry now holds that code too.
    const out = await qio("write -P 9 1M 1M", "map", "read -P 9 1M 1M", "sleep 2100");
    expect(out).toContain("read 1048576/1048576 bytes at offset 1048576");
    const long = fs.readFileSync(entry);
    expect(long.byteLength).toBeGreaterThan(short.byteLength * 1.05);
    // Used as it is by the next short run.
    await qio("read 0 512");
    expect(fs.readFileSync(entry).equals(long)).toBe(true);
  });

  it("is not used in a directory others may write to, nor when QCOWKIT_COMPILE_CACHE=0", async () => {
    const image = path.join(dir, "b.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", image, "1M"]));
    const open = path.join(dir, "open");
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777);
    const expected = await info(path.join(dir, "other"), image);
    expect(await info(open, image)).toBe(expected);
    expect(fs.readdirSync(open)).toEqual([]);
    // The default place is under the temporary directory (TMPDIR): made when on, untouched when off.
    const byDefault = (tmp: string, setting: string) =>
      ok(run(process.execPath, [QIMG_BIN, "info", "--output=json", image], { env: { TMPDIR: tmp, QCOWKIT_COMPILE_CACHE: setting } }));
    const on = fs.mkdtempSync(path.join(dir, "tmp-on-"));
    const off = fs.mkdtempSync(path.join(dir, "tmp-off-"));
    expect(await byDefault(on, "")).toBe(expected);
    expect(fs.readdirSync(on).filter((f) => f.startsWith("qcowkit-compile-cache-"))).toHaveLength(1);
    expect(await byDefault(off, "0")).toBe(expected);
    expect(fs.readdirSync(off)).toEqual([]);
  });
});
