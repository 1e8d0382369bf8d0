/** Unified line diff (longest common subsequence), enough for transcripts of a few hundred lines. */

type Op = { kind: " " | "-" | "+"; line: string; a: number; b: number };

const MAX_CELLS = 4_000_000;

function operations(a: string[], b: string[]): Op[] | undefined {
  // Trim the common head and tail, then run a table LCS on the middle.
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const am = a.slice(head, a.length - tail);
  const bm = b.slice(head, b.length - tail);
  if ((am.length + 1) * (bm.length + 1) > MAX_CELLS) return undefined;
  const width = bm.length + 1;
  const lcs = new Uint32Array((am.length + 1) * width);
  /** Length of the longest common subsequence of am[i..] and bm[j..] (0 past either end). */
  const common = (i: number, j: number): number => lcs[i * width + j] ?? 0;
  for (let i = am.length - 1; i >= 0; i--) {
    for (let j = bm.length - 1; j >= 0; j--) {
      lcs[i * width + j] = am[i] === bm[j] ? common(i + 1, j + 1) + 1 : Math.max(common(i + 1, j), common(i, j + 1));
    }
  }
  const ops: Op[] = a.slice(0, head).map((line, k) => ({ kind: " ", line, a: k, b: k }));
  let i = 0;
  let j = 0;
  for (;;) {
    const left = am[i];
    const right = bm[j];
    if (left === undefined && right === undefined) break;
    if (left !== undefined && left === right) {
      ops.push({ kind: " ", line: left, a: head + i++, b: head + j++ });
    } else if (left !== undefined && (right === undefined || common(i + 1, j) >= common(i, j + 1))) {
      ops.push({ kind: "-", line: left, a: head + i++, b: head + j });
    } else if (right !== undefined) {
      ops.push({ kind: "+", line: right, a: head + i, b: head + j++ });
    }
  }
  a.slice(a.length - tail).forEach((line, k) => ops.push({ kind: " ", line, a: a.length - tail + k, b: b.length - tail + k }));
  return ops;
}

const splitLines = (text: string): string[] => (text === "" ? [] : text.replace(/\n$/, "").split("\n"));

/** A unified diff from `expected` to `actual`, or "" when they are equal. */
export function unifiedDiff(expected: string, actual: string, expectedName: string, actualName: string, context = 3): string {
  if (expected === actual) return "";
  const a = splitLines(expected);
  const b = splitLines(actual);
  const ops = operations(a, b);
  const out = [`--- ${expectedName}`, `+++ ${actualName}`];
  if (!ops) {
    out.push(`@@ outputs too large to diff: ${a.length} and ${b.length} lines @@`);
    return `${out.join("\n")}\n`;
  }
  const changed = ops.map((op, k) => (op.kind !== " " ? k : -1)).filter((k) => k >= 0);
  let k = 0;
  for (let first = changed[0]; first !== undefined; first = changed[k]) {
    const start = Math.max(0, first - context);
    let end = Math.min(ops.length, first + context + 1);
    for (let next = changed[k + 1]; next !== undefined && next - context <= end; next = changed[k + 1]) {
      k++;
      end = Math.min(ops.length, next + context + 1);
    }
    k++;
    const hunk = ops.slice(start, end);
    const aCount = hunk.filter((o) => o.kind !== "+").length;
    const bCount = hunk.filter((o) => o.kind !== "-").length;
    const firstOp = ops[start]!; // start <= first < ops.length: the hunk is never empty
    const aStart = firstOp.a + (aCount ? 1 : 0);
    const bStart = firstOp.b + (bCount ? 1 : 0);
    out.push(`@@ -${aStart},${aCount} +${bStart},${bCount} @@`);
    for (const o of hunk) out.push(`${o.kind}${o.line}`);
  }
  if (expected && actual && expected.endsWith("\n") !== actual.endsWith("\n")) out.push("\\ the outputs differ in their final newline");
  return `${out.join("\n")}\n`;
}
