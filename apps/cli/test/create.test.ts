/**
 * qimg create against qemu-img create: for each option combination both run in their own directory with the
 * same relative names; stdout, stderr and the exit code must match, the files left behind must match, our
 * image must pass `qemu-img check` and `qemu-img info --output=json` must be the same for both images.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { infoJson, normalizeQemu, ok, pool, qemuImg, qimg, subDir, tempDir } from "./helpers";

const root = tempDir("qimg-create-");

/** Each case: the create arguments after "create" (files: base.qcow2 exists, t.qcow2 is created). */
const CASES: string[][] = [];
const add = (...args: string[]) => CASES.push(args);

// Defaults, compat levels, sizes.
add("-f", "qcow2", "t.qcow2", "64M");
for (const c of ["0.10", "v2", "1.1", "v3", "2.0", "foo", ""]) add("-f", "qcow2", "-o", `compat=${c}`, "t.qcow2", "64M");
for (const s of ["0", "100", "1b", "1k", "1.5G", "0x100000", "1.k", "1m", "1T", "1x", "1.5", "1.5e3k", "", " 1M", "1M ", "+1M", "7E", "8E", "99E", "18446744073709551616", "0x10k"]) {
  add("-f", "qcow2", "t.qcow2", s);
}
// Cluster sizes, refcount widths, lazy refcounts, compression, extended L2.
for (const cs of ["256", "512", "1k", "4k", "16k", "64k", "256k", "1M", "2M", "4M", "1000", "1.5k", "x"]) {
  add("-f", "qcow2", "-o", `cluster_size=${cs}`, "t.qcow2", "64M");
  add("-f", "qcow2", "-o", `compat=0.10,cluster_size=${cs}`, "t.qcow2", "64M");
}
for (const rb of ["0", "1", "2", "3", "4", "8", "16", "32", "64", "128", "-1", "016", "0x10", "x", "99999999999999999999"]) {
  add("-f", "qcow2", "-o", `refcount_bits=${rb}`, "t.qcow2", "64M");
}
add("-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "t.qcow2", "64M");
for (const v of ["on", "off", "yes", "y", "true", "no", "maybe"]) add("-f", "qcow2", "-o", `lazy_refcounts=${v}`, "t.qcow2", "64M");
add("-f", "qcow2", "-o", "lazy_refcounts", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "nolazy_refcounts", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "t.qcow2", "64M");
for (const ct of ["zlib", "zstd", "lzo"]) add("-f", "qcow2", "-o", `compression_type=${ct}`, "t.qcow2", "64M");
add("-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "t.qcow2", "64M");
for (const cs of ["8k", "16k", "32k", "64k", "512k", "2M"]) add("-f", "qcow2", "-o", `extended_l2=on,cluster_size=${cs}`, "t.qcow2", "1G");
add("-f", "qcow2", "-o", "compat=0.10,extended_l2=on", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "compat=0.10,data_file=d.raw,compression_type=zstd", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=1,compression_type=zstd,extended_l2=on,cluster_size=128k", "t.qcow2", "5G");
// Preallocation, with and without data file and extended L2.
for (const p of ["off", "metadata", "falloc", "full", "foo"]) {
  add("-f", "qcow2", "-o", `preallocation=${p}`, "t.qcow2", "8M");
  add("-f", "qcow2", "-o", `preallocation=${p},cluster_size=4k`, "t.qcow2", "3M");
  add("-f", "qcow2", "-o", `preallocation=${p},data_file=d.raw`, "t.qcow2", "8M");
  add("-f", "qcow2", "-o", `preallocation=${p},data_file=d.raw,data_file_raw=on`, "t.qcow2", "8M");
  add("-f", "qcow2", "-o", `preallocation=${p},extended_l2=on`, "t.qcow2", "8M");
}
// Data files.
add("-f", "qcow2", "-o", "data_file=d.raw", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=off", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file_raw=on", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "compat=0.10,data_file=d.raw", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=d.raw,extended_l2=on,cluster_size=4k", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=nodir/d.raw", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=d,,x.raw", "t.qcow2", "64M");
add("-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on,lazy_refcounts=on,compression_type=zstd", "t.qcow2", "64M");
// Backing files.
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "128M");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "raw", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "t.qcow2", "64M");
add("-f", "qcow2", "-u", "-b", "base.qcow2", "t.qcow2", "64M");
add("-f", "qcow2", "-u", "-b", "nonexist.qcow2", "-F", "qcow2", "t.qcow2", "64M");
add("-f", "qcow2", "-u", "-b", "nonexist.qcow2", "-F", "qcow2", "t.qcow2");
add("-f", "qcow2", "-b", "nonexist.qcow2", "-F", "qcow2", "t.qcow2", "64M");
add("-f", "qcow2", "-b", "nonexist.qcow2", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "foo", "t.qcow2");
add("-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "foo", "t.qcow2", "1M");
add("-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "vmdk", "t.qcow2", "1M");
add("-f", "qcow2", "-b", "", "-F", "qcow2", "t.qcow2", "1M");
add("-f", "qcow2", "-b", "t.qcow2", "-F", "qcow2", "t.qcow2", "1M");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata,extended_l2=on", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "data_file=d.raw", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "t.qcow2");
add("-f", "qcow2", "-o", "backing_fmt=qcow2", "t.qcow2", "1M");
add("-f", "qcow2", "-F", "qcow2", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "t.qcow2");
add("-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "backing_file=other.qcow2", "t.qcow2");
add("-f", "qcow2", "-o", "backing_file=", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "size=2M", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "1M");
// Option list parsing.
add("-f", "qcow2", "-o", "cluster_size=4k", "-o", "cluster_size=8k,lazy_refcounts=on", "-o", "lazy_refcounts=off", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "cluster_size=4k,", "t.qcow2", "1M");
add("-f", "qcow2", "-o", ",cluster_size=4k", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "cluster_size=4k,,x", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "foo=bar", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "foo", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "help=x", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "nocow", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "nocow=off", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "cluster_size", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "size=2M", "t.qcow2");
add("-f", "qcow2", "-o", "size=2M", "t.qcow2", "3M");
add("-f", "qcow2", "-o", "size=1M,size=2M", "t.qcow2");
add("-f", "qcow2", "-o", "size=1x", "t.qcow2");
add("-f", "qcow2", "-o", "size=99E", "t.qcow2");
add("-f", "qcow2", "-o", "cluster_size=99E", "t.qcow2", "1M");
add("-f", "qcow2", "-o", "encryption=off", "t.qcow2", "1M");
add("-f", "qcow2", "-f", "raw", "t.qcow2", "1M");
add("-q", "-f", "qcow2", "t.qcow2", "1M");
add("-f", "qcow2", "t.qcow2", "1M", "-q");
add("-f", "qcow2", "t.qcow2", "1M", "extra");
add("-f", "qcow2", "t.qcow2");
add("-f", "qcow2");
add();
add("-f");
add("-Z");
add("-qZ");
add("--zzz");
add("-f", "foo", "t.qcow2", "1M");
// Help lists.
add("-f", "qcow2", "-o", "help");
add("-f", "qcow2", "-o", "?");
add("-f", "qcow2", "-o", "cluster_size=4k,help");
add("-f", "qcow2", "-o", "help", "t.qcow2", "1M");
add("-f", "raw", "-o", "help");
add("-o", "help");
add("-f", "raw", "-o", "help", "t.qcow2");
add("-f", "foo", "-o", "help");
// Raw.
add("-f", "raw", "t.qcow2", "1M");
add("-f", "raw", "t.qcow2", "100");
add("t.qcow2", "1M");
for (const p of ["off", "falloc", "full", "metadata", "foo"]) add("-f", "raw", "-o", `preallocation=${p}`, "t.qcow2", "1M");
add("-f", "raw", "-o", "lazy_refcounts=on", "t.qcow2", "1M");
add("-f", "raw", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "1M");
add("-f", "raw", "-F", "qcow2", "t.qcow2", "1M");

function listFiles(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const f of fs.readdirSync(dir).sort()) out[f] = fs.statSync(path.join(dir, f)).size;
  return out;
}

async function prepare(dir: string): Promise<void> {
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "base.qcow2", "32M"], dir));
}

describe("qimg create matches qemu-img create", () => {
  it(`${CASES.length} option combinations`, async () => {
    const failures: string[] = [];
    await pool(CASES, 4, async (args, i) => {
      const theirs = subDir(root, `q${i}`);
      const ours = subDir(root, `o${i}`);
      await prepare(theirs);
      await prepare(ours);
      const q = await qemuImg(["create", ...args], theirs);
      const o = await qimg(["create", ...args], ours);
      const label = `create ${args.map((a) => JSON.stringify(a)).join(" ")}`;
      const expected = { code: q.code, stdout: normalizeQemu(q.stdout), stderr: normalizeQemu(q.stderr).replace(/^qimg: warning: Failed to set extent size hint.*\n/m, "") };
      const actual = { code: o.code, stdout: o.stdout, stderr: o.stderr };
      if (JSON.stringify(expected) !== JSON.stringify(actual)) {
        failures.push(`${label}\n  qemu: ${JSON.stringify(expected)}\n  ours: ${JSON.stringify(actual)}`);
        return;
      }
      const qFiles = listFiles(theirs);
      const oFiles = listFiles(ours);
      if (JSON.stringify(Object.keys(qFiles)) !== JSON.stringify(Object.keys(oFiles))) {
        failures.push(`${label}: files differ: qemu ${JSON.stringify(qFiles)} ours ${JSON.stringify(oFiles)}`);
        return;
      }
      // Raw files and data files have the virtual size; the qcow2 files' layout is QEMU's.
      for (const f of Object.keys(qFiles)) {
        if (qFiles[f] !== oFiles[f]) failures.push(`${label}: size of ${f}: qemu ${qFiles[f]} ours ${oFiles[f]}`);
      }
      if (q.code !== 0 || !fs.existsSync(path.join(ours, "t.qcow2")) || args.includes("help") || args.includes("?")) return;
      let fmt = "raw";
      args.forEach((a, j) => {
        if (a === "-f") fmt = args[j + 1] ?? fmt;
      });
      // qemu-img check needs the backing file: only where QEMU's own image can be checked.
      if (fmt === "qcow2" && (await qemuImg(["check", "t.qcow2"], theirs)).code === 0) {
        const check = await qemuImg(["check", "t.qcow2"], ours);
        if (check.code !== 0) failures.push(`${label}: qemu-img check on our image: ${check.stdout}${check.stderr}`);
      }
      const qi = await qemuImg(["info", "-U", "--output=json", "t.qcow2"], theirs);
      const oi = await qemuImg(["info", "-U", "--output=json", "t.qcow2"], ours);
      if (JSON.stringify(infoJson(qi.stdout)) !== JSON.stringify(infoJson(oi.stdout))) {
        failures.push(`${label}: qemu-img info differs:\n${qi.stdout}\n${oi.stdout}`);
      }
    });
    expect(failures.join("\n\n")).toBe("");
  });
});
