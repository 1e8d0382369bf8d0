/**
 * Sizes on the command line and in output, as QEMU 7.2 parses and prints them:
 * - `parseSize` is qemu_strtosz: decimal (or 0x hex) bytes, an optional fraction, an optional suffix
 *   b/B (bytes), k/K, M, G, T, P, E (powers of 1024, case-insensitive), rounded to the nearest byte;
 * - `sizeToStr` is size_to_str ("196 KiB", "1.63 MiB": three significant digits);
 * - `cvtstr` is qemu-io's cvtstr ("64 KiB", "3.812 MiB", "512 bytes").
 */
import { CliError } from "./errors";

export type SizeParse =
  | { ok: true; value: bigint; warning?: string }
  | { ok: false; error: "EINVAL" | "ERANGE" };

const UINT64_MAX = (1n << 64n) - 1n;
const SUFFIXES = "BKMGTPE";

function suffixMultiplier(c: string | undefined, unit = 1024n): bigint | undefined {
  if (c === undefined || c === "") return undefined;
  const i = SUFFIXES.indexOf(c.toUpperCase());
  return i < 0 ? undefined : unit ** BigInt(i);
}

/** strtoull's grammar: optional blanks, optional sign, digits of `base` (with an optional 0x for 16). */
function strtou64(s: string, pos: number, base: 10 | 16): { value: bigint; end: number; error?: "EINVAL" | "ERANGE"; negative: boolean } {
  let i = pos;
  while (i < s.length && " \t\n\v\f\r".includes(s[i]!)) i++;
  let negative = false;
  if (s[i] === "+" || s[i] === "-") {
    negative = s[i] === "-";
    i++;
  }
  if (base === 16 && s[i] === "0" && (s[i + 1] === "x" || s[i + 1] === "X") && /[0-9a-fA-F]/.test(s[i + 2] ?? "")) i += 2;
  const digit = base === 10 ? /[0-9]/ : /[0-9a-fA-F]/;
  const start = i;
  while (i < s.length && digit.test(s[i]!)) i++;
  if (i === start) return { value: 0n, end: pos, error: "EINVAL", negative };
  let value = BigInt((base === 16 ? "0x" : "") + s.slice(start, i));
  let error: "ERANGE" | undefined;
  if (value > UINT64_MAX) {
    value = UINT64_MAX;
    error = "ERANGE";
  }
  if (negative && value !== 0n && error === undefined) value = (1n << 64n) - value;
  return error ? { value, end: i, error, negative } : { value, end: i, negative };
}

/** qemu_strtosz with no end pointer: the whole string must be a size. */
export function parseSize(text: string): SizeParse {
  const first = strtou64(text, 0, 10);
  let end = first.end;
  let val = first.value;
  let fail: "EINVAL" | "ERANGE" | undefined = first.error;
  let warning: string | undefined;
  const finish = (): SizeParse => {
    if (end < text.length) fail = "EINVAL";
    if (fail) return { ok: false, error: fail };
    return warning ? { ok: true, value: val, warning } : { ok: true, value: val };
  };
  if (fail) return finish();
  if (text.slice(0, end).includes("-")) {
    end = 0;
    fail = "EINVAL";
    return finish();
  }
  let hex = false;
  let fraction = 0n;
  if (val === 0n && (text[end] === "x" || text[end] === "X")) {
    const h = strtou64(text, 0, 16);
    end = h.end;
    val = h.value;
    if (h.error) {
      fail = h.error;
      return finish();
    }
    if (text[end] === ".") {
      end = 0;
      fail = "EINVAL";
      return finish();
    }
    hex = true;
  } else if (text[end] === ".") {
    // strtod on ".DIGITS[eEXP]": at least one digit is needed.
    const m = /^\.(\d+)([eE][+-]?\d+)?/.exec(text.slice(end));
    const d = m ? Number(m[0]) : NaN;
    if (!m || !Number.isFinite(d)) {
      end += 1;
    } else if (m[2] !== undefined) {
      end = 0;
      fail = "EINVAL";
      return finish();
    } else {
      end += m[0].length;
      const scaled = Math.trunc(d * 2 ** 64);
      fraction = scaled >= 2 ** 64 ? 0n : BigInt(scaled);
    }
  }
  let mul = suffixMultiplier(text[end]);
  if (mul !== undefined) {
    if (hex) warning = `Using a multiplier suffix on hex numbers is deprecated: ${text}`;
    end++;
  } else {
    mul = 1n;
  }
  if (mul === 1n) {
    if (fraction !== 0n) {
      end = 0;
      fail = "EINVAL";
    }
    return finish();
  }
  const product = ((val << 64n) | fraction) * mul;
  const rounded = (product >> 64n) + ((product >> 63n) & 1n);
  if (rounded > UINT64_MAX) {
    fail = "ERANGE";
    return finish();
  }
  val = rounded;
  return finish();
}

const INT64_MAX = (1n << 63n) - 1n;

/**
 * qemu-img's cvtnum: a size argument named `name` ("image size"), between min and max. Throws the one-line
 * form of QEMU's message.
 */
