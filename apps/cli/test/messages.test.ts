/**
 * Messages, usage errors and exit codes against QEMU's tools: qio command errors (stdout and stderr compared
 * separately, as their interleaving depends on buffering), qio options, qimg resize, the global options, and
 * the installed bin shims.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { QIMG_BIN, QIO_BIN, filterTimings, neutralUsageSummaries, normalizeQemu, ok, qemuImg, qemuIo, qimg, qio, run, tempDir } from "./helpers";

const dir = tempDir("qimg-messages-");

beforeAll(async () => {
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "a.qcow2", "4M"], dir));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", "data_file=a.raw", "df.qcow2", "4M"], dir));
  await ok(qemuImg(["create", "-q", "-f", "raw", "r.raw", "4M"], dir));
  fs.writeFileSync(path.join(dir, "pattern.bin"), Uint8Array.from([1, 2, 3, 4, 5]));
});

function copyImages(suffix: string): void {
  for (const f of ["a.qcow2", "df.qcow2", "a.raw", "r.raw"]) fs.copyFileSync(path.join(dir, f), path.join(dir, `${suffix}-${f}`));
}

type Case = string[];

/** qio command lines (each run on a fresh copy of the images). */
const QIO_CASES: Case[] = [
  ["-c", "read -P 1 0 512", "a.qcow2"],
  ["-c", "read -P 1 0 512", "-c", "read 0 512", "a.qcow2"],
  ["-c", "foo", "a.qcow2"],
  ["-c", "write -c 0 64k", "df.qcow2"],
  ["-c", "write 0 8M", "a.qcow2"],
  ["-c", "read 4M 512", "a.qcow2"],
  ["-c", "write 1 512", "-c", "read -v 0 40", "a.qcow2"],
  ["-c", "read -q 0 512", "a.qcow2"],
  ["-r", "-c", "write 0 512", "a.qcow2"],
  ["-r", "-c", "discard 0 512", "-c", "truncate 1M", "a.qcow2"],
  ["-c", "write -u 0 512", "a.qcow2"],
  ["-c", "write -n 0 512", "a.qcow2"],
  ["-c", "write -f -c 0 64k", "a.qcow2"],
  ["-c", "write -z -P 1 0 1", "a.qcow2"],
  ["-c", "write -c 512 64k", "a.qcow2"],
  ["-c", "write -c 0 1000", "a.qcow2"],
  ["-c", "write -P 0x100 0 512", "a.qcow2"],
  ["-c", "write -P x 0 512", "a.qcow2"],
  ["-c", "write -P '' 0 512", "a.qcow2"],
  ["-c", "write 0 1x", "a.qcow2"],
  ["-c", "write 0 9E", "a.qcow2"],
  ["-c", "write 0", "a.qcow2"],
  ["-c", "write -Q 0 1", "a.qcow2"],
  ["-c", "read -P", "a.qcow2"],
  ["-c", "read 0 1 2 3", "a.qcow2"],
  ["-c", "read -1 512", "a.qcow2"],
  ["-c", "read 0 5G", "a.qcow2"],
  ["-c", "read -s 10 0 512", "a.qcow2"],
  ["-c", "read -P 0 -s 600 0 512", "a.qcow2"],
  ["-c", "read -P 0 -s 10 -l 20 0 512", "a.qcow2"],
  ["-c", "read -C 0 512", "a.qcow2"],
  ["-c", "discard 0 1x", "a.qcow2"],
  ["-c", "truncate -m foo 8M", "a.qcow2"],
  ["-c", "truncate -m falloc 8M", "-c", "length", "a.qcow2"],
  ["-c", "truncate 1M", "-c", "length", "-c", "map", "a.qcow2"],
  ["-c", "alloc 0", "-c", "alloc 1 512", "-c", "alloc 0 5M", "-c", "alloc 4M", "-c", "alloc x", "a.qcow2"],
  ["-c", "alloc", "a.qcow2"],
  ["-c", "map x", "a.qcow2"],
  ["-c", "write -s pattern.bin 0 12", "-c", "read -v 0 16", "a.qcow2"],
  ["-c", "write -s nonexist 0 12", "a.qcow2"],
  ["-c", "info", "-c", "length", "a.qcow2"],
  ["-f", "raw", "-c", "info", "-c", "map", "r.raw"],
  ["-c", "write 0 512", "r.raw"],
  ["-c", "sleep 1", "-c", "quit", "-c", "read 0 1", "a.qcow2"],
  ["-c", "sleep x", "a.qcow2"],
  ["-c", "open", "a.qcow2"],
  ["-c", "read 0 1"],
  ["-c", "close", "-c", "read 0 1", "a.qcow2"],
  ["-c", "open a.qcow2", "-c", "open a.qcow2"],
  ["-c", "open -o foo=bar a.qcow2"],
  ["-c", "open -o data-file.filename=nonexist df.qcow2"],
  ["-c", "open -r df.qcow2", "-c", "write 0 1"],
  ["--image-opts", "-c", "read 0 512", "driver=qcow2,file.filename=a.qcow2"],
  ["--image-opts", "-c", "read 0 512", "a.qcow2"],
  ["--image-opts", "driver=qcow2,file.filename=a.qcow2,foo=bar", "-c", "read 0 1"],
  ["-c", "help alloc"],
  ["-c", "help foo"],
  ["a.qcow2", "b.qcow2"],
  ["-t", "foo", "a.qcow2"],
  ["-d", "foo", "a.qcow2"],
  ["-c", "read 0 1", "-o", "x", "a.qcow2"],
  ["--foo", "a.qcow2"],
  ["--force-share=1", "a.qcow2"],
  ["--cmd"],
  ["-f", "foo", "-c", "read 0 1", "a.qcow2"],
  ["-c", "read 0 1", "nonexist.qcow2"],
];

