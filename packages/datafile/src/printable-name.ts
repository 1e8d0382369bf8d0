/**
 * A file name made safe for a one-line message: control characters (including newlines) become
 * `\xNN` escapes; everything else is kept as is.
 */
export function printableName(name: string): string {
  // eslint-disable-next-line no-control-regex
  return name.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
