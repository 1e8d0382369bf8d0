/**
 * QEMU prints structured output (qemu-img info/check --output=json, the "Format specific information"
 * of the human output) from a QDict: a hash table of 512 buckets walked bucket by bucket, the most recently
 * inserted key first within a bucket. So the key order depends on the key names, not on the order the
 * fields were filled in. Objects given here are filled in QAPI schema order (which decides ties); the
 * printers below order their keys the way QEMU's QDict iteration does.
 */

const BUCKETS = 512;

/** The bucket of `key` in QEMU's QDict (tdb hash modulo 512). */
export function qdictBucket(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  return ((Math.imul(1103515243, value) + 12345) >>> 0) % BUCKETS;
}

export type JsonValue = string | number | boolean | JsonValue[] | { [key: string]: JsonValue | undefined };

/** The entries of `obj` (undefined values dropped) in QDict iteration order. */
export function qdictEntries(obj: { [key: string]: JsonValue | undefined }): Array<[string, JsonValue]> {
  const entries = Object.entries(obj).filter((e): e is [string, JsonValue] => e[1] !== undefined);
  return entries
    .map((e, insertion) => ({ e, bucket: qdictBucket(e[0]), insertion }))
    .sort((a, b) => a.bucket - b.bucket || b.insertion - a.insertion)
    .map((x) => x.e);
}

/** QEMU's JSON string escaping: \uXXXX (upper-case hex) for anything outside printable ASCII. */
export function jsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        continue;
      case "\\":
        out += "\\\\";
        continue;
      case "\b":
        out += "\\b";
        continue;
      case "\f":
        out += "\\f";
        continue;
      case "\n":
        out += "\\n";
        continue;
      case "\r":
        out += "\\r";
        continue;
      case "\t":
        out += "\\t";
        continue;
    }
    if (cp >= 0x20 && cp <= 0x7e) {
      out += ch;
    } else if (cp > 0xffff) {
      const v = cp - 0x10000;
      out += `\\u${hex4(0xd800 + (v >> 10))}\\u${hex4(0xdc00 + (v & 0x3ff))}`;
    } else {
      out += `\\u${hex4(cp)}`;
    }
  }
  return `${out}"`;
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, "0");
}

/** qobject_to_json_pretty: four-space indentation, "key": value, empty containers split over two lines. */
export function toQemuJson(value: JsonValue, level = 0): string {
  const pad = (n: number) => "    ".repeat(n);
  if (typeof value === "string") return jsonString(value);
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "true" : "false";
  if (Array.isArray(value)) {
    const items = value.map((v) => `\n${pad(level + 1)}${toQemuJson(v, level + 1)}`);
    return `[${items.join(",")}\n${pad(level)}]`;
  }
  const items = qdictEntries(value).map(([k, v]) => `\n${pad(level + 1)}${jsonString(k)}: ${toQemuJson(v, level + 1)}`);
  return `{${items.join(",")}\n${pad(level)}}`;
}

/** qobject_to_json (not pretty): `{"key": value, ...}` on one line, keys in QDict order (json: filenames). */
export function toQemuJsonLine(value: JsonValue): string {
  if (typeof value === "string") return jsonString(value);
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "true" : "false";
  if (Array.isArray(value)) return `[${value.map(toQemuJsonLine).join(", ")}]`;
  return `{${qdictEntries(value).map(([k, v]) => `${jsonString(k)}: ${toQemuJsonLine(v)}`).join(", ")}}`;
}

/** The human dump of a QDict (block/qapi.c dump_qdict): "key: value", dashes in keys shown as spaces. */
export function dumpHuman(value: JsonValue, indentation: number): string {
  const pad = " ".repeat(indentation * 4);
  const scalar = (v: JsonValue) => (typeof v === "boolean" ? (v ? "true" : "false") : String(v));
  const composite = (v: JsonValue) => typeof v === "object";
  let out = "";
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      out += composite(v) ? `${pad}[${i}]:\n${dumpHuman(v, indentation + 1)}` : `${pad}[${i}]: ${scalar(v)}\n`;
    });
    return out;
  }
  if (typeof value !== "object") return `${scalar(value)}\n`;
  for (const [k, v] of qdictEntries(value)) {
    const key = k.replace(/-/g, " ");
    out += composite(v) ? `${pad}${key}:\n${dumpHuman(v, indentation + 1)}` : `${pad}${key}: ${scalar(v)}\n`;
  }
  return out;
}

/** printf("%.2f") of a non-negative value: the exact binary value rounded half to even. */
export function printfFixed2(value: number): string {
  let n = value;
  let k = 0n;
  while (!Number.isInteger(n)) {
    n *= 2;
    k++;
  }
  const num = BigInt(n) * 100n;
  const den = 1n << k;
  let q = num / den;
  const twice = (num % den) * 2n;
  if (twice > den || (twice === den && q % 2n === 1n)) q++;
  return `${q / 100n}.${String(q % 100n).padStart(2, "0")}`;
}
