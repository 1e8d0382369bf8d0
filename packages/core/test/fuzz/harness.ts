/**
 * One fuzz case: a mutated image is opened, inspected (as qemu-img info), checked (as qemu-img check), read
 * (as qemu-io -r read), opened read-write and repaired by us, and the same is asked of QEMU 7.2. Ours must never
 * crash (anything but a one-line Qcow2Error), hang, or change an image it refused or only read; the verdicts
 * (accepted or refused, exit codes) are compared with QEMU's.
 */
import { execFile } from "node:child_process";
import { copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { Qcow2Error } from "@qcowkit/spec";
import { checkAndRepairImage } from "../../src/repair";
import { imageInfo } from "../../src/info";
import { openImage, type BlockImage } from "../../src/node";
import type { Qcow2Image } from "../../src/qcow2-image";

export interface Verdicts {
  info: string;
  check: string;
  read: string;
  /** check -r all (only for some cases). */
  repair?: string;
}

export interface OurOutcome {
  verdicts: Verdicts;
  /** Failures that are not one-line Qcow2Errors (stack traces, internal errors). */
  crashes: string[];
  /** Operations that took too long. */
  slow: string[];
  /** Images changed by an operation that must not change them. */
  changed: string[];
}

/** Longest an operation on a small image may take before it counts as a hang (QEMU takes seconds on some). */
export const SLOW_MS = Number(process.env.QCOWKIT_FUZZ_SLOW_MS ?? 30_000);
/** Bytes read from the start of the image by the read operation. */
export const READ_LIMIT = 4 * 1024 * 1024;

function digest(path: string): string {
  return createHash("sha1").update(readFileSync(path)).digest("hex");
}

async function timed<T>(what: string, slow: string[], fn: () => Promise<T>): Promise<T> {
  const start = Date.now();
  try {
    return await fn();
  } finally {
    const ms = Date.now() - start;
    if (ms > SLOW_MS) slow.push(`${what}: ${ms} ms`);
  }
}

/** "ok", or the refusal; a crash is recorded. */
function verdictOf(e: unknown, what: string, crashes: string[]): string {
  if (e instanceof Qcow2Error && !/[\n\r]/.test(e.message) && e.message.length < 4096) return "refused";
  crashes.push(`${what}: ${e instanceof Error ? `${e.constructor.name}: ${e.message}\n${e.stack ?? ""}` : String(e)}`);
  return "crashed";
}

async function closeQuietly(image: BlockImage | undefined): Promise<void> {
  await image?.close().catch(() => undefined);
}

/** Run our side on `path` (left unchanged); `rwPath` receives a copy for the read-write open and the repair. */
export async function runOurs(path: string, rwPath: string, repair: boolean): Promise<OurOutcome> {
  const crashes: string[] = [];
  const slow: string[] = [];
  const changed: string[] = [];
  const quiet = { onWarning: () => undefined };
  const before = digest(path);
  const verdicts: Verdicts = { info: "", check: "", read: "" };
  verdicts.info = await timed("info", slow, async () => {
    let image: BlockImage | undefined;
    try {
      image = await openImage(path, { readOnly: true, noIo: true, ...quiet });
      await imageInfo(image);
      return "ok";
    } catch (e) {
      return verdictOf(e, "info", crashes);
    } finally {
      await closeQuietly(image);
    }
  });
  verdicts.check = await timed("check", slow, async () => {
    let image: BlockImage | undefined;
    try {
      image = await openImage(path, { readOnly: true, checkMode: true, ...quiet });
      if (image.format !== "qcow2") return "exit 63";
      return `exit ${(await checkAndRepairImage(image as Qcow2Image, undefined)).exitCode}`;
    } catch (e) {
      return verdictOf(e, "check", crashes) === "crashed" ? "crashed" : "exit 1";
    } finally {
      await closeQuietly(image);
    }
  });
  verdicts.read = await timed("read", slow, async () => {
    let image: BlockImage | undefined;
    try {
      image = await openImage(path, { readOnly: true, format: "qcow2", ...quiet });
      const length = Math.min(image.virtualSize, READ_LIMIT);
      if (length > 0) await image.read(0, new Uint8Array(length));
      return "ok";
    } catch (e) {
      return verdictOf(e, "read", crashes);
    } finally {
      await closeQuietly(image);
    }
  });
  if (digest(path) !== before) changed.push("read-only operations changed the image");
  // A read-write open: when it is refused, nothing may have been written.
  copyFileSync(path, rwPath);
  await timed("read-write open", slow, async () => {
    let image: BlockImage | undefined;
    try {
      image = await openImage(rwPath, { format: "qcow2", ...quiet });
    } catch (e) {
      verdictOf(e, "read-write open", crashes);
      const repairedDirty = e instanceof Qcow2Error && e.message.startsWith("Could not repair dirty image");
      if (!repairedDirty && digest(rwPath) !== before) changed.push(`refused read-write open changed the image: ${(e as Error).message}`);
    } finally {
      await closeQuietly(image);
    }
  });
  if (repair) {
    copyFileSync(path, rwPath);
    verdicts.repair = await timed("repair", slow, async () => {
      let image: BlockImage | undefined;
      try {
        image = await openImage(rwPath, { checkMode: true, ...quiet });
        if (image.format !== "qcow2") return "exit 63";
        return `exit ${(await checkAndRepairImage(image as Qcow2Image, "all")).exitCode}`;
      } catch (e) {
        return verdictOf(e, "repair", crashes) === "crashed" ? "crashed" : "exit 1";
      } finally {
        await closeQuietly(image);
      }
    });
  }
  return { verdicts, crashes, slow, changed };
}

/**
 * QEMU gets this long per command. It does hang on some hostile images (a backing file that names itself
 * makes 7.2 open the same file over and over): such verdicts are "hang" and not compared.
 */
const QEMU_TIMEOUT_MS = 3000;

function run(tool: string, args: string[], cwd: string): Promise<{ code: number; stdout: string }> {
  return new Promise((resolve) => {
    execFile(tool, args, { cwd, timeout: QEMU_TIMEOUT_MS, killSignal: "SIGKILL", maxBuffer: 64 * 1024 * 1024, encoding: "utf8" }, (error, stdout) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      resolve({ code, stdout });
    });
  });
}