export function sizeArgument(name: string, text: string, opts: { min?: bigint; max?: bigint; onWarning?: (w: string) => void } = {}): bigint {
  const min = opts.min ?? 0n;
  const max = opts.max ?? INT64_MAX;
  const r = parseSize(text);
  if (!r.ok && r.error === "EINVAL") {
    throw new CliError(
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\nkilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    );
  }
  if (!r.ok || r.value > max || r.value < min) {
    throw new CliError(`Invalid ${name} specified. Must be between ${min} and ${max}.`);
  }
  if (r.warning) opts.onWarning?.(r.warning);
  return r.value;
}

/** A byte count as a JS number; refused beyond 2^53 (larger images are out of reach anyway). */
export function toSafeNumber(v: bigint, name = "size"): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CliError(`Invalid ${name} specified: values above 2^53 are not supported`);
  return Number(v);
}

/** v = numerator / denominator exactly (v finite, >= 0). */
function exactRatio(v: number): { num: bigint; den: bigint } {
  let k = 0;
  let scaled = v;
  // Doubling is exact; 2 ** k itself would overflow for subnormal v (k reaches 1074).
  while (!Number.isInteger(scaled)) {
    k++;
    scaled *= 2;
  }
  return { num: BigInt(scaled), den: 1n << BigInt(k) };
}

/**
 * Whether `Number.prototype.toFixed(decimals)` prints v as C's printf does. Both round the exact binary value;
 * they differ only on an exact tie (toFixed rounds it up, printf to even). v * 10^decimals ends in exactly .5
 * when, and only when, v is an odd multiple of 2^-(decimals + 1): multiplying by powers of two is exact.
 */
function toFixedMatchesPrintf(v: number, decimals: number): boolean {
  if (decimals < 0 || decimals > 100 || !(v < 1e21)) return false;
  const half = v * 2 ** (decimals + 1);
  return !(Number.isInteger(half) && !Number.isInteger(half / 2));
}

/** round(v * 10^decimals) with C's round-half-to-even on exact ties (decimals may be negative). */
function roundScaled(v: number, decimals: number): bigint {
  if (toFixedMatchesPrintf(v, decimals)) return BigInt(v.toFixed(decimals).replace(".", ""));
  const { num, den } = exactRatio(v);
  const n = decimals >= 0 ? num * 10n ** BigInt(decimals) : num;
  const d = decimals >= 0 ? den : den * 10n ** BigInt(-decimals);
  const q = n / d;
  const twice = (n - q * d) * 2n;
  if (twice > d || (twice === d && (q & 1n) === 1n)) return q + 1n;
  return q;
}

/** printf("%.*f", decimals, v) for finite v >= 0. */
export function formatFixed(v: number, decimals: number): string {
  if (toFixedMatchesPrintf(v, decimals)) return v.toFixed(decimals);
  const q = roundScaled(v, decimals).toString();
  if (decimals === 0) return q;
  const padded = q.padStart(decimals + 1, "0");
  return `${padded.slice(0, -decimals)}.${padded.slice(-decimals)}`;
}

/** printf("%.*g", precision, v) for finite v >= 0. */
export function formatG(v: number, precision: number): string {
  if (v === 0) return "0";
  let exp = Math.floor(Math.log10(v));
  // log10 can be off by one near powers of ten: settle the exponent on the rounded value.
  for (let tries = 0; tries < 3; tries++) {
    const q = roundScaled(v, precision - 1 - exp);
    const len = q.toString().length;
    if (len === precision) break;
    exp += len > precision ? 1 : -1;
  }
  const strip = (s: string) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (exp < -4 || exp >= precision) {
    const q = roundScaled(v, precision - 1 - exp).toString();
    const mant = strip(q.length > 1 ? `${q[0]}.${q.slice(1)}` : q);
    return `${mant}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return strip(formatFixed(v, precision - 1 - exp));
}

const BINARY_PREFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/** QEMU's size_to_str: "0 B", "196 KiB", "1.63 MiB", "64 GiB". */
export function sizeToStr(bytes: number): string {
  // The unit switches up once the value reaches 1000 of the current unit (so at most three digits).
  let i = 0;
  if (bytes > 0) {
    const e = Math.floor(Math.log2(bytes / (1000 / 1024))) + 1; // frexp exponent
    i = Math.max(0, Math.min(6, Math.floor((e - 1) / 10)));
  }
  return `${formatG(bytes / 2 ** (i * 10), 3)} ${BINARY_PREFIXES[i]}B`;
}

/** qemu-io's cvtstr: three decimals, ".000" dropped ("64 KiB", "3.812 MiB", "512 bytes"). */
export function cvtstr(value: number): string {
  const units: Array<[number, string]> = [
    [2 ** 60, "EiB"],
    [2 ** 50, "PiB"],
    [2 ** 40, "TiB"],
    [2 ** 30, "GiB"],
    [2 ** 20, "MiB"],
    [2 ** 10, "KiB"],
  ];
  for (const [scale, suffix] of units) {
    if (value >= scale) return trimZeros(formatFixed(value / scale, 3), ` ${suffix}`);
  }
  return trimZeros(formatFixed(value, 6), " bytes");
}

function trimZeros(s: string, suffix: string): string {
  const at = s.indexOf(".000");
  return at >= 0 ? s.slice(0, at) + suffix : s + suffix;
}
