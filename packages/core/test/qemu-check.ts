/**
 * Test helpers: run `qemu-img check [-r MODE]` and our check/repair on copies of one image and return both
 * sides in the same shape (stderr lines as qemu-img prints them, the JSON counters, the exit code).
 */
import { copyFileSync, openSync, readFileSync, writeSync, closeSync } from "node:fs";
import { checkFailureText } from "../src/check";
import { checkAndRepairImage, type RepairMode } from "../src/repair";
import { openImage } from "../src/node";
import type { Qcow2Image } from "../src/qcow2-image";
import type { CheckReport } from "../src/check";
import { qemuStatus } from "./helpers";

export interface CheckOutcome {
  stderr: string[];
  counts: Record<string, number>;
  exitCode: number;
}

const COUNTERS = [
  "corruptions",
  "leaks",
  "check-errors",
  "corruptions-fixed",
  "leaks-fixed",
  "image-end-offset",
  "total-clusters",
  "allocated-clusters",
  "fragmented-clusters",
  "compressed-clusters",
] as const;

export function qemuCheck(path: string, mode?: RepairMode, extra: string[] = []): CheckOutcome {
  const r = qemuStatus("qemu-img", ["check", ...(mode ? ["-r", mode] : []), "--output=json", ...extra, path]);
  const stderr = r.stderr.split("\n").filter((l) => l !== "");
  const counts: Record<string, number> = {};
  if (r.stdout.trim() !== "") {
    const json = JSON.parse(r.stdout) as Record<string, unknown>;
    for (const k of COUNTERS) counts[k] = Number(json[k] ?? 0);
  }
  return { stderr, counts, exitCode: r.status };
}

function countsOf(report: CheckReport): Record<string, number> {
  return {
    corruptions: report.corruptions,
    leaks: report.leaks,
    "check-errors": report.checkErrors,
    "corruptions-fixed": report.corruptionsFixed,
    "leaks-fixed": report.leaksFixed,
    "image-end-offset": report.imageEndOffset,
    "total-clusters": report.totalClusters,
    "allocated-clusters": report.allocatedClusters,
    "fragmented-clusters": report.fragmentedClusters,
    "compressed-clusters": report.compressedClusters,
  };
}

/** Our check (-r MODE: read-write in check mode), shaped like `qemuCheck`. */
export async function ourCheck(path: string, mode?: RepairMode): Promise<CheckOutcome> {
  const stderr: string[] = [];
  const emit = (line: string) => stderr.push(...line.split("\n"));
  let image: Qcow2Image;
  try {
    image = (await openImage(path, {
      readOnly: mode === undefined,
      checkMode: true,
      format: "qcow2",
      onWarning: emit,
    })) as Qcow2Image;
  } catch (e) {
    return { stderr: [`qemu-img: Could not open '${path}': ${(e as Error).message}`], counts: {}, exitCode: 1 };
  }
  let result;
  try {
    result = await checkAndRepairImage(image, mode, {
      onMessage: (line, kind) => emit(kind === "report" ? `qemu-img: ${line}` : line),
    });
  } finally {
    await image.close();
  }
  const r = result.report;
  if (r.failure !== undefined) {
    stderr.push(`qemu-img: Check failed: ${checkFailureText(r.failure)}`);
    return { stderr, counts: {}, exitCode: 1 };
  }
  if (r.checkErrors) stderr.push("qemu-img: Check failed");
  return { stderr, counts: countsOf(r), exitCode: result.exitCode };
}

/** Copy `src` twice, run qemu-img on one copy and ours on the other. */
export async function bothChecks(
  src: string,
  mode: RepairMode | undefined,
  paths: { qemu: string; ours: string },
): Promise<{ qemu: CheckOutcome; ours: CheckOutcome }> {
  copyFileSync(src, paths.qemu);
  copyFileSync(src, paths.ours);
  const qemu = qemuCheck(paths.qemu, mode);
  const ours = await ourCheck(paths.ours, mode);
  // Messages name the file: compare them with our copy's name.
  qemu.stderr = qemu.stderr.map((l) => l.split(paths.qemu).join(paths.ours));
  return { qemu, ours };
}

/** Overwrite bytes of a file. */
export function patch(path: string, offset: number, bytes: number[] | Uint8Array): void {
  const fd = openSync(path, "r+");
  writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset);
  closeSync(fd);
}

/** Big-endian integer of `width` bytes at `offset` of a file. */
export function peek(path: string, offset: number, width = 8): bigint {
  const b = readFileSync(path);
  let v = 0n;
  for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(b[offset + i] ?? 0);
  return v;
}

/** Write `value` big-endian over `width` bytes at `offset`. */
export function poke(path: string, offset: number, width: number, value: bigint | number): void {
  const bytes: number[] = [];
  let v = BigInt(value);
  for (let i = 0; i < width; i++) {
    bytes.unshift(Number(v & 0xffn));
    v >>= 8n;
  }
  patch(path, offset, bytes);
}
