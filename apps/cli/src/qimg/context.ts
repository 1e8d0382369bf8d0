/** What every qimg command gets: where to print and how to warn. */
import { CliError, type Output } from "../cli/errors";
import { getopt, type GetoptResult, type LongOption } from "../cli/getopt";
import { defineObject } from "../cli/secrets";
import { PROG, helpText } from "./help";

export { PROG } from "./help";

export interface CommandContext {
  io: Output;
  /** "qimg: warning: MESSAGE" on stderr. */
  warn(message: string): void;
}

export function makeContext(io: Output): CommandContext {
  return { io, warn: (message) => io.err(`${PROG}: warning: ${message}\n`) };
}

export interface QimgCommand {
  name: string;
  /** `args` follow the command name. Returns the exit code; throws for errors (reported in one place). */
  run(args: string[], ctx: CommandContext): Promise<number>;
}

/** Long options most qemu-img commands share. */
export const HELP_OPTION: LongOption = { name: "help", hasArg: false, key: "h" };
export const OBJECT_OPTION: LongOption = { name: "object", hasArg: true, key: "object" };
export const IMAGE_OPTS_OPTION: LongOption = { name: "image-opts", hasArg: false, key: "image-opts" };
export const FORCE_SHARE_OPTION: LongOption = { name: "force-share", hasArg: false, key: "U" };

/**
 * getopt for a command, with the options qemu-img commands share handled: -h/--help prints the help (the
 * result is then undefined: the command returns 0), --object defines a secret. --image-opts is the command's.
 */
export function parseCommand(args: readonly string[], ctx: CommandContext, spec: { argv0: string; short: string; long: LongOption[] }): GetoptResult | undefined {
  const parsed = getopt(args, spec);
  for (const o of parsed.options) {
    if (o.key === "h") {
      ctx.io.out(helpText());
      return undefined;
    }
    if (o.key === "object") defineObject(o.value!);
  }
  return parsed;
}

/**
 * A command whose image operand (the last argument) may be a stream: the stream is spooled to a temporary
 * file (said once on stderr, removed afterwards) and the command runs on that file.
 */
export function acceptingStreamInput(command: QimgCommand, isStream: (arg: string) => boolean, spool: (operand: string, ctx: CommandContext, use: (path: string) => Promise<number>) => Promise<number>): QimgCommand {
  return {
    name: command.name,
    run(args, ctx) {
      const last = args.at(-1);
      if (last === undefined || args.length < 1 || !isStream(last) || (args.length >= 2 && /^-[a-zA-Z]*[fTro]$/.test(args.at(-2)!))) return command.run(args, ctx);
      return spool(last, ctx, (path) => command.run([...args.slice(0, -1), path], ctx));
    },
  };
}
