/**
 * The shape of the monorepo: dependencies point one way (spec <- cluster, refcount, datafile <- core <-
 * apps), and everything below the Node file backend is runtime-agnostic (no node: imports, no Buffer,
 * no process), so the same core runs in a browser.
 */
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith(".ts") ? [p] : [];
  });
}

function stripComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

const allowed: Record<string, string[]> = {
  "@qcowkit/spec": [],
  "@qcowkit/cluster": ["@qcowkit/spec"],
  "@qcowkit/refcount": ["@qcowkit/spec"],
  "@qcowkit/datafile": ["@qcowkit/spec"],
  "@qcowkit/core": ["@qcowkit/spec", "@qcowkit/cluster", "@qcowkit/refcount", "@qcowkit/datafile"],
  "@qcowkit/cli": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/core"],
  "@qcowkit/nbd": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/core"],
  "@qcowkit/web": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/core"],
  "@qcowkit/conformance": [],
};

describe("monorepo shape", () => {
  const dirs = [
    ...readdirSync(join(root, "packages")).map((d) => join(root, "packages", d)),
    ...readdirSync(join(root, "apps")).map((d) => join(root, "apps", d)),
  ];
  it("has the nine packages and apps, each with its fixed name", () => {
    const names = dirs.map((d) => JSON.parse(readFileSync(join(d, "package.json"), "utf8")).name).sort();
    expect(names).toEqual(Object.keys(allowed).sort());
  });

  for (const dir of dirs) {
    const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
    it(`${pkg.name} depends only on the layers below it`, () => {
      const deps = Object.keys({ ...pkg.dependencies, ...pkg.peerDependencies }).filter((d) => d.startsWith("@qcowkit/"));
      for (const d of deps) expect(allowed[pkg.name], `${pkg.name} -> ${d}`).toContain(d);
      // Source imports must stay inside the declared dependencies too.
      for (const f of files(join(dir, "src"))) {
        for (const m of stripComments(readFileSync(f, "utf8")).matchAll(/from "(@qcowkit\/[a-z]+)/g)) {
          expect(deps, `${relative(root, f)} imports ${m[1]}`).toContain(m[1]);
        }
      }
    });
  }

  for (const name of ["spec", "cluster", "refcount", "datafile", "core"]) {
    it(`@qcowkit/${name} is runtime-agnostic outside its Node entry`, () => {
      const src = join(root, "packages", name, "src");
      for (const f of files(src)) {
        const rel = relative(src, f);
        if (rel === "node.ts" || rel.startsWith("node/")) continue;
        const text = stripComments(readFileSync(f, "utf8"));
        expect(text, `${name}/src/${rel}`).not.toMatch(/from "node:|require\(|\bBuffer\b|\bprocess\./);
      }
    });
  }
});
