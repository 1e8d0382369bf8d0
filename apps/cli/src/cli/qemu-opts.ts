/**
 * QEMU's "-o key=value,key=value" option lists (QemuOpts) as qemu-img 7.2 handles them: several -o are
 * joined with ","; ",," is a literal comma; "key" alone means key=on and "nokey" key=off; the last
 * occurrence of a key wins; "help" or "?" as an element asks for the option list. Values are checked
 * against the option's type when parsed (bool, number, size, string), with QEMU's messages.
 */
import { CliError } from "./errors";
import { parseSize } from "./size";

export type OptType = "string" | "bool" | "number" | "size";

export interface OptDesc {
  name: string;
  type: OptType;
  help: string;
  /** Printed in the "Formatting" line when the option is not given. */
  defaultValue?: string;
}

export interface OptValue {
  name: string;
  /** The text as given (commas unescaped). */
  text: string;
  /** bool: true/false; number and size: a bigint (numbers may be "negative", wrapped to 64 bits). */
  parsed: boolean | bigint | string;
}

/** qemu-img's check on each -o argument: not empty, no leading comma, no unescaped trailing comma. */
export function isValidOptionList(text: string): boolean {
  if (text === "" || text.startsWith(",")) return false;
  let trailing = 0;
  for (let i = text.length; i > 0 && text[i - 1] === ","; i--) trailing++;
  return trailing % 2 === 0;
}

/** Join the -o arguments of one command line, refusing invalid ones as qemu-img does. */
export function accumulateOptions(list: string | undefined, next: string): string {
  if (!isValidOptionList(next)) throw new CliError(`Invalid option list: ${next}`);
  return list === undefined ? next : `${list},${next}`;
}

/** Split an option list into its elements, unescaping ",,". */
export function splitOptionList(text: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === ",") {
      if (text[i + 1] === ",") {
        cur += ",";
        i++;
        continue;
      }
      out.push(cur);
      cur = "";
      continue;
    }
    cur += c;
  }
  out.push(cur);
  return out;
}

export function hasHelpOption(text: string | undefined): boolean {
  if (text === undefined) return false;
  return splitOptionList(text).some((e) => e === "help" || e === "?");
}

function typeLabel(t: OptType): string {
  return t === "string" ? "str" : t === "bool" ? "bool (on/off)" : t === "number" ? "num" : "size";
}

/** The "Supported ... options:" listing (names sorted, as qemu_opts_print_help prints them). */
export function formatHelp(descs: readonly OptDesc[], header: string, trailer: boolean): string {
  const lines = [...descs]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((d) => `  ${`${d.name}=<${typeLabel(d.type)}>`.padEnd(22)} - ${d.help}`);
  let text = `${header}\n${lines.join("\n")}\n`;
  if (trailer) text += "\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n";
  return text;
}

/** Merge option lists: the first definition of a name is kept (qemu_opts_append). */
export function appendDescs(...lists: ReadonlyArray<readonly OptDesc[]>): OptDesc[] {
  const out: OptDesc[] = [];
  for (const list of lists) for (const d of list) if (!out.some((o) => o.name === d.name)) out.push(d);
  return out;
}

const BOOL_TRUE = ["on", "yes", "true", "y"];
const BOOL_FALSE = ["off", "no", "false", "n"];

function parseNumber(name: string, text: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) throw new CliError(`Parameter '${name}' expects a number`);
  const digits = m[2]!;
  let v: bigint;
  if (/^0[xX]/.test(digits)) v = BigInt(digits);
  else if (digits.length > 1 && digits.startsWith("0")) v = BigInt(`0o${digits.slice(1)}`);
  else v = BigInt(digits);
  if (v > (1n << 64n) - 1n) throw new CliError(`Value '${text}' is too large for parameter '${name}'`);
  if (m[1] === "-") v = BigInt.asUintN(64, -v);
  return v;
}

/** Type-check one value (qemu_opt_parse). `onWarning` receives QEMU's deprecation warnings. */
export function parseOptValue(desc: OptDesc, text: string, onWarning?: (w: string) => void): OptValue {
  switch (desc.type) {
    case "bool":
      if (BOOL_TRUE.includes(text)) return { name: desc.name, text, parsed: true };
      if (BOOL_FALSE.includes(text)) return { name: desc.name, text, parsed: false };
      throw new CliError(`Parameter '${desc.name}' expects 'on' or 'off'`);
    case "number":
      return { name: desc.name, text, parsed: parseNumber(desc.name, text) };
    case "size": {
      const r = parseSize(text);
      if (!r.ok) {
        if (r.error === "ERANGE") throw new CliError(`Value '${text}' is out of range for parameter '${desc.name}'`);
        throw new CliError(`Parameter '${desc.name}' expects a non-negative number below 2^64`, {
          hint: "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
        });
      }
      if (r.warning) onWarning?.(r.warning);
      return { name: desc.name, text, parsed: r.value };
    }
    default:
      return { name: desc.name, text, parsed: text };
  }
}

/** A parsed option list against known options: values by name (last one wins). */
export class QemuOpts {
  private readonly values = new Map<string, OptValue>();

  constructor(readonly descs: readonly OptDesc[]) {}

  /** Parse an accumulated -o string (already checked by accumulateOptions). */
  static parse(descs: readonly OptDesc[], text: string | undefined, onWarning?: (w: string) => void): QemuOpts {
    const opts = new QemuOpts(descs);
    if (text === undefined) return opts;
    for (const element of splitOptionList(text)) {
      const eq = element.indexOf("=");
      let name: string;
      let value: string;
      if (eq >= 0) {
        name = element.slice(0, eq);
        value = element.slice(eq + 1);
      } else if (element.startsWith("no")) {
        name = element.slice(2);
        value = "off";
      } else {
        name = element;
        value = "on";
      }
      opts.set(name, value, onWarning);
    }
    return opts;
  }

  set(name: string, text: string, onWarning?: (w: string) => void): void {
    const desc = this.descs.find((d) => d.name === name);
    if (!desc) throw new CliError(`Invalid parameter '${name}'`);
    this.values.delete(name); // keep insertion order = order of the last occurrence
    this.values.set(name, parseOptValue(desc, text, onWarning));
  }

  has(name: string): boolean {
    return this.values.has(name);
  }

  delete(name: string): void {
    this.values.delete(name);
  }

  get(name: string): OptValue | undefined {
    return this.values.get(name);
  }

  string(name: string): string | undefined {
    return this.values.get(name)?.text;
  }

  bool(name: string): boolean | undefined {
    const v = this.values.get(name);
    return v === undefined ? undefined : (v.parsed as boolean);
  }

  /** A number or size option as a bigint (undefined when not given). */
  integer(name: string): bigint | undefined {
    const v = this.values.get(name);
    return v === undefined ? undefined : (v.parsed as bigint);
  }

  /** Names given, in order. */
  names(): string[] {
    return [...this.values.keys()];
  }

  /** qemu_opts_print: every option that is set or has a default, in the order of the option list. */
  print(): string {
    const parts: string[] = [];
    for (const d of this.descs) {
      const v = this.values.get(d.name);
      if (v === undefined) {
        if (d.defaultValue !== undefined) parts.push(`${d.name}=${d.defaultValue}`);
        continue;
      }
      if (d.type === "string") parts.push(`${d.name}=${v.text.replace(/,/g, ",,")}`);
      else if (d.type === "number" || d.type === "size") parts.push(`${d.name}=${BigInt.asIntN(64, v.parsed as bigint)}`);
      else parts.push(`${d.name}=${v.text}`);
    }
    return parts.join(" ");
  }
}
