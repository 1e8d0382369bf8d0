/**
 * Cancellation and progress for the long operations (convert, check, commit, rebase, the stream functions):
 * the same two options everywhere, the signal looked at between requests, one error for a cancelled operation.
 */
import { Qcow2Error } from "@qcowkit/spec";

/** Options every long operation takes. */
export interface OperationOptions {
  /**
   * Looked at between requests: once aborted, the operation stops issuing new ones, lets those in flight
   * settle, and rejects with a Qcow2Error of code ABORTED (the signal's reason is its `cause`). What it
   * already wrote stays written and consistent; the images stay open (closing them is the caller's part).
   */
  signal?: AbortSignal;
  /** Called as work completes with how much is done of the total (units are the operation's own; see there). */
  onProgress?: (done: number, total: number) => void;
}

/** The error a cancelled operation rejects with; its message is the reason's when that is an Error. */
export function abortError(signal: AbortSignal): Qcow2Error {
  const reason: unknown = signal.reason;
  const message = reason instanceof Error && reason.message !== "" ? reason.message : "The operation was aborted";
  return new Qcow2Error("ABORTED", message, { cause: reason });
}

/** Throws abortError(signal) once `signal` is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}

/** `items`, with the signal looked at before each one is handed on. */
export async function* abortable<T>(items: AsyncGenerator<T>, signal: AbortSignal | undefined): AsyncGenerator<T> {
  if (!signal) return yield* items;
  for await (const item of items) {
    throwIfAborted(signal);
    yield item;
  }
}

/** The steps of an operation: the signal is looked at before each, progress reported after each. */
export class OperationSteps {
  done = 0;
  total = 0;

  constructor(private readonly opts: OperationOptions) {}

  /** Before a step: throws abortError once the signal is aborted. */
  check(): void {
    throwIfAborted(this.opts.signal);
  }

  /** After `n` more units of work. */
  advance(n: number): void {
    this.done += n;
    this.opts.onProgress?.(this.done, this.total);
  }
}
