/**
 * GNU getopt_long as qemu-img and qemu-io use it: short options (clustered, "-fqcow2" or "-f qcow2"),
 * long options ("--output=json" or "--output json", unique prefixes accepted), permutation of operands
 * (options may follow file names) unless `posix`, "--" ends the options. Errors are reported the way
 * QEMU reports them: it names `argv[optind - 1]`, which for a bad short option in the middle of a cluster
 * is the previous argument (GNU getopt's exchange of operands is reproduced for that).
 */
import { UsageError } from "./errors";

export interface LongOption {
  name: string;
  hasArg: boolean;
  /** The key reported for this option (a short letter, or the long name). */
  key: string;
}

export interface ParsedOption {
  key: string;
  value: string | undefined;
}

export interface GetoptResult {
  options: ParsedOption[];
  operands: string[];
}

export interface GetoptSpec {
  /** Short options: letters, a ":" after a letter means it takes an argument. */
  short: string;
  long?: LongOption[];
  /** Stop at the first operand (getopt's "+" ordering). */
  posix?: boolean;
  /** argv[0] as QEMU sees it (the command name): QEMU names it in some messages. */
  argv0?: string;
  /** How errors are worded: qemu-img ("unrecognized option '-x'") or qemu-io ("cmd: invalid option -- 'x'"). */
  style?: "qemu-img" | { command: string };
}

/** Parse `args` (without the program or command name). */
export function getopt(args: readonly string[], spec: GetoptSpec): GetoptResult {
  // argv[0] is the command name in QEMU's calls; keep that shape so argv[optind - 1] names what QEMU names.
  const argv = [spec.argv0 ?? "", ...args];
  const shortArgs = parseShortSpec(spec.short);
  const longs = spec.long ?? [];
  const options: ParsedOption[] = [];
  let optind = 1;
  let firstNonopt = 1;
  let lastNonopt = 1;
  let nextchar = "";
  const isOperand = (s: string) => s === "-" || !s.startsWith("-") || s === "";

  const exchange = () => {
    // Move the operands [firstNonopt, lastNonopt) after the options [lastNonopt, optind).
    const operands = argv.slice(firstNonopt, lastNonopt);
    const opts = argv.slice(lastNonopt, optind);
    argv.splice(firstNonopt, optind - firstNonopt, ...opts, ...operands);
    firstNonopt += optind - lastNonopt;
    lastNonopt = optind;
  };

  const fail = (kind: "unrecognized" | "missing" | "noarg", detail: { letter?: string; arg: string }): never => {
    if (typeof spec.style === "object") {
      // glibc's own messages, as programs without ":" in their option string get them.
      const c = spec.style.command;
      const long = detail.arg.split("=")[0]!;
      let message: string;
      if (kind === "missing") {
        message = detail.letter !== undefined ? `option requires an argument -- '${detail.letter}'` : `option '${long}' requires an argument`;
      } else if (kind === "noarg") {
        message = `option '${long}' doesn't allow an argument`;
      } else {
        message = detail.letter !== undefined ? `invalid option -- '${detail.letter}'` : `unrecognized option '${detail.arg}'`;
      }
      throw new UsageError(`${c}: ${message}`, { command: c });
    }
    const named = argv[optind - 1] ?? "";
    throw new UsageError(kind === "missing" ? `missing argument for option '${named}'` : `unrecognized option '${named}'`);
  };

  for (;;) {
    if (nextchar === "") {
      if (lastNonopt > optind) lastNonopt = optind;
      if (firstNonopt > optind) firstNonopt = optind;
      if (!spec.posix) {
        if (firstNonopt !== lastNonopt && lastNonopt !== optind) exchange();
        else if (lastNonopt !== optind) firstNonopt = optind;
        while (optind < argv.length && isOperand(argv[optind]!)) optind++;
        lastNonopt = optind;
      }
      if (optind < argv.length && argv[optind] === "--") {
        optind++;
        if (firstNonopt !== lastNonopt && lastNonopt !== optind) exchange();
        else if (firstNonopt === lastNonopt) firstNonopt = optind;
        lastNonopt = argv.length;
        optind = argv.length;
      }
      if (optind >= argv.length) {
        if (firstNonopt !== lastNonopt) optind = firstNonopt;
        break;
      }
      if (isOperand(argv[optind]!)) {
        if (spec.posix) break;
        optind++;
        continue;
      }
      const arg = argv[optind]!;
      if (arg.startsWith("--")) {
        optind++;
        const body = arg.slice(2);
        const eq = body.indexOf("=");
        const name = eq < 0 ? body : body.slice(0, eq);
        const match = findLong(longs, name);
        if (match === undefined) fail("unrecognized", { arg });
        const opt = match!;
        let value: string | undefined;
        if (eq >= 0) {
          if (!opt.hasArg) fail("noarg", { arg });
          value = body.slice(eq + 1);
        } else if (opt.hasArg) {
          if (optind >= argv.length) fail("missing", { arg });
          value = argv[optind++]!;
        }
        options.push({ key: opt.key, value });
        continue;
      }
      nextchar = arg.slice(1);
    }
    const letter = nextchar[0]!;
    nextchar = nextchar.slice(1);
    if (nextchar === "") optind++;
    const takesArg = shortArgs.get(letter);
    if (takesArg === undefined || letter === ":") fail("unrecognized", { letter, arg: `-${letter}` });
    if (takesArg) {
      let value: string;
      if (nextchar !== "") {
        value = nextchar;
        nextchar = "";
        optind++;
      } else {
        if (optind >= argv.length) fail("missing", { letter, arg: `-${letter}` });
        value = argv[optind++]!;
      }
      options.push({ key: letter, value });
    } else {
      options.push({ key: letter, value: undefined });
    }
  }
  return { options, operands: argv.slice(optind) };
}

function parseShortSpec(spec: string): Map<string, boolean> {
  const out = new Map<string, boolean>();
  const s = spec.replace(/^[+:]+/, "");
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const takesArg = s[i + 1] === ":";
    out.set(c, takesArg);
    if (takesArg) i++;
  }
  return out;
}

/** Exact name, or a prefix of exactly one option (or of several that behave the same). */
function findLong(longs: readonly LongOption[], name: string): LongOption | undefined {
  if (name === "") return undefined;
  const exact = longs.find((l) => l.name === name);
  if (exact) return exact;
  const prefixed = longs.filter((l) => l.name.startsWith(name));
  if (prefixed.length === 0) return undefined;
  const first = prefixed[0]!;
  return prefixed.every((l) => l.key === first.key && l.hasArg === first.hasArg) ? first : undefined;
}
