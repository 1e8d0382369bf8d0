import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readSync, rmSync } from "node:fs";

export interface ProcessResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit status; 128+N when killed by signal N. */
  readonly exitCode: number;
  readonly timedOut: boolean;
}

export interface RunOptions {
  readonly cwd: string;
  readonly env: NodeJS.ProcessEnv;
  readonly timeoutMs: number;
  /** Scratch file prefix for the captured output (outside the case directory). */
  readonly logPath: string;
}

/** At most this much of a stream is kept: a runaway tool must not exhaust the runner's memory. */
export const MAX_STREAM_BYTES = 8 << 20;

/** Reads a captured stream, keeping the first MAX_STREAM_BYTES and saying so when it cut. */
export function readCapped(path: string): string {
  const fd = openSync(path, "r");
  try {
    const buf = new Uint8Array(MAX_STREAM_BYTES + 1);
    let length = 0;
    while (length < buf.length) {
      const n = readSync(fd, buf, length, buf.length - length, length);
      if (n === 0) break;
      length += n;
    }
    const text = new TextDecoder().decode(buf.subarray(0, Math.min(length, MAX_STREAM_BYTES)));
    return length > MAX_STREAM_BYTES ? `${text}\n[output cut after ${MAX_STREAM_BYTES} bytes]\n` : text;
  } finally {
    closeSync(fd);
  }
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15 };

export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (SIGNAL_NUMBERS[signal] ?? 0) : 0);
}

/** Runs a command to completion with a bounded wait; stdin is /dev/null. */
export function runProcess(argv: readonly string[], opts: RunOptions): Promise<ProcessResult> {
  const outPath = `${opts.logPath}.out`;
  const errPath = `${opts.logPath}.err`;
  const outFd = openSync(outPath, "w");
  const errFd = openSync(errPath, "w");
  return new Promise<ProcessResult>((resolve) => {
    let child: ChildProcess;
    let timedOut = false;
    let settled = false;
    const finish = (exitCode: number, extra = ""): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      closeSync(outFd);
      closeSync(errFd);
      const stdout = readCapped(outPath);
      const stderr = readCapped(errPath) + extra;
      rmSync(outPath, { force: true });
      rmSync(errPath, { force: true });
      resolve({ stdout, stderr, exitCode, timedOut });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts.timeoutMs);
    const [program = "", ...args] = argv;
    try {
      if (program === "") throw new Error("empty command");
      child = spawn(program, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", outFd, errFd] });
    } catch (e) {
      finish(127, `${program}: ${(e as Error).message}\n`);
      return;
    }
    child.on("error", (e) => finish(127, `${argv[0]}: ${e.message}\n`));
    child.on("exit", (code, signal) => finish(exitStatus(code, signal)));
  });
}
