/**
 * Stream operands: `-`, /dev/stdin, /dev/stdout, and names of FIFOs, sockets and character devices (found
 * with fstat, not by name), as file descriptors; spooling a stream to a temporary file under TMPDIR (said once
 * on stderr, removed afterwards, also on SIGINT/SIGTERM).
 */
import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, statSync, type Stats } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileStore } from "@qcowkit/datafile/node";
import { readableFromFd, writeStreamToFd } from "@qcowkit/core/node";
import type { ByteStore } from "@qcowkit/spec";
import { CliError, errorText } from "./errors";

export interface StreamEndpoint {
  fd: number;
  /** The operand as given. */
  name: string;
  close(): void;
}

const isStreamStat = (s: Stats) => s.isFIFO() || s.isSocket() || s.isCharacterDevice();

/** Whether an operand names a stream (without opening it). */
export function isStreamOperand(name: string, direction: "in" | "out"): boolean {
  if (name === "-") return true;
  if (direction === "in" && name === "/dev/stdin") return true;
  if (direction === "out" && name === "/dev/stdout") return true;
  try {
    return isStreamStat(statSync(name));
  } catch {
    return false;
  }
}

/** Open a stream operand (`-` is standard input or output). */
export function openStreamOperand(name: string, direction: "in" | "out"): StreamEndpoint {
  const std = direction === "in" ? 0 : 1;
  if (name === "-" || name === (direction === "in" ? "/dev/stdin" : "/dev/stdout")) {
    try {
      fstatSync(std);
    } catch {
      throw new CliError(`Could not open '${name}': standard ${direction === "in" ? "input" : "output"} is closed`);
    }
    return { fd: std, name, close: () => undefined };
  }
  let fd: number;
  try {
    fd = openSync(name, direction === "in" ? "r" : "w");
  } catch (e) {
    throw new CliError(`Could not open '${name}': ${errorText(e)}`, { cause: e });
  }
  return { fd, name, close: () => closeSync(fd) };
}

export function readStream(endpoint: StreamEndpoint): ReadableStream<Uint8Array> {
  return readableFromFd(endpoint.fd);
}

export async function writeStream(stream: ReadableStream<Uint8Array>, endpoint: StreamEndpoint): Promise<void> {
  try {
    await writeStreamToFd(stream, endpoint.fd);
  } catch (e) {
    if (e instanceof CliError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EPIPE") throw new CliError(`error while writing to '${endpoint.name}': Broken pipe`, { cause: e });
    throw e;
  }
}

/** Temporary files of this process, removed at exit and on SIGINT/SIGTERM. */
const temps = new Set<string>();
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const clean = () => {
    for (const dir of temps) rmSync(dir, { recursive: true, force: true });
    temps.clear();
  };
  process.on("exit", clean);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      clean();
      // Die of the signal itself (the shell sees 128 + its number). process.exit() could wait for a read
      // blocked on the input pipe.
      process.kill(process.pid, signal);
    });
  }
}

/** A new temporary directory under TMPDIR, removed with `remove()` or when the process ends. */
export function tempDirectory(): { dir: string; remove(): void } {
  installHandlers();
  const dir = mkdtempSync(join(process.env.TMPDIR || tmpdir(), "qimg-spool-"));
  temps.add(dir);
  return {
    dir,
    remove() {
      rmSync(dir, { recursive: true, force: true });
      temps.delete(dir);
    },
  };
}

/** Spool a stream into a temporary file; says so once on stderr. */
export async function spoolStream(
  stream: ReadableStream<Uint8Array>,
  what: string,
  err: (text: string) => void,
): Promise<{ path: string; remove(): void }> {
  const tmp = tempDirectory();
  const path = join(tmp.dir, "spool");
  err(`qimg: ${what}: spooling the stream to ${path}\n`);
  const fd = openSync(path, "w");
  try {
    await writeStreamToFd(stream, fd);
  } catch (e) {
    tmp.remove();
    throw e;
  } finally {
    closeSync(fd);
  }
  return { path, remove: tmp.remove };
}

/**
 * A scratch store for stream conversion, made on first need (said once on stderr with `why`), removed with
 * `remove()`.
 */
export function lazyScratch(
  what: string,
  err: (text: string) => void,
  why = "the stream refers back to earlier bytes; spooling them to",
): { make(): Promise<ByteStore>; remove(): Promise<void> } {
  let made: { store: ByteStore; remove(): void } | undefined;
  return {
    async make() {
      const tmp = tempDirectory();
      const path = join(tmp.dir, "spool");
      err(`qimg: ${what}: ${why} ${path}\n`);
      const store = await FileStore.open(path, { create: true, truncate: true });
      made = { store, remove: tmp.remove };
      return store;
    },
    async remove() {
      if (!made) return;
      await made.store.close().catch(() => undefined);
      made.remove();
      made = undefined;
    },
  };
}

/**
 * Run `use` on an input operand that may be a stream: a stream is spooled to a temporary file first (said once
 * on stderr) and `use` gets that file's name; the file is removed afterwards.
 */
export async function withSpooledInput<T>(operand: string, err: (text: string) => void, use: (path: string, spooled: boolean) => Promise<T>): Promise<T> {
  if (!isStreamOperand(operand, "in")) return use(operand, false);
  const input = openStreamOperand(operand, "in");
  let spool: { path: string; remove(): void } | undefined;
  try {
    spool = await spoolStream(readStream(input), operand, err);
    return await use(spool.path, true);
  } finally {
    spool?.remove();
    input.close();
  }
}
