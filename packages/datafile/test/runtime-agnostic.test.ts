import { readdir, readFile } from "node:fs/promises";
import { builtinModules } from "node:module";
import { join, relative } from "node:path";
import { describe, expect, it } from "vitest";

const sourceRoot = join(import.meta.dirname, "..", "src");

async function sourceFiles(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { withFileTypes: true });
  const nested = await Promise.all(
    entries.map((entry) => {
      const path = join(directory, entry.name);
      return entry.isDirectory() ? sourceFiles(path) : Promise.resolve(path.endsWith(".ts") ? [path] : []);
    }),
  );
  return nested.flat();
}

/** Module specifiers a file imports or re-exports (static and dynamic). */
function importedModules(text: string): string[] {
  const found: string[] = [];
  const patterns = [/\bfrom\s*["']([^"']+)["']/g, /\bimport\s*\(\s*["']([^"']+)["']/g, /\bimport\s+["']([^"']+)["']/g, /\brequire\s*\(\s*["']([^"']+)["']/g];
  for (const pattern of patterns) for (const match of text.matchAll(pattern)) found.push(match[1]!);
  return found;
}

const nodeBuiltins = new Set(builtinModules.flatMap((name) => [name, `node:${name}`]));

describe("runtime-agnostic sources", () => {
  it("only the node entry and src/node/ import Node modules or mention Buffer", async () => {
    const files = await sourceFiles(sourceRoot);
    const agnostic = files.filter((file) => {
      const path = relative(sourceRoot, file);
      return path !== "node.ts" && !path.startsWith("node/");
    });
    expect(agnostic.length).toBeGreaterThan(5);
    const offenders: string[] = [];
    for (const file of agnostic) {
      const text = await readFile(file, "utf8");
      const path = relative(sourceRoot, file);
      for (const specifier of importedModules(text)) {
        if (specifier.startsWith("node:") || nodeBuiltins.has(specifier)) offenders.push(`${path}: imports ${specifier}`);
      }
      if (/\bBuffer\b/.test(text)) offenders.push(`${path}: mentions Buffer`);
      if (/\bprocess\./.test(text)) offenders.push(`${path}: uses process`);
    }
    expect(offenders).toEqual([]);
  });

  it("the check notices a Node import and a Buffer mention", () => {
    expect(importedModules(`import { open } from "node:fs/promises";`)).toEqual(["node:fs/promises"]);
    expect(importedModules(`export * from "fs"; const x = await import("path");`)).toEqual(["fs", "path"]);
    expect(nodeBuiltins.has("fs") && nodeBuiltins.has("node:path")).toBe(true);
  });

  it("the node entry re-exports the runtime-agnostic API", async () => {
    const agnostic = await import("../src/index");
    const node = await import("../src/node");
    for (const name of Object.keys(agnostic)) expect(Object.keys(node), name).toContain(name);
    expect(Object.keys(node)).toContain("FileStore");
  });
});
