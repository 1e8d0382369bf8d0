import { mkdirSync, realpathSync, rmSync } from "node:fs";
import { join } from "node:path";
import { isBuiltin, runBuiltin, type BuiltinContext } from "./builtins";
import type { CaseDefinition, CaseStep } from "./case-file";
import { NEUTRAL_NAMES, programNamePairs, type Driver, type ToolRole } from "./drivers";
import { applyPipeFilter, filterOutput, filterJson, wantsJson, type FilterContext } from "./filters";
import { startNbdServer, stopNbdServer, type NbdServer } from "./nbd-server";
import { runProcess } from "./process";

/** QEMU's message when its PBKDF2 iteration benchmark measured no CPU time. */
const LUKS_BENCHMARK_FLAKE = "Unable to get accurate CPU usage";
import { PIPE, quoteWords, splitWords, type Token } from "./words";

/** How long one tool invocation may take, and how long NBD start/stop may wait. */
export interface CaseTimeouts {
  readonly stepMs: number;
  readonly nbdMs: number;
}

export const DEFAULT_TIMEOUTS: CaseTimeouts = { stepMs: 120_000, nbdMs: 10_000 };

export class CaseStepError extends Error {}

const TOOL_VARIABLES: Record<string, ToolRole> = { QEMU_IMG: "img", QEMU_IO: "io", QEMU_NBD: "nbd" };
/** Stand-in for a tool variable during word splitting; replaced by the driver's argv afterwards. */
const toolMarker = (role: ToolRole): string => `\u0000tool:${role}\u0000`;

const ASYNC_BUILTINS = new Set(["nbd_start", "nbd_stop"]);

function variables(testDir: string) {
  return {
    TEST_DIR: testDir,
    TEST_IMG: `${testDir}/t.qcow2`,
    IMGFMT: "qcow2",
    SOCK: `${testDir}/nbd.sock`,
    NBD_URL: `nbd+unix:///?socket=${testDir}/nbd.sock`,
  };
}

function lookupIn(vars: Readonly<Record<string, string>>, tools: (role: ToolRole) => string): (name: string) => string {
  return (name) => {
    const role = Object.hasOwn(TOOL_VARIABLES, name) ? TOOL_VARIABLES[name] : undefined;
    if (role !== undefined) return tools(role);
    const value = Object.hasOwn(vars, name) ? vars[name] : undefined;
    if (value !== undefined) return value;
    throw new CaseStepError(`unknown variable $${name}`);
  };
}

/** A command or filter: a name and its arguments. */
type Words = [string, ...string[]];

interface ParsedStep {
  readonly command: Words;
  readonly filters: Words[];
}

function splitPipeline(tokens: Token[]): ParsedStep {
  let current: string[] = [];
  const segments = [current];
  for (const t of tokens) {
    if (t === PIPE) segments.push((current = []));
    else current.push(t);
  }
  const [command, ...filters] = segments.map(([name, ...args]): Words => {
    if (name === undefined) throw new CaseStepError("empty command or filter around |");
    return [name, ...args];
  });
  if (command === undefined) throw new CaseStepError("empty step");
  return { command, filters };
}

/** The step as the transcript shows it: tools by their neutral names, paths under TEST_DIR. */
function displayStep(step: CaseStep): string {
  const tokens = splitWords(step.text, lookupIn(variables("TEST_DIR"), (role) => NEUTRAL_NAMES[role]));
  const { command, filters } = splitPipeline(tokens);
  return [command, ...filters].map(quoteWords).join(" | ");
}

/** Checks every step's syntax and command name before anything runs. */
export function validateCase(def: CaseDefinition): void {
  for (const step of def.steps) {
    try {
      const tokens = splitWords(step.text, lookupIn(variables("/x"), toolMarker));
      const { command, filters } = splitPipeline(tokens);
      const name = command[0];
      if ([...command.slice(1), ...filters.flat()].some((w) => w.includes("\u0000"))) {
        throw new CaseStepError("$QEMU_IMG, $QEMU_IO and $QEMU_NBD may only name the command of a step");
      }
      if (!name.startsWith("\u0000tool:") && !isBuiltin(name) && !ASYNC_BUILTINS.has(name)) {
        throw new CaseStepError(`unknown command "${name}"`);
      }
      for (const f of filters) applyPipeFilter("", f);
    } catch (e) {
      throw new CaseStepError(`${def.fileName}:${step.line}: ${(e as Error).message}`);
    }
  }
}

export interface CaseRunOptions {
  readonly driver: Driver;
  /** Parent directory; the case runs in a fresh subdirectory named after its id. */
  readonly workRoot: string;
  readonly timeouts?: CaseTimeouts;
  readonly keep?: boolean;
  readonly env?: NodeJS.ProcessEnv;
}

