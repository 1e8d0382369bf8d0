import { fileURLToPath } from "node:url";
import { loadCases } from "./case-file";
import { customDriver, qcowkitDriver, qemuDriver, type Driver } from "./drivers";
import { DEFAULT_TIMEOUTS } from "./run-case";
import { formatResult, formatSummary, runSuite, selectCases } from "./suite";

export const PACKAGE_CASES_DIR = fileURLToPath(new URL("../cases", import.meta.url));
export const PACKAGE_GOLDEN_DIR = fileURLToPath(new URL("../golden", import.meta.url));

const USAGE = `Usage: qiotests [OPTIONS] [CASE...]

Runs qcow2 conformance cases against an implementation and compares each transcript with its golden file.

  --impl qemu|qcowkit|custom   implementation to judge (default qcowkit)
  --qimg PATH --qio PATH --qnbd PATH
                               qcowkit tools (else QIOTESTS_QIMG/QIO/QNBD, node_modules/.bin, PATH)
  --img CMD --io CMD [--nbd CMD]
                               commands of a custom implementation (qemu-img, qemu-io, qemu-nbd compatible)
  -g, --group GROUP            run only cases in GROUP (repeatable)
  -x, --exclude GROUP          skip cases in GROUP (repeatable)
  --update-golden              write the transcripts as golden files (QEMU only, or a documented difference)
  -j, --jobs N                 cases run in parallel (default min(4, CPUs))
  --timeout SECONDS            limit for one tool invocation (default ${DEFAULT_TIMEOUTS.stepMs / 1000})
  --keep                       keep the case directories and print where they are
  --cases DIR --golden DIR     use other case and golden directories
  --list                       list the cases with their groups and exit
  -h, --help                   this help

Exit status: 0 when no case failed, 1 when one did, 2 for a usage error.
`;

class UsageError extends Error {}

interface CliOptions {
  impl: string;
  qimg?: string;
  qio?: string;
  qnbd?: string;
  img?: string;
  io?: string;
  nbd?: string;
  groups: string[];
  exclude: string[];
  ids: string[];
  updateGolden: boolean;
  jobs?: number;
  timeoutMs?: number;
  keep: boolean;
  list: boolean;
  help: boolean;
  casesDir: string;
  goldenDir: string;
}

export function parseArgs(argv: readonly string[]): CliOptions {
  const o: CliOptions = {
    impl: "qcowkit",
    groups: [],
    exclude: [],
    ids: [],
    updateGolden: false,
    keep: false,
    list: false,
    help: false,
    casesDir: PACKAGE_CASES_DIR,
    goldenDir: PACKAGE_GOLDEN_DIR,
  };
  const valued = new Set([
    "--impl", "--qimg", "--qio", "--qnbd", "--img", "--io", "--nbd", "-g", "--group", "-x", "--exclude",
    "-j", "--jobs", "--timeout", "--cases", "--golden",
  ]);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i]!;
    let value: string | undefined;
    const eq = arg.startsWith("--") ? arg.indexOf("=") : -1;
    if (eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (valued.has(arg) && value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
    } else if (!valued.has(arg) && value !== undefined) {
      throw new UsageError(`${arg} takes no value`);
    }
    const option = arg;
    /** The value of an option that takes one (present: checked above). */
    const given = (): string => {
      if (value === undefined) throw new UsageError(`${option} needs a value`);
      return value;
    };
    const positive = (what: string): number => {
      const n = Number(given());
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`${what} must be a positive integer`);
      return n;
    };
    switch (arg) {
      case "--impl": o.impl = given(); break;
      case "--qimg": o.qimg = given(); break;
      case "--qio": o.qio = given(); break;
      case "--qnbd": o.qnbd = given(); break;
      case "--img": o.img = given(); break;
      case "--io": o.io = given(); break;
      case "--nbd": o.nbd = given(); break;
      case "-g": case "--group": o.groups.push(given()); break;
      case "-x": case "--exclude": o.exclude.push(given()); break;
      case "-j": case "--jobs": o.jobs = positive("--jobs"); break;
      case "--timeout": o.timeoutMs = positive("--timeout") * 1000; break;
      case "--cases": o.casesDir = given(); break;
      case "--golden": o.goldenDir = given(); break;
      case "--update-golden": o.updateGolden = true; break;
      case "--keep": o.keep = true; break;
      case "--list": o.list = true; break;
      case "-h": case "--help": o.help = true; break;
      default:
        if (arg.startsWith("-")) throw new UsageError(`unknown option ${arg}`);
        o.ids.push(arg);
    }
  }
  if (!["qemu", "qcowkit", "custom"].includes(o.impl)) throw new UsageError(`unknown implementation "${o.impl}"`);
  if (o.impl !== "custom" && (o.img || o.io || o.nbd)) throw new UsageError("--img, --io and --nbd go with --impl custom");
  if (o.impl !== "qcowkit" && (o.qimg || o.qio || o.qnbd)) throw new UsageError("--qimg, --qio and --qnbd go with --impl qcowkit");
  return o;
}

export function makeDriver(o: CliOptions, env: NodeJS.ProcessEnv = process.env): Driver {
  if (o.impl === "qemu") return qemuDriver(env);
  // The options carry the custom commands (img, io, nbd) and qcowkit's paths (qimg, qio, qnbd) by those names.
  if (o.impl === "custom") return customDriver(o, env);
  return qcowkitDriver(o, env);
}

export interface CliIo {
  write(text: string): void;
  error(text: string): void;
}

const stdio: CliIo = {
  write: (t) => process.stdout.write(t),
  error: (t) => process.stderr.write(t),
};

/** The qiotests command; returns the exit status. */
export async function main(argv: readonly string[], io: CliIo = stdio): Promise<number> {
  try {
    const o = parseArgs(argv);
    if (o.help) {
      io.write(USAGE);
      return 0;
    }
    const cases = selectCases(loadCases(o.casesDir), { groups: o.groups, excludeGroups: o.exclude, ids: o.ids });
    if (o.list) {
      for (const c of cases) io.write(`${c.id} ${c.title} [${c.groups.join(" ")}]\n`);
      return 0;
    }
    if (cases.length === 0) throw new UsageError("no case matches the selection");
    const driver = makeDriver(o);
    const summary = await runSuite({
      driver,
      cases,
      goldenDir: o.goldenDir,
      updateGolden: o.updateGolden,
      ...(o.jobs !== undefined && { jobs: o.jobs }),
      keep: o.keep,
      ...(o.timeoutMs && { timeouts: { ...DEFAULT_TIMEOUTS, stepMs: o.timeoutMs } }),
      onResult: (r) => io.write(formatResult(r)),
    });
    if (o.keep) io.write(`case directories kept in ${summary.workRoot}\n`);
    io.write(formatSummary(summary));
    return summary.failed > 0 ? 1 : 0;
  } catch (e) {
    io.error(`qiotests: ${(e as Error).message}\n`);
    if (e instanceof UsageError) io.error("Try 'qiotests --help'.\n");
    return 2;
  }
}
