/** Test plumbing: temp dirs on tmpfs, the real bins and QEMU's tools as child processes, output normalisation. */
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, inject } from "vitest";

export const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** The bins as installed (shims loading dist/). */
export const QIMG_BIN = path.join(APP_DIR, "bin", "qimg.js");
export const QIO_BIN = path.join(APP_DIR, "bin", "qio.js");
/** The same programs from the private copy of dist/ made by test/global-setup.ts. */
export const QIMG = path.join(inject("cliDist"), "qimg.cjs");
export const QIO = path.join(inject("cliDist"), "qio.cjs");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a program (no shell) in `cwd`; never rejects for a non-zero exit. */
export function run(
  program: string,
  args: readonly string[],
  opts: { cwd?: string | undefined; timeoutMs?: number; env?: NodeJS.ProcessEnv; input?: string | undefined } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      program,
      args,
      { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 256 * 1024 * 1024, encoding: "utf8", env: { ...process.env, ...opts.env } },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== "number" && !error.signal) {
          reject(new Error(`${program} ${args.join(" ")}: ${error.message}\n${stderr}`));
          return;
        }
        // Killed by a signal: the shell's 128 + signal number.
        const code = !error ? 0 : typeof error.code === "number" ? error.code : 128 + (error.signal === "SIGKILL" ? 9 : 15);
        resolve({ code, stdout, stderr });
      },
    );
    // Standard input is given (or closed): qio reads commands from it when there is no -c.
    child.stdin?.on("error", () => undefined);
    child.stdin?.end(opts.input ?? "");
  });
}

export const qemuImg = (args: readonly string[], cwd?: string) => run("qemu-img", args, { cwd });
export const qemuIo = (args: readonly string[], cwd?: string) => run("qemu-io", args, { cwd });
/**
 * Run one of our programs. Other engineers' builds may rebuild a workspace package's dist/ while a test runs;
 * a program that failed to load because of that (before doing anything) is started again.
 */
async function runOurs(script: string, args: readonly string[], cwd?: string): Promise<Run> {
  for (let attempt = 0; ; attempt++) {
    const r = await run(process.execPath, [script, ...args], { cwd });
    if (attempt >= 20 || !/ERR_MODULE_NOT_FOUND|Cannot find module/.test(r.stderr)) return r;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

export const qimg = (args: readonly string[], cwd?: string) => runOurs(QIMG, args, cwd);
export const qio = (args: readonly string[], cwd?: string) => runOurs(QIO, args, cwd);

/** Must succeed; returns stdout. */
export async function ok(p: Promise<Run>): Promise<string> {
  const r = await p;
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r.stdout;
}

/** A fresh directory under /dev/shm, removed after the file's tests. */
export function tempDir(prefix = "qimg-test-"): string {
  const base = fs.existsSync("/dev/shm") ? "/dev/shm" : "/tmp";
  const dir = fs.mkdtempSync(path.join(base, prefix));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A fresh sub-directory of `parent`. */
export function subDir(parent: string, name: string): string {
  const dir = path.join(parent, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * QEMU output made comparable with ours: program names, and the newline QEMU forgets after "Detected format
 * of FMT." (see README "Differences").
 */
export function normalizeQemu(text: string): string {
  return text
    .replace(/qemu-img: /g, "qimg: ")
    .replace(/qemu-io: /g, "qio: ")
    .replace(/Detected format of (\w+)\.$/, "Detected format of $1.\n")
    .replace(/qemu-img/g, "qimg");
}

/** qemu-io's timing line, which differs from run to run. */
export function filterTimings(text: string): string {
  return text
    .replace(/(\d+ ops); [0-9:.]+(?: sec)? \([^()\n]*\/sec and [^()\n]* ops\/sec\)/g, "$1; TIME")
    .replace(/^(\d+,\d+),\d+:\d\d:\d\d\.\d\d,[0-9.]+,[0-9.]+$/gm, "$1,TIME");
}

/**
 * A qemu-io command's usage line ("read [-abCqv] ... off len -- SUMMARY") with its summary replaced: the
 * syntax is QEMU's and compared, the one-line summary after " -- " is in qio's own words.
 */
export function neutralUsageSummaries(text: string): string {
  return text.replace(/^([a-z_]+(?: [^:\n]*)?) -- .*$/gm, "$1 -- SUMMARY");
}

/** qemu-img info --output=json with the fields that depend on the file system or the clock removed. */
export function infoJson(text: string): unknown {
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (v && typeof v === "object") {
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) {
        if (k === "actual-size") continue;
        o[k] = strip(x);
      }
      return o;
    }
    return v;
  };
  return strip(JSON.parse(text));
}

/** Run async jobs with a concurrency limit. */
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

/** The first differing lines of two texts, with a little context (for readable failures). */
export function firstDifference(expected: string, actual: string, context = 3): string {
  const a = expected.split("\n");
  const b = actual.split("\n");
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  if (i === a.length && i === b.length) return "(same)";
  const from = Math.max(0, i - context);
  const show = (lines: string[]) => lines.slice(from, i + context + 1).map((l, k) => `${from + k === i ? ">" : " "} ${l}`).join("\n");
  return `line ${i + 1}:\n  expected:\n${show(a)}\n  actual:\n${show(b)}`;
}
