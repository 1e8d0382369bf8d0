/// <reference types="node" />
/** packages/spec/src runs in any JavaScript runtime: no Node modules, no Node globals. */
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const srcDir = join(dirname(fileURLToPath(import.meta.url)), "..", "src");
const files = readdirSync(srcDir).filter((f) => f.endsWith(".ts"));

/** Source text without comments and string contents, so prose and messages do not count. */
function code(text: string): string {
  return text
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .replace(/\/\/.*$/gm, "")
    .replace(/`(?:\\.|[^`\\])*`/g, "``")
    .replace(/"(?:\\.|[^"\\])*"/g, (m) => (m.startsWith('"node:') ? m : '""'));
}

describe("runtime-agnostic sources", () => {
  it("finds the sources", () => {
    expect(files).toContain("index.ts");
    expect(files.length).toBeGreaterThan(10);
  });

  it.each(files)("%s imports no node: module and uses no Buffer, process or require", (file) => {
    const text = readFileSync(join(srcDir, file), "utf8");
    const body = code(text);
    expect(text).not.toMatch(/from\s+["']node:/);
    expect(text).not.toMatch(/import\(\s*["']node:/);
    expect(text).not.toMatch(/from\s+["'](fs|path|os|child_process|crypto|zlib|buffer|process|url|util)["']/);
    expect(body).not.toMatch(/\bBuffer\b/);
    expect(body).not.toMatch(/\bprocess\b/);
    expect(body).not.toMatch(/\brequire\s*\(/);
    expect(body).not.toMatch(/\b__dirname\b|\b__filename\b/);
  });

  it("the checker catches a violation", () => {
    const bad = 'import { x } from "./y";\nconst b = Buffer.from("z"); // Buffer in a comment is fine\n';
    expect(code(bad)).toMatch(/\bBuffer\b/);
    expect(code('const s = "process"; // process')).not.toMatch(/\bprocess\b/);
  });
});
