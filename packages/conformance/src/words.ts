/**
 * Word splitting for case steps: a small, portable subset of POSIX shell quoting.
 *
 * - Words are separated by blanks.
 * - `'...'` is literal; `"..."` expands variables and honours `\"`, `\\` and `\$`.
 * - `$NAME` and `${NAME}` expand outside single quotes. An expansion is never split into several words.
 * - An unquoted `|` is its own token and separates a command from its output filters.
 * - An unquoted `#` at the start of a word starts a comment.
 */

export const PIPE = Symbol("pipe");
export type Token = string | typeof PIPE;

export class StepSyntaxError extends Error {}

const NAME_START = /[A-Za-z_]/;
const NAME_CHAR = /[A-Za-z0-9_]/;

/** Splits one step line into words, expanding variables with `lookup` (which throws for unknown names). */
export function splitWords(line: string, lookup: (name: string) => string): Token[] {
  const tokens: Token[] = [];
  let word = "";
  let inWord = false;
  let i = 0;

  const expand = (): void => {
    // `line[i]` is "$".
    let name: string;
    if (line[i + 1] === "{") {
      const close = line.indexOf("}", i + 2);
      if (close < 0) throw new StepSyntaxError("unterminated ${...}");
      name = line.slice(i + 2, close);
      i = close + 1;
    } else {
      let j = i + 1;
      while (j < line.length && NAME_CHAR.test(line.charAt(j))) j++;
      name = line.slice(i + 1, j);
      i = j;
    }
    if (!NAME_START.test(name[0] ?? "") || ![...name].every((c) => NAME_CHAR.test(c))) {
      throw new StepSyntaxError(`bad variable reference near column ${i}`);
    }
    word += lookup(name);
  };

  while (i < line.length) {
    const c = line[i];
    if (c === " " || c === "\t") {
      if (inWord) tokens.push(word);
      word = "";
      inWord = false;
      i++;
    } else if (c === "#" && !inWord) {
      break;
    } else if (c === "|" && !inWord) {
      tokens.push(PIPE);
      i++;
    } else if (c === "'") {
      const close = line.indexOf("'", i + 1);
      if (close < 0) throw new StepSyntaxError("unterminated single quote");
      word += line.slice(i + 1, close);
      inWord = true;
      i = close + 1;
    } else if (c === '"') {
      inWord = true;
      i++;
      for (;;) {
        if (i >= line.length) throw new StepSyntaxError("unterminated double quote");
        const d = line[i];
        if (d === '"') {
          i++;
          break;
        }
        if (d === "\\" && i + 1 < line.length && '"\\$'.includes(line.charAt(i + 1))) {
          word += line[i + 1];
          i += 2;
        } else if (d === "$") {
          expand();
        } else {
          word += d;
          i++;
        }
      }
    } else if (c === "\\") {
      if (i + 1 >= line.length) throw new StepSyntaxError("trailing backslash");
      word += line[i + 1];
      inWord = true;
      i += 2;
    } else if (c === "$") {
      expand();
      inWord = true;
    } else {
      word += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) tokens.push(word);
  return tokens;
}

/** Renders a command line for the transcript, quoting words that need it. */
export function quoteWords(words: readonly string[]): string {
  return words
    .map((w) => (w !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`))
    .join(" ");
}