const HANG = "hang";

/** QEMU's verdicts on `path` (unchanged); `rwPath` gets a copy for check -r all (both relative to `cwd`). */
export async function runQemu(path: string, rwPath: string, repair: boolean, cwd: string): Promise<Verdicts> {
  const info = await run("qemu-img", ["info", "--output=json", path], cwd);
  if (info.code === -1) return { info: HANG, check: HANG, read: HANG, ...(repair ? { repair: HANG } : {}) };
  let size = 512;
  if (info.code === 0) {
    try {
      size = Math.min(Number((JSON.parse(info.stdout) as { "virtual-size": number })["virtual-size"]), READ_LIMIT);
    } catch {
      size = 512;
    }
  }
  const [check, read] = await Promise.all([
    run("qemu-img", ["check", path], cwd),
    run("qemu-io", ["-r", "-f", "qcow2", "-c", size > 0 ? `read 0 ${size}` : "read 0 0", path], cwd),
  ]);
  const verdicts: Verdicts = {
    info: info.code === 0 ? "ok" : "refused",
    check: check.code === -1 ? HANG : `exit ${check.code}`,
    read: read.code === -1 ? HANG : read.code === 0 && !/failed|error/i.test(read.stdout) ? "ok" : "refused",
  };
  if (repair) {
    copyFileSync(join(cwd, path), join(cwd, rwPath));
    const r = await run("qemu-img", ["check", "-r", "all", rwPath], cwd);
    verdicts.repair = r.code === -1 ? HANG : `exit ${r.code}`;
  }
  return verdicts;
}

/** Run `fn` over `items` with at most `limit` at once. */
export async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
