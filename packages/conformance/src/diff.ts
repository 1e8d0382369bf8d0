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
  for (let i = am.length - 1; i >= 0; i--) {
    for (let j = bm.length - 1; j >= 0; j--) {
      lcs[i * width + j] =
        am[i] === bm[j] ? lcs[(i + 1) * width + j + 1] + 1 : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
    }
  }
  const ops: Op[] = [];
  for (let k = 0; k < head; k++) ops.push({ kind: " ", line: a[k], a: k, b: k });
  let i = 0;
  let j = 0;
  while (i < am.length || j < bm.length) {
    if (i < am.length && j < bm.length && am[i] === bm[j]) {
      ops.push({ kind: " ", line: am[i], a: head + i++, b: head + j++ });
    } else if (i < am.length && (j === bm.length || lcs[(i + 1) * width + j] >= lcs[i * width + j + 1])) {
      ops.push({ kind: "-", line: am[i], a: head + i++, b: head + j });
    } else {
      ops.push({ kind: "+", line: bm[j], a: head + i, b: head + j++ });
    }
  }
  for (let k = 0; k < tail; k++) {
    ops.push({ kind: " ", line: a[a.length - tail + k], a: a.length - tail + k, b: b.length - tail + k });
  }
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
  while (k < changed.length) {
    const start = Math.max(0, changed[k] - context);
    let end = Math.min(ops.length, changed[k] + context + 1);
    while (k + 1 < changed.length && changed[k + 1] - context <= end) {
      k++;
      end = Math.min(ops.length, changed[k] + context + 1);
    }
    k++;
    const hunk = ops.slice(start, end);
    const aCount = hunk.filter((o) => o.kind !== "+").length;
    const bCount = hunk.filter((o) => o.kind !== "-").length;
    const aStart = hunk[0].a + (aCount ? 1 : 0);
    const bStart = hunk[0].b + (bCount ? 1 : 0);
    out.push(`@@ -${aStart},${aCount} +${bStart},${bCount} @@`);
    for (const o of hunk) out.push(`${o.kind}${o.line}`);
  }
  if (expected && actual && expected.endsWith("\n") !== actual.endsWith("\n")) out.push("\\ the outputs differ in their final newline");
  return `${out.join("\n")}\n`;
}
