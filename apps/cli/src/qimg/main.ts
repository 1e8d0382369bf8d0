/**
 * qimg: qemu-img compatible front end. `qimg [-h|-V|-T trace] COMMAND [command options]`.
 */
import { getopt } from "../cli/getopt";
import { reportError, UsageError, type Output } from "../cli/errors";
import { cliOpenDefaults } from "../cli/open";
import { resetSecrets } from "../cli/secrets";
import { amendCommand } from "./amend";
import { checkCommand } from "./check";
import { compareCommand } from "./compare";
import { PROG, makeContext, type QimgCommand } from "./context";
import { convertCommand } from "./convert";
import { createCommand } from "./create";
import { helpText, versionText } from "./help";
import { infoCommand } from "./info";
import { mapCommand } from "./map";
import { resizeCommand } from "./resize";
import { snapshotCommand } from "./snapshot";
import { measureCommand } from "./measure";
import { rebaseCommand } from "./rebase";
import { commitCommand } from "./commit";
import { bitmapCommand } from "./bitmap";
import { ddCommand } from "./dd";
import { acceptingStreamInput, type CommandContext } from "./context";
import { isStreamOperand, withSpooledInput } from "../cli/stream-io";
import { benchCommand } from "./bench";


/** Metadata cache of each qcow2 image qimg opens (L2 tables, and a quarter as much for refcount blocks). */
const QIMG_CACHE_BYTES = 4 * 1024 * 1024;

/** info, check and map on a stream: the stream is spooled to a temporary file. */
function streamable(command: QimgCommand): QimgCommand {
  return acceptingStreamInput(command, (arg) => isStreamOperand(arg, "in"), (operand, ctx: CommandContext, use) => withSpooledInput(operand, (t) => ctx.io.err(t), use));
}

const COMMANDS: QimgCommand[] = [
  amendCommand,
  streamable(checkCommand),
  compareCommand,
  convertCommand,
  createCommand,
  streamable(infoCommand),
  streamable(mapCommand),
  resizeCommand,
  snapshotCommand,
  commitCommand,
  rebaseCommand,
  measureCommand,
  bitmapCommand,
  ddCommand,
  benchCommand,
];

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
    const command = COMMANDS.find((c) => c.name === name);
    if (!command) throw new UsageError(`Command not found: ${name}`);
    return await command.run(rest, ctx);
  } catch (error) {
    return reportError(PROG, error, io);
  }
}
