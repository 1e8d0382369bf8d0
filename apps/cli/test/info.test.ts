/**
 * qimg info against qemu-img info on images made by QEMU (every kind: v2/v3, data files, backing chains,
 * extended L2, zstd, lazy refcounts, dirty, corrupt, snapshots, bitmaps), human and JSON, byte for byte; and
 * the refusals for damaged headers: the same message, one line, a non-zero exit.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { normalizeQemu, ok, qemuImg, qemuIo, qimg, tempDir } from "./helpers";

const dir = tempDir("qimg-info-");

async function sh(tool: "img" | "io", ...args: string[]): Promise<void> {
  await ok(tool === "img" ? qemuImg(args, dir) : qemuIo(args, dir));
}

function patch(file: string, offset: number, bytes: number[]): void {
  const fd = fs.openSync(path.join(dir, file), "r+");
  fs.writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  fs.closeSync(fd);
}

const IMAGES: string[] = [];

beforeAll(async () => {
  /** create NAME with ARGS (options, then an optional size last). */
  const mk = async (name: string, ...args: string[]) => {
    const size = args.length > 0 && /^[0-9]/.test(args[args.length - 1]!) ? [args.pop()!] : [];
    await sh("img", "create", "-q", "-f", "qcow2", ...args, name, ...size);
    IMAGES.push(name);
  };
  await mk("v3.qcow2", "64M");
  await mk("v2.qcow2", "-o", "compat=0.10", "1G");
  await mk("c4k.qcow2", "-o", "cluster_size=4k,refcount_bits=1", "100M");
  await mk("c2m.qcow2", "-o", "cluster_size=2M,refcount_bits=64", "10G");
  await mk("zstd.qcow2", "-o", "compression_type=zstd", "64M");
  await mk("lazy.qcow2", "-o", "lazy_refcounts=on", "64M");
  await mk("extl2.qcow2", "-o", "extended_l2=on,cluster_size=128k", "1G");
  await mk("df.qcow2", "-o", "data_file=df.raw", "64M");
  await mk("dfraw.qcow2", "-o", "data_file=dfraw.raw,data_file_raw=on", "64M");
  await mk("dfall.qcow2", "-o", "data_file=dfall.raw,data_file_raw=on,lazy_refcounts=on,extended_l2=on,compression_type=zstd", "3G");
  await mk("prealloc.qcow2", "-o", "preallocation=metadata", "16M");
  await mk("odd.qcow2", "100");
  await mk("empty.qcow2", "0");
  await mk("top.qcow2", "-b", "v3.qcow2", "-F", "qcow2");
  await mk("top2.qcow2", "-b", "top.qcow2", "-F", "qcow2", "128M");
  fs.mkdirSync(path.join(dir, "sub"), { recursive: true });
  await mk("sub/base.qcow2", "1M");
  await mk("sub/top.qcow2", "-b", "base.qcow2", "-F", "qcow2");
  await mk("missing-back.qcow2", "-u", "-b", "nonexist.qcow2", "-F", "qcow2", "1M");
  await mk("nofmt-back.qcow2", "-u", "-b", "v3.qcow2", "-F", "qcow2", "1M");
  // Data: allocated clusters change the disk size; compressed clusters; zero clusters.
  await mk("data.qcow2", "64M");
  await sh("io", "-c", "write -P 1 0 1M", "-c", "write -c -P 2 2M 64k", "-c", "write -z 4M 64k", "data.qcow2");
  // Snapshots and bitmaps.
  await mk("snap.qcow2", "64M");
  await sh("io", "-c", "write -P 1 0 1M", "snap.qcow2");
  await sh("img", "snapshot", "-c", "snap1", "snap.qcow2");
  await sh("img", "snapshot", "-c", "a longer snapshot name than the column", "snap.qcow2");
  await mk("bitmaps.qcow2", "64M");
  await sh("img", "bitmap", "--add", "bitmaps.qcow2", "bm0");
  await sh("img", "bitmap", "--add", "-g", "1M", "--disable", "bitmaps.qcow2", "bm1");
  await mk("both.qcow2", "64M");
  await sh("img", "snapshot", "-c", "s", "both.qcow2");
  await sh("img", "bitmap", "--add", "both.qcow2", "b");
  // Dirty (lazy refcounts, killed) and corrupt.
  await mk("dirty.qcow2", "-o", "lazy_refcounts=on", "64M");
  await qemuIo(["-c", "write 0 64k", "-c", "sigraise 9", "dirty.qcow2"], dir);
  await mk("corrupt.qcow2", "64M");
  patch("corrupt.qcow2", 79, [0x02]);
  // Raw.
  fs.writeFileSync(path.join(dir, "r.raw"), new Uint8Array(1 << 20));
  IMAGES.push("r.raw");
  await mk("rawback.qcow2", "-b", "r.raw", "-F", "raw", "2M");
  fs.writeFileSync(path.join(dir, "odd.raw"), new Uint8Array(1000));
});

