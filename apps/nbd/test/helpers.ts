/** Shared test plumbing: temp dirs on tmpfs, bounded child processes, in-process servers. */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { BlockImage } from "../src/device";
import { NbdServer, createExportConfig, type ExportSettings, type NbdServerOptions } from "../src/server";

export const APP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const QNBD_BIN = path.join(APP_DIR, "bin", "qnbd.js");

/** A fresh directory under /dev/shm (tmpfs), removed by the returned cleanup. */
export function makeTempDir(prefix = "qnbd-test-"): { dir: string; cleanup: () => void } {
  const base = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command with a hard timeout (the child is killed and the promise rejects when it expires). */
export function run(
  command: string,
  args: readonly string[],
  opts: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"], env: opts.env ?? process.env });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${command} ${args.join(" ")} timed out after ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    // A child that exits before reading its input closes the pipe first: that is not an error here.
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}

/** Runs a command that must succeed; returns its stdout. */
export async function runOk(command: string, args: readonly string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  const r = await run(command, args, opts);
  if (r.code !== 0) throw new Error(`${command} ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export interface RunningServer {
  server: NbdServer;
  port: number;
  /** nbd://127.0.0.1:PORT/NAME */
  uri: string;
  close: () => Promise<void>;
}

/** Serves a device in this process on a free TCP port of 127.0.0.1. */
export async function startServer(
  settings: ExportSettings,
  extra: Omit<NbdServerOptions, "export"> = {},
): Promise<RunningServer> {
  const server = new NbdServer({ export: createExportConfig(settings), shared: 0, ...extra });
  const address = await server.listenTcp("127.0.0.1", 0);
  return {
    server,
    port: address.port,
    uri: `nbd://127.0.0.1:${address.port}/${settings.name ?? ""}`,
    close: () => server.close(2000),
  };
}

/** Serves a device on a Unix socket in `dir`. */
export async function startUnixServer(
  settings: ExportSettings,
  socketPath: string,
  extra: Omit<NbdServerOptions, "export"> = {},
): Promise<{ server: NbdServer; uri: string; close: () => Promise<void> }> {
  const server = new NbdServer({ export: createExportConfig(settings), shared: 0, ...extra });
  await server.listenUnix(socketPath);
  return { server, uri: `nbd+unix:///${settings.name ?? ""}?socket=${socketPath}`, close: () => server.close(2000) };
}

/** Deterministic pseudo-random bytes. */
export function patternBytes(length: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Waits until `predicate` holds, polling; rejects after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export type { BlockImage };
