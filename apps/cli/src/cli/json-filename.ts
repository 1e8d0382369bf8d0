/**
 * `json:{...}` filenames: a whole block node description in QEMU's JSON (which also takes single-quoted
 * strings), flattened to the dotted keys of --image-opts ("file.filename", "data-file.inject-error.0.event").
 */
import { CliError } from "./errors";

type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** Parse QEMU's JSON dialect: standard JSON plus '...' strings. */
export function parseQemuJson(text: string): Json {
  let i = 0;
  const fail = (): never => {
    throw new CliError(`Could not parse JSON: ${i >= text.length ? "Expecting value" : `Invalid JSON syntax`}`);
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i]!)) i++;
  };
  const value = (): Json => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: { [key: string]: Json } = {};
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"' && text[i] !== "'") fail();
        const key = string();
        ws();
        if (text[i++] !== ":") fail();
        obj[key] = value();
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") {
          i++;
          return obj;
        } else fail();
      }
    }
    if (c === "[") {
      i++;
      const arr: Json[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") {
          i++;
          return arr;
        } else fail();
      }
    }
    if (c === '"' || c === "'") return string();
    const m = /^(?:true|false|null|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)/.exec(text.slice(i));
    if (!m) return fail();
    i += m[0].length;
    return m[0] === "true" ? true : m[0] === "false" ? false : m[0] === "null" ? null : Number(m[0]);
  };
  const string = (): string => {
    const quote = text[i++];
    let out = "";
    while (i < text.length && text[i] !== quote) {
      if (text[i] === "\\") {
        const e = text[i + 1];
        const map: Record<string, string> = { n: "\n", t: "\t", r: "\r", b: "\b", f: "\f", "/": "/", "\\": "\\", '"': '"', "'": "'" };
        if (e === "u") {
          out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
          i += 6;
        } else if (e !== undefined && map[e] !== undefined) {
          out += map[e];
          i += 2;
        } else fail();
      } else out += text[i++];
    }
    if (i >= text.length) fail();
    i++;
    return out;
  };
  const v = value();
  ws();
  if (i < text.length) fail();
  return v;
}

/** The options of a `json:` filename as (dotted key, value) pairs; booleans as on/off. */
export function jsonFilenameOptions(filename: string): Array<[string, string]> {
  const root = parseQemuJson(filename.slice("json:".length));
  if (root === null || typeof root !== "object" || Array.isArray(root)) throw new CliError("Could not parse JSON: expected an object");
  const out: Array<[string, string]> = [];
  const walk = (v: Json, key: string) => {
    if (v !== null && typeof v === "object") {
      const entries = Array.isArray(v) ? v.map((x, n) => [String(n), x] as const) : Object.entries(v);
      for (const [k, x] of entries) walk(x, key === "" ? k : `${key}.${k}`);
    } else out.push([key, v === true ? "on" : v === false ? "off" : v === null ? "null" : String(v)]);
  };
  walk(root, "");
  return out;
}
