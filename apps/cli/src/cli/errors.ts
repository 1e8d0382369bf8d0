/**
 * The one place where failures become messages and exit codes (see README "Exit codes").
 *
 * - `UsageError`: bad command line (unknown option, missing argument, wrong operand count). Printed as
 *   "PROG: message" plus QEMU's "Try 'PROG --help' for more information" hint; exit 1.
 * - `CliError`: a refusal with a chosen exit code (default 1): one line "PROG: message" (QEMU's few two-line
 *   messages keep their two lines; hints QEMU appends without prefix follow the line).
 * - `Qcow2Error` from the engine: one line "PROG: message" (the command adds QEMU's context, such as
 *   "Could not open 'x': "); exit 1 unless the command maps it (compare: 2/3/4).
 * - anything else is a bug: one line "PROG: internal error: message", exit 1 (the stack only with
 *   QCOWKIT_DEBUG=1).
 */
import { isQcow2Error } from "@qcowkit/spec";

export const EXIT = {
  OK: 0,
  FAILURE: 1,
  /** compare: the images differ. */
  COMPARE_DIFFERENT: 1,
  /** compare: an image could not be opened. */
  COMPARE_OPEN_FAILED: 2,
  /** compare: block status failed. */
  COMPARE_STATUS_FAILED: 3,
  /** compare: reading failed. */
  COMPARE_READ_FAILED: 4,
  /** check: corruptions found. */
  CHECK_CORRUPT: 2,
  /** check: only leaks found. */
  CHECK_LEAKS: 3,
  /** check: the format has no consistency check (raw). */
  CHECK_NOT_SUPPORTED: 63,
} as const;

export class CliError extends Error {
  override readonly name: string = "CliError";
  readonly exitCode: number;
  /** Print the message without the "PROG: " prefix. */
  readonly bare: boolean;
  /**
   * Text QEMU prints after the message without the program prefix (error_append_hint), such as "Could not
   * open backing image." Kept separate so wrapping the message ("FILE: ...") keeps it after the line.
   */
  readonly hint: string | undefined;

  constructor(message: string, opts: { exitCode?: number; bare?: boolean; cause?: unknown; hint?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.exitCode = opts.exitCode ?? EXIT.FAILURE;
    this.bare = opts.bare ?? false;
    this.hint = opts.hint;
  }
}

export class UsageError extends CliError {
  override readonly name = "UsageError";
  /** For qemu-io commands: the command whose usage line follows the message. */
  readonly command: string | undefined;

  constructor(message: string, opts: { command?: string } = {}) {
    super(message);
    this.command = opts.command;
  }
}

/** Exit silently with a code (the command already printed what it had to say). */
export class ExitStatus extends Error {
  override readonly name = "ExitStatus";
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

export interface Output {
  out(text: string): void;
  err(text: string): void;
  /** Write out what `out` holds back, if it buffers (see blockBufferedOutput). */
  flush?(): void;
}

/** A message on one line: control characters (newlines included) become spaces. */
export function oneLine(message: string): string {
  // eslint-disable-next-line no-control-regex
  return message.replace(/\r?\n/g, " ").replace(/[\u0000-\u001f\u007f]/g, " ");
}

/** Print `error` for program `prog` and return the exit code. */
export function reportError(prog: string, error: unknown, io: Output): number {
  if (error instanceof ExitStatus) return error.exitCode;
  if (error instanceof UsageError) {
    io.err(`${prog}: ${oneLine(error.message)}\n`);
    if (error.command === undefined) io.err(`Try '${prog} --help' for more information\n`);
    return error.exitCode;
  }
  if (error instanceof CliError) {
    // A message of several lines is several error_report() calls: each line gets the prefix.
    for (const line of error.message.split("\n")) io.err(error.bare ? `${oneLine(line)}\n` : `${prog}: ${oneLine(line)}\n`);
    printHint(error, io);
    return error.exitCode;
  }
  if (isQcow2Error(error)) {
    io.err(`${prog}: ${oneLine(error.message)}\n`);
    printHint(error, io);
    return EXIT.FAILURE;
  }
  const message = error instanceof Error ? error.message : String(error);
  io.err(`${prog}: internal error: ${oneLine(message)}\n`);
  if (process.env.QCOWKIT_DEBUG === "1" && error instanceof Error && error.stack) io.err(`${error.stack}\n`);
  return EXIT.FAILURE;
}

/**
 * QEMU's hint line after an error (error_append_hint), such as `Is another process using the image [x]?`
 * after a lock conflict: carried as `hint` by the error or by one of its causes.
 */
export function printHint(error: unknown, io: Output): void {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const hint = (e as { hint?: unknown }).hint;
    if (typeof hint === "string") {
      // Hints may span lines ("... peta-\nand exabytes, respectively.").
      io.err(`${hint.replace(/\n$/, "").split("\n").map(oneLine).join("\n")}\n`);
      return;
    }
  }
}

/** The text of an error for embedding in another message ("Could not open 'x': <this>"). */
export function errorText(error: unknown): string {
  if (error instanceof Error) return oneLine(error.message);
  return oneLine(String(error));
}

/** Wrap an error with QEMU's context prefix ("FILE: "), keeping its hint. */
export function withContext(prefix: string, error: unknown, exitCode: number = EXIT.FAILURE): CliError {
  const hint = error instanceof CliError ? error.hint : undefined;
  return new CliError(`${prefix}${errorText(error)}`, { exitCode, cause: error, ...(hint !== undefined ? { hint } : {}) });
}
