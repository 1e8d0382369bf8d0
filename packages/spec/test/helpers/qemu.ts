/// <reference types="node" />
/**
 * Test-only helpers around QEMU 7.2's tools (the oracle). The tools are required: a missing binary makes
 * the calling test fail, it is never skipped.
 */
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: readonly string[], cwd?: string): RunResult {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd, timeout: 60_000 });
  if (r.error) throw new Error(`${cmd} could not run: ${r.error.message}`);
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Run and demand success. */
export function runOk(cmd: string, args: readonly string[], cwd?: string): string {
  const r = run(cmd, args, cwd);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** A fresh directory under /dev/shm; remove it with `removeTempDir`. */
export function makeTempDir(tag: string): string {
  return mkdtempSync(join("/dev/shm", `qcowkit-spec-${tag}-`));
}

export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Bytes [offset, offset + length) of a file (shorter at EOF). */
export function readBytes(path: string, offset: number, length: number): Uint8Array {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new Error(`bad position ${offset}`);
  const fd = openSync(path, "r");
  try {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return out.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

/** The largest cluster (2 MiB) from the start of the file: always holds all of cluster 0. */
export function readCluster0(path: string): Uint8Array {
  return readBytes(path, 0, 2 * 1024 * 1024);
}

export function writeBytes(path: string, offset: number, data: Uint8Array): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new Error(`bad position ${offset}`);
  const fd = openSync(path, "r+");
  try {
    writeSync(fd, data, 0, data.byteLength, offset);
  } finally {
    closeSync(fd);
  }
}

export interface QemuInfo {
  "virtual-size": number;
  "cluster-size": number;
  format: string;
  "backing-filename"?: string;
  "backing-filename-format"?: string;
  "dirty-flag"?: boolean;
  "format-specific": {
    type: string;
    data: {
      compat: string;
      "compression-type": string;
      "lazy-refcounts"?: boolean;
      "refcount-bits": number;
      corrupt?: boolean;
      "extended-l2"?: boolean;
      "data-file"?: string;
      "data-file-raw"?: boolean;
      bitmaps?: { name: string; granularity: number; flags: string[] }[];
    };
  };
  snapshots?: { id: string; name: string; "vm-state-size": number; "date-sec": number; "date-nsec": number }[];
}

export function qemuInfo(path: string): QemuInfo {
  return JSON.parse(runOk("qemu-img", ["info", "-f", "qcow2", "--output=json", path])) as QemuInfo;
}

/**
 * How QEMU opens `path`: `info` = qemu-img info (no I/O), `ro`/`rw` = qemu-io read of 512 bytes, read-only
 * or read-write. Returns null when QEMU opens it, else the message after QEMU's "could not open" prefix.
 */
export type QemuOpenMode = "info" | "ro" | "rw";

export function qemuOpenError(path: string, mode: QemuOpenMode): string | null {
  const r =
    mode === "info"
      ? run("qemu-img", ["info", "-f", "qcow2", path])
      : run("qemu-io", ["-f", "qcow2", ...(mode === "ro" ? ["-r"] : []), "-c", "read 0 512", path]);
  const prefix = mode === "info" ? `qemu-img: Could not open '${path}': ` : `qemu-io: can't open device ${path}: `;
  const line = r.stderr.split("\n").find((l) => l.startsWith(prefix));
  if (line !== undefined) return line.slice(prefix.length);
  if (r.status !== 0) throw new Error(`qemu failed without an open error (${r.status}): ${r.stderr.trim()}`);
  return null;
}
