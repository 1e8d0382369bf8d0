/** qemu-io's output helpers: the statistics lines, numbers on the command line, the hex dump. */
import { cvtstr, formatFixed, parseSize } from "../cli/size";

/** Elapsed time as [seconds, nanoseconds] (a struct timespec). */
export type Elapsed = { sec: number; nsec: number };

export function elapsedSince(start: bigint): Elapsed {
  const ns = process.hrtime.bigint() - start;
  return { sec: Number(ns / 1_000_000_000n), nsec: Number(ns % 1_000_000_000n) };
}

/** timestr: "00.01 sec" under a second, "H:MM:SS.ss" from a second on, or always with `fixed` (-C). */
export function timestr(t: Elapsed, fixed: boolean): string {
  const frac = t.nsec / 1e9;
  if (fixed || t.sec > 0) {
    const h = Math.floor(t.sec / 3600);
    const m = Math.floor(t.sec / 60) % 60;
    const s = (t.sec % 60) + frac;
    return `${h}:${String(m).padStart(2, "0")}:${formatFixed(s, 2).padStart(5, "0")}`;
  }
  return `${formatFixed(frac, 2).padStart(5, "0")} sec`;
}

function tdiv(value: number, t: Elapsed): number {
  return value / (t.sec + t.nsec / 1e9);
}

/** print_report: "wrote 512/512 bytes at offset 0" and the statistics line (or the -C line). */
export function report(op: string, t: Elapsed, offset: number, count: number, total: number, ops: number, machine: boolean): string {
  // A zero duration would divide by zero; the clock's resolution makes it at least a nanosecond.
  const dt = t.sec === 0 && t.nsec === 0 ? { sec: 0, nsec: 1 } : t;
  if (machine) {
    return `${total},${ops},${timestr(dt, true)},${formatFixed(tdiv(total, dt), 3)},${formatFixed(tdiv(ops, dt), 3)}\n`;
  }
  return (
    `${op} ${total}/${count} bytes at offset ${offset}\n` +
    `${cvtstr(total)}, ${ops} ops; ${timestr(dt, false)} (${cvtstr(tdiv(total, dt))}/sec and ${formatFixed(tdiv(ops, dt), 4)} ops/sec)\n`
  );
}

/** qemu-io's cvtnum: a size (suffixes allowed) up to INT64_MAX, or the error text it prints. */
export function cvtnum(text: string): { ok: true; value: number } | { ok: false; message: string } {
  const r = parseSize(text);
  if (r.ok && r.value <= (1n << 63n) - 1n) {
    if (r.value > BigInt(Number.MAX_SAFE_INTEGER)) return { ok: false, message: `Parsing error: argument too large -- ${text}` };
    return { ok: true, value: Number(r.value) };
  }
  if (!r.ok && r.error === "EINVAL") {
    return { ok: false, message: `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}` };
  }
  return { ok: false, message: `Parsing error: argument too large -- ${text}` };
}

/** strtol(arg, &end, 0) as a pattern byte, or undefined (qemu-io's parse_pattern). */
export function parsePattern(text: string): number | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)?$/.exec(text);
  if (!m) return undefined;
  const digits = m[2] ?? "0";
  let v: number;
  if (/^0[xX]/.test(digits)) v = Number.parseInt(digits.slice(2), 16);
  else if (digits.length > 1 && digits.startsWith("0")) v = Number.parseInt(digits.slice(1), 8);
  else v = Number.parseInt(digits, 10);
  if (m[1] === "-") v = -v;
  return v >= 0 && v <= 255 ? v : undefined;
}

const isAlnum = (c: number) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);

/** dump_buffer: 16 bytes a line, hex then the alphanumeric characters (others as '.'). */
export function hexDump(buf: Uint8Array, offset: number): string {
  const lines: string[] = [];
  for (let i = 0; i < buf.byteLength; i += 16) {
    const row = buf.subarray(i, Math.min(buf.byteLength, i + 16));
    let hex = "";
    let text = "";
    for (const b of row) {
      hex += `${b.toString(16).padStart(2, "0")} `;
      text += isAlnum(b) ? String.fromCharCode(b) : ".";
    }
    lines.push(`${(offset + i).toString(16).padStart(8, "0")}:  ${hex} ${text}\n`);
  }
  return lines.join("");
}
