import { accessSync, constants, existsSync } from "node:fs";
import { basename, delimiter, dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { PIPE, splitWords } from "./words";

/**
 * A driver tells the runner how to start an implementation's three tools. Cases name them $QEMU_IMG, $QEMU_IO
 * and $QEMU_NBD; their output is normalised to the neutral names qemu-img, qemu-io and qemu-nbd.
 */
export interface ToolCommand {
  /** Program and leading arguments. */
  readonly argv: readonly string[];
  /** Names the tool may print for itself (base name, full path); each is filtered to the neutral name. */
  readonly names: readonly string[];
}

export interface Driver {
  readonly name: string;
  readonly img: ToolCommand;
  readonly io: ToolCommand;
  /** Without an NBD server, cases that require nbd are reported as not run. */
  readonly nbd?: ToolCommand;
}

export type ToolRole = "img" | "io" | "nbd";
export const NEUTRAL_NAMES: Record<ToolRole, string> = { img: "qemu-img", io: "qemu-io", nbd: "qemu-nbd" };

export class DriverError extends Error {}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Looks a program up like a shell would: a name with a slash is a path, anything else is searched on PATH. */
export function findProgram(program: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (program.includes("/")) {
    const p = resolve(program);
    return isExecutable(p) ? p : undefined;
  }
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, program);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

function tool(program: string, extraNames: readonly string[] = []): ToolCommand {
  const names = new Set([program, basename(program), ...extraNames]);
  return { argv: [program], names: [...names] };
}

/** Splits a command given as one string ("node ./my-img.js --flag") into words, with shell quoting. */
export function commandWords(command: string): string[] {
  const words = splitWords(command, (name) => {
    throw new DriverError(`variables are not expanded in commands ($${name})`);
  });
  if (words.length === 0 || words.includes(PIPE)) throw new DriverError(`bad command: "${command}"`);
  return words as string[];
}

function requireProgram(role: ToolRole, program: string, env: NodeJS.ProcessEnv): string {
  const found = findProgram(program, env);
  if (!found) throw new DriverError(`${program} not found (needed as ${NEUTRAL_NAMES[role]})`);
  return found;
}

/** QEMU's own tools from PATH: the reference the golden files were made with. */
export function qemuDriver(env: NodeJS.ProcessEnv = process.env): Driver {
  return {
    name: "qemu",
    img: tool(requireProgram("img", "qemu-img", env)),
    io: tool(requireProgram("io", "qemu-io", env)),
    nbd: tool(requireProgram("nbd", "qemu-nbd", env)),
  };
}

/** The nearest node_modules/.bin above this module that holds `program` (the monorepo's linked bins). */
function findInAncestorBins(program: string): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, "node_modules", ".bin", program);
    if (existsSync(candidate) && isExecutable(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

export interface QcowkitPaths {
  readonly qimg?: string;
  readonly qio?: string;
  readonly qnbd?: string;
}

/**
 * qcowkit's qimg, qio and qnbd. Each is taken from, in order: the explicit path, the QIOTESTS_QIMG /
 * QIOTESTS_QIO / QIOTESTS_QNBD environment variable, the nearest node_modules/.bin (the monorepo), PATH.
 */
export function qcowkitDriver(paths: QcowkitPaths = {}, env: NodeJS.ProcessEnv = process.env): Driver {
  const locate = (role: ToolRole, program: string, explicit: string | undefined, envName: string): ToolCommand => {
    const given = explicit ?? env[envName];
    if (given) return tool(requireProgram(role, isAbsolute(given) ? given : resolve(given), env), [program]);
    const found = findInAncestorBins(program) ?? findProgram(program, env);
    if (!found) {
      throw new DriverError(`${program} not found: pass --${program} PATH or set ${envName}, or put it on PATH`);
    }
    return tool(found, [program]);
  };
  return {
    name: "qcowkit",
    img: locate("img", "qimg", paths.qimg, "QIOTESTS_QIMG"),
    io: locate("io", "qio", paths.qio, "QIOTESTS_QIO"),
    nbd: locate("nbd", "qnbd", paths.qnbd, "QIOTESTS_QNBD"),
  };
}

export interface CustomCommands {
  readonly img?: string;
  readonly io?: string;
  readonly nbd?: string;
}

const INTERPRETERS = new Set(["node", "python", "python3", "sh", "bash", "env", "perl", "ruby"]);

/** Any other implementation, named by its commands; the NBD server is optional. */
export function customDriver(commands: CustomCommands, env: NodeJS.ProcessEnv = process.env, name = "custom"): Driver {
  const make = (role: ToolRole, command: string): ToolCommand => {
    const [first, ...rest] = commandWords(command);
    if (first === undefined) throw new DriverError(`the command for ${NEUTRAL_NAMES[role]} is empty`);
    const program = requireProgram(role, first, env);
    // "node ./my-img.js": the tool names itself after the script, not the interpreter.
    const script = INTERPRETERS.has(basename(first)) && rest[0] ? rest[0] : first;
    const names = [basename(script), basename(script).replace(/\.[a-z]+$/, "")];
    return { argv: [program, ...rest], names: [...new Set(names)] };
  };
  if (!commands.img || !commands.io) throw new DriverError("--impl custom needs --img CMD and --io CMD");
  return {
    name,
    img: make("img", commands.img),
    io: make("io", commands.io),
    ...(commands.nbd && { nbd: make("nbd", commands.nbd) }),
  };
}

/** [printed name, neutral name] pairs for the output filter. */
export function programNamePairs(driver: Driver): [string, string][] {
  const pairs: [string, string][] = [];
  for (const role of ["img", "io", "nbd"] as const) {
    const t = driver[role];
    if (t) for (const n of t.names) pairs.push([n, NEUTRAL_NAMES[role]]);
  }
  return pairs;
}
