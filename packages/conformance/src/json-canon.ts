/**
 * Canonical JSON for transcripts. Two tools that print the same JSON value with different whitespace or key
 * order produce the same text here. Numbers keep their source text, so 64-bit values are never rounded.
 */

export type JsonValue =
  | { kind: "number"; text: string }
  | { kind: "string"; value: string }
  | { kind: "literal"; text: "true" | "false" | "null" }
  | { kind: "array"; items: JsonValue[] }
  | { kind: "object"; entries: [string, JsonValue][] };

class JsonSyntaxError extends Error {}

/** Parses one JSON document (surrounding whitespace allowed); returns undefined if it is not JSON. */
export function parseJson(text: string): JsonValue | undefined {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && " \t\r\n".includes(text.charAt(i))) i++;
  };
  const fail = (): never => {
    throw new JsonSyntaxError(`bad JSON at ${i}`);
  };
  const str = (): string => {
    if (text[i] !== '"') fail();
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const value = (): JsonValue => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const entries: [string, JsonValue][] = [];
      ws();
      if (text[i] === "}") {
        i++;
        return { kind: "object", entries };
      }
      for (;;) {
        ws();
        const key = str();
        ws();
        if (text[i] !== ":") fail();
        i++;
        entries.push([key, value()]);
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "}") {
          i++;
          return { kind: "object", entries };
        } else fail();
      }
    }
    if (c === "[") {
      i++;
      const items: JsonValue[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return { kind: "array", items };
      }
      for (;;) {
        items.push(value());
        ws();
        if (text[i] === ",") i++;
        else if (text[i] === "]") {
          i++;
          return { kind: "array", items };
        } else fail();
      }
    }
    if (c === '"') return { kind: "string", value: str() };
    for (const lit of ["true", "false", "null"] as const) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return { kind: "literal", text: lit };
      }
    }
    const num = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (!num) fail();
    i += num![0].length;
    return { kind: "number", text: num![0] };
  };
  try {
    const v = value();
    ws();
    return i === text.length ? v : undefined;
  } catch (e) {
    if (e instanceof JsonSyntaxError || e instanceof SyntaxError) return undefined;
    throw e;
  }
}

const isFlat = (v: JsonValue): boolean =>
  v.kind === "object" && v.entries.every(([, x]) => x.kind !== "object" && x.kind !== "array");

/**
 * Prints a value with keys sorted. Objects holding only scalars print on one line; arrays of such objects
 * print one element per line (the shape of `qemu-img map --output=json`). `redact` may replace a value.
 */
export function printJson(
  v: JsonValue,
  redact: (key: string, v: JsonValue) => JsonValue = (_k, x) => x,
  indent = "",
): string {
  const inner = `${indent}  `;
  switch (v.kind) {
    case "number":
      return v.text;
    case "literal":
      return v.text;
    case "string":
      return JSON.stringify(v.value);
    case "array":
      if (v.items.length === 0) return "[]";
      return `[\n${v.items.map((x) => inner + printJson(x, redact, inner)).join(",\n")}\n${indent}]`;
    case "object": {
      const entries = [...v.entries]
        .map(([k, x]) => [k, redact(k, x)] as [string, JsonValue])
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      if (entries.length === 0) return "{}";
      if (isFlat(v)) return `{${entries.map(([k, x]) => `${JSON.stringify(k)}: ${printJson(x)}`).join(", ")}}`;
      const body = entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${printJson(x, redact, inner)}`);
      return `{\n${body.join(",\n")}\n${indent}}`;
    }
  }
}
