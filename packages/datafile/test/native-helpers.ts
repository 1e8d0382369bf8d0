import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect } from "vitest";
import { nativeAvailable, nativeFs, nativeUnavailableReason, type NativeFs } from "../src/node";

/**
 * Shared setup of the native addon tests. The addon is required (the machines that run the tests
 * have a C compiler and Node's headers), unless QCOWKIT_NATIVE=0 turns it off on purpose: then
 * the suites that exercise it are skipped and only the fallback suites run.
 */
export const nativeTurnedOff = process.env.QCOWKIT_NATIVE === "0" || process.env.QCOWKIT_NATIVE === "off";

/** The addon, failing the test with the loader's reason when it is missing. */
export function requireNative(): NativeFs {
  expect(nativeAvailable, `native addon not loaded: ${nativeUnavailableReason ?? "?"}`).toBe(true);
  const native = nativeFs();
  if (!native) throw new Error("nativeFs() returned undefined although nativeAvailable is true");
  return native;
}

/** tmpfs supports SEEK_HOLE, punch hole and fallocate but not zero-range: the tests lean on that. */
export const shmRoot = "/dev/shm";

/** A scratch directory under `root` (default /dev/shm), removed after the file's tests. */
export function scratchDirectory(prefix: string, root = existsSync(shmRoot) ? shmRoot : tmpdir()): () => string {
  let directory = "";
  beforeAll(async () => {
    directory = await mkdtemp(join(root, `qcowkit-${prefix}-`));
  });
  afterAll(async () => {
    if (directory) await rm(directory, { recursive: true, force: true });
  });
  return () => directory;
}

/** Bytes allocated to a file (st_blocks * 512). */
export async function allocatedBytes(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** Run a QEMU tool, returning its exit status and output; the tools are required, never skipped. */
export function runQemu(tool: "qemu-img" | "qemu-io", args: string[]): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(tool, args, { encoding: "utf8", timeout: 60_000 });
  if (result.error) throw new Error(`${tool} could not run: ${result.error.message}`);
  return { status: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

/** `qemu-img map --output=json` of a raw file, reduced to the fields compared. */
export function qemuMap(path: string): { start: number; length: number; data: boolean; zero: boolean }[] {
  const output = execFileSync("qemu-img", ["map", "-f", "raw", "--output=json", path], { encoding: "utf8" });
  return (JSON.parse(output) as { start: number; length: number; data: boolean; zero: boolean }[]).map(
    ({ start, length, data, zero }) => ({ start, length, data, zero }),
  );
}
