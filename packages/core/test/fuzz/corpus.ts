/**
 * The fuzz corpus: small images made by QEMU 7.2 (every kind the engine reads), in one directory that the
 * mutated cases share for their data files and backing files.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface Seed {
  name: string;
  bytes: Uint8Array;
}

function sh(tool: string, args: string[], cwd: string): void {
  execFileSync(tool, args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** Create the corpus in `dir` (absolute) and return the seed images. */
export function buildCorpus(dir: string): Seed[] {
  const seeds: Array<[string, string[], string[]]> = [
    ["plain", ["-o", "cluster_size=65536", "4M"], ["write -P 0x11 0 192k", "write -P 0x12 1M 64k", "write -z 2M 64k"]],
    ["v2", ["-o", "compat=0.10", "2M"], ["write -P 0x21 0 128k", "write -P 0x22 1536k 4k"]],
    ["small-clusters", ["-o", "cluster_size=512", "1M"], ["write -P 0x31 0 40k", "write -P 0x32 600k 3k"]],
    ["refcount1", ["-o", "cluster_size=4096,refcount_bits=1", "2M"], ["write -P 0x41 0 100k"]],
    ["refcount64", ["-o", "cluster_size=4096,refcount_bits=64", "2M"], ["write -P 0x42 8k 100k"]],
    ["extl2", ["-o", "extended_l2=on,cluster_size=32k", "2M"], ["write -P 0x51 0 5k", "write -P 0x52 100k 40k", "write -z 512k 8k"]],
    ["compressed", ["-o", "cluster_size=4096", "1M"], ["write -c -P 0x61 0 4k", "write -c -P 0x62 4k 4k", "write -P 0x63 64k 8k"]],
    ["zstd", ["-o", "compression_type=zstd,cluster_size=4096", "1M"], ["write -c -P 0x64 0 8k", "write -P 0x65 32k 4k"]],
    ["zlib-64k", ["-o", "cluster_size=65536", "1M"], ["write -c -s compressible.bin 0 128k", "write -c -P 0x66 128k 64k"]],
    ["zstd-64k", ["-o", "compression_type=zstd,cluster_size=65536", "1M"], ["write -c -s compressible.bin 0 128k", "write -c -P 0x67 128k 64k"]],
    ["lazy", ["-o", "lazy_refcounts=on,cluster_size=4096", "1M"], ["write -P 0x71 0 20k"]],
    ["datafile", ["-o", `data_file=${join(dir, "datafile.raw")},cluster_size=4096`, "1M"], ["write -P 0x81 0 20k"]],
    ["datafile-raw", ["-o", `data_file=${join(dir, "datafile-raw.raw")},data_file_raw=on,cluster_size=4096`, "1M"], ["write -P 0x82 4k 8k"]],
    ["prealloc", ["-o", "preallocation=metadata,cluster_size=4096", "512k"], ["write -P 0x91 0 8k"]],
    ["base", ["-o", "cluster_size=4096", "1M"], ["write -P 0xa1 0 64k"]],
  ];
  // Data that compresses to a few KiB per 64 KiB cluster: runs of bytes among random ones.
  const compressible = new Uint8Array(128 * 1024);
  for (let i = 0, x = 1; i < compressible.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    compressible[i] = (x >>> 24) < 64 ? x & 0xff : (i >> 6) & 0xff;
  }
  writeFileSync(join(dir, "compressible.bin"), compressible);
  for (const [name, opts, cmds] of seeds) {
    sh("qemu-img", ["create", "-q", "-f", "qcow2", ...opts.slice(0, -1), `${name}.qcow2`, opts[opts.length - 1]!], dir);
    if (cmds.length) sh("qemu-io", [...cmds.flatMap((c) => ["-c", c]), `${name}.qcow2`], dir);
  }
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", join(dir, "base.qcow2"), "-F", "qcow2", "overlay.qcow2", "1M"], dir);
  sh("qemu-io", ["-c", "write -P 0xb1 2k 6k", "overlay.qcow2"], dir);
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "snapshots.qcow2", "1M"], dir);
  sh("qemu-io", ["-c", "write -P 0xc1 0 16k", "snapshots.qcow2"], dir);
  sh("qemu-img", ["snapshot", "-c", "first", "snapshots.qcow2"], dir);
  sh("qemu-io", ["-c", "write -P 0xc2 4k 4k", "snapshots.qcow2"], dir);
  sh("qemu-img", ["snapshot", "-c", "second", "snapshots.qcow2"], dir);
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "bitmaps.qcow2", "1M"], dir);
  sh("qemu-img", ["bitmap", "--add", "bitmaps.qcow2", "b0"], dir);
  sh("qemu-io", ["-c", "write -P 0xd1 0 8k", "bitmaps.qcow2"], dir);
  const names = [...seeds.map((s) => s[0]), "overlay", "snapshots", "bitmaps"];
  return names.map((name) => ({ name, bytes: new Uint8Array(readFileSync(join(dir, `${name}.qcow2`))) }));
}