/** Runs every step of a case and returns the filtered transcript. */
export async function runCase(def: CaseDefinition, opts: CaseRunOptions): Promise<string> {
  validateCase(def);
  const timeouts = opts.timeouts ?? DEFAULT_TIMEOUTS;
  const testDir = join(opts.workRoot, def.id);
  const scratch = join(opts.workRoot, `${def.id}.scratch`);
  rmSync(testDir, { recursive: true, force: true });
  mkdirSync(testDir, { recursive: true });
  mkdirSync(scratch, { recursive: true });
  const filterCtx: FilterContext = {
    testDirs: [testDir, realpathSync(testDir)],
    programNames: programNamePairs(opts.driver),
  };
  const env: NodeJS.ProcessEnv = { ...(opts.env ?? process.env), LC_ALL: "C", LANG: "C" };
  const vars = variables(testDir);
  const builtinCtx: BuiltinContext = { cwd: testDir, testDir };
  let nbd: NbdServer | undefined;
  let logCounter = 0;
  const out: string[] = [`QA output created by ${def.id}\n`];

  const tool = (role: ToolRole): readonly string[] => {
    const t = opts.driver[role];
    if (!t) throw new CaseStepError(`the ${opts.driver.name} driver has no ${NEUTRAL_NAMES[role]} command`);
    return t.argv;
  };

  /** Runs one command; the output comes back filtered. */
  const execute = async (command: Words): Promise<{ output: string; exitCode: number }> => {
    const role = /^\u0000tool:(img|io|nbd)\u0000$/.exec(command[0])?.[1] as ToolRole | undefined;
    if (role) {
      const argv = [...tool(role), ...command.slice(1)];
      const run = () =>
        runProcess(argv, {
          cwd: builtinCtx.cwd,
          env,
          timeoutMs: timeouts.stepMs,
          logPath: join(scratch, `step-${logCounter++}.log`),
        });
      let r = await run();
      // QEMU's LUKS key-slot benchmark fails when the thread's CPU clock has not moved (a coarse or busy machine)
      // before it writes anything; that says nothing about the image, so the step is tried again a few times.
      for (let attempt = 1; attempt < 5 && r.exitCode !== 0 && r.stderr.includes(LUKS_BENCHMARK_FLAKE); attempt++) {
        r = await run();
      }
      const note = r.timedOut ? `[killed after ${timeouts.stepMs / 1000} s]\n` : "";
      // stdout, then stderr. They are not interleaved: how a tool buffers stdout when it is not a terminal
      // would decide the order, and that differs between implementations without meaning anything.
      let stdout = filterOutput(r.stdout, filterCtx);
      if (wantsJson(command)) stdout = filterJson(stdout);
      return { output: stdout + filterOutput(r.stderr + note, filterCtx), exitCode: r.exitCode };
    }
    if (command[0] === "nbd_start") {
      if (nbd) return { output: "nbd_start: a server is already running\n", exitCode: 1 };
      if (!command.includes("-t") && !command.includes("--persistent")) {
        // The readiness probe is a client; a server that is not persistent would stop after it.
        return { output: "nbd_start: the server must be persistent (-t)\n", exitCode: 1 };
      }
      const started = await startNbdServer([...tool("nbd"), "-k", vars.SOCK, ...command.slice(1)], {
        cwd: builtinCtx.cwd,
        env,
        socketPath: vars.SOCK,
        logPath: join(scratch, "nbd-server.log"),
        timeoutMs: timeouts.nbdMs,
      });
      nbd = started.server;
      return started.error
        ? { output: filterOutput(`nbd_start: ${started.error}\n`, filterCtx), exitCode: 1 }
        : { output: "", exitCode: 0 };
    }
    if (command[0] === "nbd_stop") {
      if (!nbd) return { output: "nbd_stop: no server is running\n", exitCode: 1 };
      const stopped = await stopNbdServer(nbd, timeouts.nbdMs);
      nbd = undefined;
      rmSync(vars.SOCK, { force: true });
      return { output: filterOutput(stopped.output, filterCtx), exitCode: stopped.status };
    }
    const r = runBuiltin(command[0], command.slice(1), builtinCtx);
    return { output: filterOutput(r.output, filterCtx), exitCode: r.exitCode };
  };

  try {
    for (const step of def.steps) {
      const { command, filters } = splitPipeline(splitWords(step.text, lookupIn(vars, toolMarker)));
      const isEcho = command[0] === "echo";
      if (!isEcho) out.push(`$ ${displayStep(step)}\n`);
      const r = await execute(command);
      let text = r.output;
      for (const f of filters) text = applyPipeFilter(text, f);
      out.push(text);
      if (r.exitCode !== 0) out.push(`[exit ${r.exitCode}]\n`);
    }
  } finally {
    if (nbd) await stopNbdServer(nbd, timeouts.nbdMs);
    rmSync(scratch, { recursive: true, force: true });
    if (!opts.keep) rmSync(testDir, { recursive: true, force: true });
  }
  return out.join("");
}
