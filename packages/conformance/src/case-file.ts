import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * A case file is plain text: a header block of `# Key: value` lines, then one step per line.
 *
 *   # Title: what the case shows
 *   # Groups: quick data-file
 *   # Requires: nbd
 *   # Difference qcowkit: why our output deliberately differs (needs golden/NNN.qcowkit.out)
 *
 * Other `#` lines and blank lines are comments. A line ending in a backslash continues on the next line.
 */
export interface CaseStep {
  /** 1-based line number in the case file, for error messages. */
  readonly line: number;
  readonly text: string;
}

export interface CaseDefinition {
  /** Three-digit number, e.g. "007". */
  readonly id: string;
  readonly fileName: string;
  readonly title: string;
  readonly groups: readonly string[];
  readonly requires: readonly string[];
  /** Implementation name -> explanation of a documented, intentional difference. */
  readonly differences: ReadonlyMap<string, string>;
  readonly steps: readonly CaseStep[];
}

export class CaseFileError extends Error {}

const CASE_FILE = /^(\d{3})-[a-z0-9-]+\.case$/;
const KNOWN_REQUIREMENTS = new Set(["nbd"]);

export function parseCaseFile(fileName: string, text: string): CaseDefinition {
  const match = CASE_FILE.exec(fileName);
  if (!match) throw new CaseFileError(`${fileName}: case files are named NNN-some-name.case`);
  const id = match[1]!; // the pattern's only group always takes part
  let title = "";
  let groups: string[] = [];
  let requires: string[] = [];
  const differences = new Map<string, string>();
  const steps: CaseStep[] = [];
  const lines = text.split("\n");
  let inHeader = true;
  for (let n = 0; n < lines.length; n++) {
    const raw = lines[n]!;
    const trimmed = raw.trim();
    const header = /^#\s*(Title|Groups|Requires|Difference)(?:\s+([a-z0-9-]+))?:\s*(.*)$/.exec(trimmed);
    if (inHeader && header) {
      const [, key, arg, value = ""] = header;
      if (key === "Title" && !arg) title = value;
      else if (key === "Groups" && !arg) groups = value.split(/\s+/).filter(Boolean);
      else if (key === "Requires" && !arg) requires = value.split(/\s+/).filter(Boolean);
      else if (key === "Difference" && arg && value) differences.set(arg, value);
      else throw new CaseFileError(`${fileName}:${n + 1}: unknown header line: ${trimmed}`);
      continue;
    }
    if (trimmed === "" || trimmed.startsWith("#")) {
      if (trimmed === "" && (title || groups.length)) inHeader = false;
      continue;
    }
    inHeader = false;
    let stepText = trimmed;
    const first = n;
    while (stepText.endsWith("\\") && n + 1 < lines.length) {
      n++;
      stepText = `${stepText.slice(0, -1)} ${lines[n]!.trim()}`;
    }
    steps.push({ line: first + 1, text: stepText });
  }
  if (!title) throw new CaseFileError(`${fileName}: missing "# Title:" line`);
  if (groups.length === 0) throw new CaseFileError(`${fileName}: missing "# Groups:" line`);
  for (const r of requires) {
    if (!KNOWN_REQUIREMENTS.has(r)) throw new CaseFileError(`${fileName}: unknown requirement "${r}"`);
  }
  if (steps.length === 0) throw new CaseFileError(`${fileName}: no steps`);
  return { id, fileName, title, groups, requires, differences, steps };
}

/** Loads every case in a directory, sorted by number; duplicate numbers are an error. */
export function loadCases(casesDir: string): CaseDefinition[] {
  const names = readdirSync(casesDir)
    .filter((f) => f.endsWith(".case"))
    .sort();
  const cases = names.map((f) => parseCaseFile(f, readFileSync(join(casesDir, f), "utf8")));
  const seen = new Set<string>();
  for (const c of cases) {
    if (seen.has(c.id)) throw new CaseFileError(`two cases are numbered ${c.id}`);
    seen.add(c.id);
  }
  return cases;
}
