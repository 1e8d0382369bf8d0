/**
 * qimg: qemu-img compatible front end. `qimg [-h|-V|-T trace] COMMAND [command options]`.
 */
import { getopt } from "../cli/getopt";
import { reportError, UsageError, type Output } from "../cli/errors";
import { cliOpenDefaults } from "../cli/open-defaults";
import { resetSecrets } from "../cli/secrets";
import { PROG, makeContext, acceptingStreamInput, type CommandContext, type QimgCommand } from "./context";
import { helpText, versionText } from "./help";

/** Metadata cache of each qcow2 image qimg opens (L2 tables, and a quarter as much for refcount blocks). */
const QIMG_CACHE_BYTES = 4 * 1024 * 1024;

/** info, check and map on a stream: the stream is spooled to a temporary file. */
async function streamable(command: QimgCommand): Promise<QimgCommand> {
  const { isStreamOperand, withSpooledInput } = await import("../cli/stream-io");
  return acceptingStreamInput(command, (arg) => isStreamOperand(arg, "in"), (operand, ctx: CommandContext, use) => withSpooledInput(operand, (t) => ctx.io.err(t), use));
}

/**
 * The commands, each loaded when it runs: `qimg --version` or `qimg info` loads neither convert's code nor
 * what only other commands need (start-up time, issue 17; the bundle keeps each in its own chunk).
 */
const COMMANDS: Record<string, () => Promise<QimgCommand>> = {
  amend: async () => (await import("./amend")).amendCommand,
  check: async () => streamable((await import("./check")).checkCommand),
  compare: async () => (await import("./compare")).compareCommand,
  convert: async () => (await import("./convert")).convertCommand,
  create: async () => (await import("./create")).createCommand,
  info: async () => streamable((await import("./info")).infoCommand),
  map: async () => streamable((await import("./map")).mapCommand),
  resize: async () => (await import("./resize")).resizeCommand,
  snapshot: async () => (await import("./snapshot")).snapshotCommand,
  commit: async () => (await import("./commit")).commitCommand,
  rebase: async () => (await import("./rebase")).rebaseCommand,
  measure: async () => (await import("./measure")).measureCommand,
  bitmap: async () => (await import("./bitmap")).bitmapCommand,
  dd: async () => (await import("./dd")).ddCommand,
  bench: async () => (await import("./bench")).benchCommand,
};

/** Run qimg with `args` (argv without node and the script); returns the exit code. */
export async function runQimg(args: string[], io: Output): Promise<number> {
  const ctx = makeContext(io);
  resetSecrets();
  // qimg's commands walk images front to back: a small metadata cache per image is enough for them, and
  // keeps the peak memory of a convert, map or check of a huge image flat (QIMG_CACHE_BYTES).
  cliOpenDefaults.cacheSize = QIMG_CACHE_BYTES;
  try {
    const parsed = getopt(args, {
      short: "+:hVT:",
      posix: true,
      argv0: PROG,
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "version", hasArg: false, key: "V" },
        { name: "trace", hasArg: true, key: "T" },
        { name: "safe", hasArg: false, key: "safe" },
      ],
    });
    // --safe (untrusted images) is qimg's own: accepted before the command or among its options.
    if (parsed.options.some((o) => o.key === "safe")) cliOpenDefaults.safe = true;
    for (const o of parsed.options) {
      if (o.key === "h") {
        io.out(helpText());
        return 0;
      }
      if (o.key === "V") {
        io.out(versionText());
        return 0;
      }
    }
    const [name, ...commandArgs] = parsed.operands;
    const end = commandArgs.indexOf("--");
    const rest = commandArgs.filter((a, i) => a !== "--safe" || (end >= 0 && i > end));
    if (rest.length !== commandArgs.length) cliOpenDefaults.safe = true;
    if (name === undefined) throw new UsageError("Not enough arguments");
    const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
    if (!load) throw new UsageError(`Command not found: ${name}`);
    return await (await load()).run(rest, ctx);
  } catch (error) {
    return reportError(PROG, error, io);
  }
}