const show = (args: string[]) => args.map((a) => JSON.stringify(a)).join(" ");

describe("qio matches qemu-io", () => {
  it(`${QIO_CASES.length} command lines: stdout, stderr and exit code`, async () => {
    const failures: string[] = [];
    for (const [i, args] of QIO_CASES.entries()) {
      copyImages(`q${i}`);
      copyImages(`o${i}`);
      const fix = (prefix: string) =>
        args.map((a) => a.replace(/(^|[ =])(a\.qcow2|df\.qcow2|r\.raw)/g, `$1${prefix}-$2`));
      const q = await qemuIo(fix(`q${i}`), dir);
      const o = await qio(fix(`o${i}`), dir);
      const qOut = neutralUsageSummaries(filterTimings(normalizeQemu(q.stdout)).replace(/qemu-io/g, "qio").replace(new RegExp(`q${i}-`, "g"), ""));
      const oOut = neutralUsageSummaries(filterTimings(o.stdout).replace(new RegExp(`o${i}-`, "g"), ""));
      const qErr = normalizeQemu(q.stderr).replace(new RegExp(`q${i}-`, "g"), "");
      const oErr = o.stderr.replace(new RegExp(`o${i}-`, "g"), "");
      // The usage text differs (qio's own); only its presence is compared.
      const usage = (t: string) => t.replace(/^Usage: [\s\S]*(information on available commands|-c help' lists the commands)\.\n[\s\S]*$/m, "USAGE\n");
      if (q.code !== o.code || usage(qOut) !== usage(oOut) || qErr !== oErr) {
        failures.push(`qio ${show(args)}\n--- qemu-io (${q.code})\n${qOut}${qErr}--- qio (${o.code})\n${oOut}${oErr}`);
      }
    }
    expect(failures.join("\n")).toBe("");
  });

  it("reads commands from standard input without -c", async () => {
    copyImages("stdin");
    const r = await run(process.execPath, [QIO_BIN, "stdin-a.qcow2"], { cwd: dir, input: "write -P 7 0 512\nread -P 7 0 512\nlength\n" });
    expect(r.code).toBe(0);
    expect(filterTimings(r.stdout)).toBe(
      "qio> wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME\nqio> read 512/512 bytes at offset 0\n512 bytes, 1 ops; TIME\nqio> 4 MiB\nqio> ",
    );
  });
});

describe("qimg resize matches qemu-img resize", () => {
  it("sizes, relative sizes, --shrink, preallocation and refusals", async () => {
    const cases: string[][] = [
      ["resize", "IMG", "8M"],
      ["resize", "IMG", "+1M"],
      ["resize", "IMG", "-1M"],
      ["resize", "--shrink", "IMG", "-1M"],
      ["resize", "--shrink", "IMG", "2M"],
      ["resize", "IMG", "1x"],
      ["resize", "IMG", "-5M"],
      ["resize", "IMG", "0"],
      ["resize", "IMG", "8E"],
      ["resize", "--preallocation=foo", "IMG", "5M"],
      ["resize", "--preallocation=full", "IMG", "1M"],
      ["resize", "--preallocation=metadata", "IMG", "16M"],
      ["resize", "--preallocation=falloc", "IMG", "16M"],
      ["resize", "-q", "IMG", "6M"],
      ["resize", "IMG"],
      ["resize", "IMG", "4M", "extra"],
      ["resize", "nonexist", "4M"],
      ["resize", "-f", "raw", "RAW", "8M"],
      ["resize", "RAW", "+4M"],
    ];
    const failures: string[] = [];
    for (const [i, c] of cases.entries()) {
      copyImages(`rq${i}`);
      copyImages(`ro${i}`);
      const fix = (p: string) => c.map((a) => (a === "IMG" ? `${p}-a.qcow2` : a === "RAW" ? `${p}-r.raw` : a));
      const q = await qemuImg(fix(`rq${i}`), dir);
      const o = await qimg(fix(`ro${i}`), dir);
      const strip = (t: string, p: string) => t.split(`${p}-`).join("");
      if (q.code !== o.code || q.stdout !== o.stdout || strip(normalizeQemu(q.stderr), `rq${i}`) !== strip(o.stderr, `ro${i}`)) {
        failures.push(`${c.join(" ")}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
        continue;
      }
      if (q.code !== 0) continue;
      const file = c.includes("RAW") ? "r.raw" : "a.qcow2";
      const qi = JSON.parse((await qemuImg(["info", "--output=json", `rq${i}-${file}`], dir)).stdout);
      const oi = JSON.parse((await qemuImg(["info", "--output=json", `ro${i}-${file}`], dir)).stdout);
      if (qi["virtual-size"] !== oi["virtual-size"]) failures.push(`${c.join(" ")}: size ${qi["virtual-size"]} / ${oi["virtual-size"]}`);
      if (file === "a.qcow2" && (await qemuImg(["check", `ro${i}-${file}`], dir)).code !== 0) failures.push(`${c.join(" ")}: check failed`);
    }
    expect(failures.join("\n")).toBe("");
  });
});

describe("global options and the installed bins", () => {
  it("qimg with no or unknown commands and options fails as qemu-img does", async () => {
    for (const args of [[], ["foo"], ["--foo"], ["-x"], ["-q", "info", "a.qcow2"], ["info"], ["info", "-f"]]) {
      const q = await qemuImg(args, dir);
      const o = await qimg(args, dir);
      expect(`${o.code} ${o.stderr}`).toBe(`${q.code} ${normalizeQemu(q.stderr)}`);
    }
  });

  it("--version, --help and -h", async () => {
    for (const bin of [QIMG_BIN, QIO_BIN]) {
      const v = await run(process.execPath, [bin, "--version"]);
      expect(v.code).toBe(0);
      expect(v.stdout).toMatch(/^(qimg|qio) version \d+\.\d+\.\d+ \(qcowkit\), compatible with qemu-(img|io) 7\.2\n$/);
    }
    const h = await run(process.execPath, [QIMG_BIN, "--help"]);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain("usage: qimg [standard options] command [command options]");
    expect((await run(process.execPath, [QIMG_BIN, "info", "-h"])).stdout).toBe(h.stdout);
    const qh = await run(process.execPath, [QIO_BIN, "-h"]);
    expect(qh.stdout).toContain("Usage: qio [OPTIONS]... [-c STRING]... [file]");
  });

  it("the bin shims create and read an image", async () => {
    const img = path.join(dir, "shim.qcow2");
    const c = await run(process.execPath, [QIMG_BIN, "create", "-f", "qcow2", img, "1M"]);
    expect(c.stdout).toBe(
      `Formatting '${img}', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1048576 lazy_refcounts=off refcount_bits=16\n`,
    );
    const w = await run(process.execPath, [QIO_BIN, "-c", "write -P 9 0 64k", "-c", "read -P 9 0 64k", img]);
    expect(w.code).toBe(0);
    expect((await qemuIo(["-c", "read -P 9 0 64k", img])).code).toBe(0);
  });
});
