import { parseJson, printJson, type JsonValue } from "./json-canon";

/**
 * Output filters, in the spirit of qemu-iotests' common.filter: they remove what may legitimately differ
 * between runs, machines and implementations (paths, timings, dates, disk usage, program names) and nothing
 * else.
 */

export interface FilterContext {
  /** Directories to print as TEST_DIR (the case directory, and its real path if that differs). */
  readonly testDirs: readonly string[];
  /** [name as printed by the tool, neutral name], e.g. ["qimg", "qemu-img"]. */
  readonly programNames: readonly (readonly [string, string])[];
}

const escapeRegExp = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

export function filterTestDir(text: string, testDirs: readonly string[]): string {
  const dirs = [...new Set(testDirs)].sort((a, b) => b.length - a.length);
  for (const dir of dirs) text = text.split(dir).join("TEST_DIR");
  return text;
}

/** Replaces the implementation's program names (full path or base name) with the neutral name. */
export function filterProgramNames(text: string, names: readonly (readonly [string, string])[]): string {
  const sorted = [...names].sort((a, b) => b[0].length - a[0].length);
  for (const [name, neutral] of sorted) {
    if (name === neutral) continue;
    text = text.replace(new RegExp(`(?<![\\w.-])${escapeRegExp(name)}(?![\\w-])`, "g"), neutral);
  }
  return text;
}

/** qemu-io's statistics line: "64 KiB, 1 ops; 00.00 sec (114.7 MiB/sec and 1835.8 ops/sec)". */
export function filterTimings(text: string): string {
  return text.replace(
    /(\d+ ops); [0-9:.]+(?: sec)? \([^()\n]*\/sec and [^()\n]* ops\/sec\)/g,
    "$1; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)",
  );
}

/** Disk usage depends on the file system: `disk size:` in qemu-img info. */
export function filterDiskSize(text: string): string {
  return text.replace(/^(\s*disk size:) .*$/gm, "$1 SIZE");
}

/** Snapshot creation dates in `snapshot -l` and `info` tables (same width, so columns stay aligned). */
export function filterDates(text: string): string {
  return text.replace(/\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\b/g, "yyyy-mm-dd hh:mm:ss");
}

export function filterVersion(text: string): string {
  return text.replace(/^(\S+ version) \d+\.\d+\.\d+.*$/gm, "$1 VERSION");
}

/** Every global filter, in order. */
export function filterOutput(text: string, ctx: FilterContext): string {
  let out = text.replace(/\r\n/g, "\n");
  out = filterTestDir(out, ctx.testDirs);
  out = filterProgramNames(out, ctx.programNames);
  out = filterTimings(out);
  out = filterDiskSize(out);
  out = filterDates(out);
  out = filterVersion(out);
  if (out !== "" && !out.endsWith("\n")) out += "\n";
  return out;
}

const REDACTED_JSON_KEYS = new Map([
  ["actual-size", "SIZE"],
  ["date-sec", "DATE"],
  ["date-nsec", "DATE"],
]);

/**
 * Canonical JSON (sorted keys, fixed layout) with file-system and clock values redacted. Text that is not a
 * single JSON document (for example an error message) is returned unchanged.
 */
export function filterJson(text: string): string {
  const v = parseJson(text);
  if (!v) return text;
  const redact = (key: string, x: JsonValue): JsonValue => {
    const value = REDACTED_JSON_KEYS.get(key);
    return value === undefined ? x : { kind: "string", value };
  };
  return `${printJson(v, redact)}\n`;
}

/** Does this command line ask for JSON output (`--output=json` or `--output json`)? */
export function wantsJson(argv: readonly string[]): boolean {
  return argv.some((a, i) => a === "--output=json" || (a === "--output" && argv[i + 1] === "json"));
}

export class FilterError extends Error {}

/** A filter after `|` in a step: grep [-v] REGEX, sort, head N, tail N, json. */
export function applyPipeFilter(text: string, words: readonly string[]): string {
  const [name, ...args] = words;
  const lines = text === "" ? [] : text.replace(/\n$/, "").split("\n");
  const join = (ls: string[]): string => (ls.length ? `${ls.join("\n")}\n` : "");
  switch (name) {
    case "grep": {
      const invert = args[0] === "-v";
      const pattern = invert ? args[1] : args[0];
      if (pattern === undefined || args.length !== (invert ? 2 : 1)) throw new FilterError("usage: grep [-v] REGEX");
      const re = new RegExp(pattern);
      return join(lines.filter((l) => re.test(l) !== invert));
    }
    case "sort":
      if (args.length) throw new FilterError("usage: sort");
      return join([...lines].sort());
    case "head":
    case "tail": {
      const n = Number(args[0]);
      if (args.length !== 1 || !Number.isInteger(n) || n < 0) throw new FilterError(`usage: ${name} N`);
      return join(name === "head" ? lines.slice(0, n) : lines.slice(Math.max(0, lines.length - n)));
    }
    case "json":
      if (args.length) throw new FilterError("usage: json");
      return filterJson(text);
    default:
      throw new FilterError(`unknown filter "${name ?? ""}"`);
  }
}
