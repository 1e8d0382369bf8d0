/** Where commands print: the process's stdout/stderr, or buffers (tests). */
import type { Output } from "./errors";

export const processOutput: Output = {
  out: (text) => {
    process.stdout.write(text);
  },
  err: (text) => {
    process.stderr.write(text);
  },
};

/**
 * stdout as C's stdio buffers it on a pipe or a file (QEMU's tools): `out` text is held and passed on in blocks
 * of `block` characters, the rest at `flush`; `err` text goes out at once. Both streams merged then read in
 * QEMU's order: a message printed at close comes before the results of the commands that preceded it.
 */
export function blockBufferedOutput(io: Output, block = 4096): Output & { flush(): void } {
  let held = "";
  return {
    out: (text) => {
      held += text;
      while (held.length >= block) {
        io.out(held.slice(0, block));
        held = held.slice(block);
      }
    },
    err: (text) => io.err(text),
    flush: () => {
      if (held) io.out(held);
      held = "";
    },
  };
}

/** An Output that collects what is printed. */
export function bufferOutput(): Output & { stdout: () => string; stderr: () => string } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out: (t) => out.push(t),
    err: (t) => err.push(t),
    stdout: () => out.join(""),
    stderr: () => err.join(""),
  };
}

/**
 * Run a bin's main. When it is done and nothing printed is still waiting to be written, the process exits
 * at once (a file close the engine left to the thread pool, or the like, would hold the exit back by ~15 ms
 * for nothing: every write was awaited). Otherwise the exit code is set and Node exits once stdout drains.
 */
export function runBin(main: (args: string[], io: Output) => Promise<number>): void {
  main(process.argv.slice(2), processOutput).then(
    (code) => {
      process.exitCode = code;
      if (process.stdout.writableLength === 0 && process.stderr.writableLength === 0) process.exit(code);
    },
    (error: unknown) => {
      process.stderr.write(`internal error: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
