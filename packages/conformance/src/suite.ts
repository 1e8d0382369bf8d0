import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { basename, join } from "node:path";
import type { CaseDefinition } from "./case-file";
import { unifiedDiff } from "./diff";
import type { Driver } from "./drivers";
import { runCase, type CaseTimeouts } from "./run-case";

export type CaseStatus = "pass" | "fail" | "not run";

export interface CaseResult {
  readonly id: string;
  readonly title: string;
  readonly status: CaseStatus;
  /** Why a case failed or did not run, or a note on a pass (golden written, documented difference). */
  readonly reason?: string;
  readonly diff?: string;
  readonly output?: string;
}

export interface SuiteOptions {
  readonly driver: Driver;
  readonly cases: readonly CaseDefinition[];
  readonly goldenDir: string;
  readonly updateGolden?: boolean;
  readonly jobs?: number;
  /** Where case directories are made; default /dev/shm when writable, else the OS temp directory. */
  readonly workDir?: string;
  readonly keep?: boolean;
  readonly timeouts?: CaseTimeouts;
  readonly env?: NodeJS.ProcessEnv;
  /** Called once per case, in case order, as soon as the result and all earlier ones are known. */
  readonly onResult?: (result: CaseResult) => void;
}

export interface SuiteResult {
  readonly results: readonly CaseResult[];
  readonly passed: number;
  readonly failed: number;
  readonly notRun: number;
  /** The run's scratch directory, kept only with `keep`. */
  readonly workRoot: string;
}

/** The golden file a case is judged by under a driver: NNN.<impl>.out for a documented difference. */
export function goldenPath(goldenDir: string, def: CaseDefinition, driverName: string): string {
  return join(goldenDir, def.differences.has(driverName) ? `${def.id}.${driverName}.out` : `${def.id}.out`);
}

/** Why a case cannot run under this driver, if it cannot. */
export function notRunReason(def: CaseDefinition, driver: Driver): string | undefined {
  if (def.requires.includes("nbd") && !driver.nbd) return `needs an NBD server; the ${driver.name} driver has none`;
  return undefined;
}

function defaultWorkDir(): string {
  try {
    accessSync("/dev/shm", constants.W_OK);
    return "/dev/shm";
  } catch {
    return tmpdir();
  }
}

async function judge(def: CaseDefinition, opts: SuiteOptions, workRoot: string): Promise<CaseResult> {
  const base = { id: def.id, title: def.title };
  const skip = notRunReason(def, opts.driver);
  if (skip) return { ...base, status: "not run", reason: skip };
  const golden = goldenPath(opts.goldenDir, def, opts.driver.name);
  const goldenName = `golden/${basename(golden)}`;
  const difference = def.differences.get(opts.driver.name);
  if (opts.updateGolden && opts.driver.name !== "qemu" && !difference) {
    return { ...base, status: "fail", reason: `${goldenName} records QEMU's behaviour: update it with --impl qemu` };
  }
  let output: string;
  try {
    output = await runCase(def, {
      driver: opts.driver,
      workRoot,
      ...(opts.timeouts && { timeouts: opts.timeouts }),
      ...(opts.keep !== undefined && { keep: opts.keep }),
      ...(opts.env && { env: opts.env }),
    });
  } catch (e) {
    return { ...base, status: "fail", reason: (e as Error).message };
  }
  const note = difference ? { reason: `documented difference: ${difference}` } : {};
  if (opts.updateGolden) {
    const old = existsSync(golden) ? readFileSync(golden, "utf8") : undefined;
    if (old !== output) writeFileSync(golden, output);
    return { ...base, status: "pass", output, ...(old === output ? note : { reason: `wrote ${goldenName}` }) };
  }
  if (!existsSync(golden)) {
    return { ...base, status: "fail", output, reason: `no ${goldenName}; make it with --impl qemu --update-golden` };
  }
  const diff = unifiedDiff(readFileSync(golden, "utf8"), output, goldenName, "output");
  return diff ? { ...base, status: "fail", output, diff, ...note } : { ...base, status: "pass", output, ...note };
}

/** Runs the cases with bounded parallelism and reports them in order. */
export async function runSuite(opts: SuiteOptions): Promise<SuiteResult> {
  const workRoot = mkdtempSync(join(opts.workDir ?? defaultWorkDir(), "qiotests-"));
  const jobs = Math.max(1, opts.jobs ?? Math.min(4, availableParallelism()));
  const results: (CaseResult | undefined)[] = new Array(opts.cases.length).fill(undefined);
  let reported = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const k = next++;
      const def = opts.cases[k];
      if (def === undefined) return;
      results[k] = await judge(def, opts, workRoot);
      for (let r = results[reported]; r !== undefined; r = results[reported]) {
        reported++;
        opts.onResult?.(r);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(jobs, opts.cases.length || 1) }, worker));
  } finally {
    if (!opts.keep) rmSync(workRoot, { recursive: true, force: true });
  }
  const done = results as CaseResult[];
  const count = (s: CaseStatus): number => done.filter((r) => r.status === s).length;
  return { results: done, passed: count("pass"), failed: count("fail"), notRun: count("not run"), workRoot };
}

/** Picks cases by group (-g, any of), excluded group (-x) and explicit ids ("7", "007", "007-name"). */
export function selectCases(
  cases: readonly CaseDefinition[],
  sel: { groups?: readonly string[]; excludeGroups?: readonly string[]; ids?: readonly string[] },
): CaseDefinition[] {
  const wanted = (sel.ids ?? []).map((s) => {
    const m = /^(\d{1,3})(?:-.*)?(?:\.case)?$/.exec(s.replace(/^.*\//, ""));
    if (!m) throw new Error(`not a case number: ${s}`);
    return m[1]!.padStart(3, "0"); // the pattern's first group always takes part
  });
  for (const id of wanted) if (!cases.some((c) => c.id === id)) throw new Error(`no case ${id}`);
  return cases.filter(
    (c) =>
      (wanted.length === 0 || wanted.includes(c.id)) &&
      (!sel.groups?.length || c.groups.some((g) => sel.groups!.includes(g))) &&
      !c.groups.some((g) => sel.excludeGroups?.includes(g)),
  );
}

/** One line per case, then the diff of a failure. */
export function formatResult(r: CaseResult): string {
  const head = `${r.id} ${r.status.padEnd(7)} ${r.title}${r.reason ? ` [${r.reason}]` : ""}`;
  return r.diff ? `${head}\n${r.diff.replace(/^(?=.)/gm, "    ")}` : `${head}\n`;
}

export function formatSummary(s: SuiteResult): string {
  return `${s.passed} passed, ${s.failed} failed${s.notRun ? `, ${s.notRun} not run` : ""}\n`;
}