const run = async (args: string[]) => {
  const [q, o] = await Promise.all([qemuImg(args, dir), qimg(args, dir)]);
  return { q: { code: q.code, stdout: normalizeQemu(q.stdout), stderr: normalizeQemu(q.stderr) }, o };
};

describe("qimg info equals qemu-img info", () => {
  it("JSON and human output for every kind of image", async () => {
    const failures: string[] = [];
    for (const img of IMAGES) {
      for (const extra of [[], ["--output=json"], ["--backing-chain"], ["--output", "json", "--backing-chain"], ["-U"]]) {
        const args = ["info", ...extra, img];
        const { q, o } = await run(args);
        if (q.code !== o.code || q.stdout !== o.stdout || q.stderr !== o.stderr) {
          failures.push(`${args.join(" ")}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
        }
      }
    }
    expect(failures.join("\n")).toBe("");
  });

  it("takes -f, and refuses what qemu-img refuses", async () => {
    const failures: string[] = [];
    const cases = [
      ["info", "-f", "raw", "r.raw"],
      ["info", "-f", "raw", "--output=json", "r.raw"],
      ["info", "-f", "qcow2", "r.raw"],
      ["info", "-f", "foo", "v3.qcow2"],
      ["info", "nonexist.qcow2"],
      ["info", "sub"],
      ["info", "--output=xml", "v3.qcow2"],
      ["info", "--output"],
      ["info"],
      ["info", "a", "b"],
      ["info", "--backing-chain", "missing-back.qcow2"],
      ["info", "--zzz", "v3.qcow2"],
      ["info", "--force-share=1", "v3.qcow2"],
      ["info", "--force", "v3.qcow2"],
      ["info", "--out=json", "v3.qcow2"],
      ["info", "-Uf"],
      ["info", "v3.qcow2", "--", "-q"],
    ];
    for (const args of cases) {
      const { q, o } = await run(args);
      if (q.code !== o.code || q.stdout !== o.stdout || q.stderr !== o.stderr) {
        failures.push(`${args.join(" ")}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
      }
    }
    expect(failures.join("\n")).toBe("");
  });
});

/** [name, offset, bytes]: headers damaged in one field each. */
const DAMAGE: Array<[string, number, number[]]> = [
  // (A bad magic or version 0 makes a raw image; version 1 is QEMU's "qcow" format, which qimg does not open.)
  ["version 4", 4, [0, 0, 0, 4]],
  ["cluster bits 8", 20, [0, 0, 0, 8]],
  ["cluster bits 22", 20, [0, 0, 0, 22]],
  ["huge L1 size", 36, [0x7f, 0xff, 0xff, 0xff]],
  ["unaligned L1 offset", 40, [0, 0, 0, 0, 0, 0x03, 0x00, 0x01]],
  ["unaligned refcount table", 48, [0, 0, 0, 0, 0, 0x01, 0x00, 0x10]],
  ["refcount table clusters 0", 56, [0, 0, 0, 0]],
  ["unknown incompatible bit", 72, [0, 0, 0, 0, 0, 0, 0, 0x20]],
  ["refcount order 7", 96, [0, 0, 0, 7]],
  ["header length 50", 100, [0, 0, 0, 50]],
  ["encryption 3", 32, [0, 0, 0, 3]],
  ["compression type 2 without bit", 104, [2]],
];

describe("damaged headers", () => {
  it("are refused with QEMU's message on one line", async () => {
    const failures: string[] = [];
    for (const [name, offset, bytes] of DAMAGE) {
      const file = `damaged-${name.replace(/ /g, "-")}.qcow2`;
      await ok(qemuImg(["create", "-q", "-f", "qcow2", file, "64M"], dir));
      patch(file, offset, bytes);
      for (const args of [["info", file], ["info", "--output=json", file], ["map", file]]) {
        const { q, o } = await run(args);
        if (q.code !== 0 && (o.code === 0 || o.stderr.split("\n").length !== 2 || /\n\s+at /.test(o.stderr))) {
          failures.push(`${name}: ${args.join(" ")} gave ${o.code}: ${o.stderr}`);
        }
        if (q.code !== o.code || q.stderr !== o.stderr || q.stdout !== o.stdout) {
          failures.push(`${name}: ${args.join(" ")}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
        }
      }
    }
    expect(failures.join("\n")).toBe("");
  });
});
