/**
 * The shape of the monorepo: dependencies point one way (spec <- cluster, refcount, datafile, nbd-protocol <-
 * core <- apps; qnbd also uses nbd-protocol directly), and everything below the Node file backend is runtime-agnostic (no node: imports, no Buffer,
 * no process), so the same core runs in a browser.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve, sep } from "node:path";
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

/**
 * The import cycles among a package's source files, each as "a.ts -> b.ts -> a.ts" (what madge --circular
 * reports). Type-only imports (`import type`) count too unless `runtimeOnly`: they vanish from the JavaScript,
 * but a cycle through them still ties the modules together for a reader.
 */
function importCycles(src: string, runtimeOnly = false): string[] {
  const graph = new Map<string, string[]>();
  for (const f of files(src)) {
    const deps: string[] = [];
    for (const m of stripComments(readFileSync(f, "utf8")).matchAll(/^\s*(?:import|export)\s+(type\s+)?[^;]*?from\s+"(\.[^"]+)"/gms)) {
      if (m[1] && runtimeOnly) continue;
      const base = resolve(dirname(f), m[2]!);
      const hit = [`${base}.ts`, join(base, "index.ts"), base.replace(/\.js$/, ".ts")].find((c) => existsSync(c) && statSync(c).isFile());
      if (hit) deps.push(hit);
    }
    graph.set(f, deps);
  }
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (node: string): void => {
    state.set(node, "open");
    stack.push(node);
    for (const dep of graph.get(node) ?? []) {
      if (state.get(dep) === "open") cycles.push([...stack.slice(stack.indexOf(dep)), dep].map((p) => relative(src, p)).join(" -> "));
      else if (!state.has(dep)) visit(dep);
    }
    stack.pop();
    state.set(node, "done");
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return cycles;
}

const allowed: Record<string, string[]> = {
  "@qcowkit/spec": [],
  "@qcowkit/cluster": ["@qcowkit/spec"],
  "@qcowkit/refcount": ["@qcowkit/spec"],
  "@qcowkit/datafile": ["@qcowkit/spec"],
  "@qcowkit/nbd-protocol": ["@qcowkit/spec"],
  "@qcowkit/core": ["@qcowkit/spec", "@qcowkit/cluster", "@qcowkit/refcount", "@qcowkit/datafile", "@qcowkit/nbd-protocol"],
  "@qcowkit/cli": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/core"],
  "@qcowkit/nbd": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/nbd-protocol", "@qcowkit/core"],
  "@qcowkit/web": ["@qcowkit/spec", "@qcowkit/datafile", "@qcowkit/core"],
  "@qcowkit/conformance": [],
};

describe("monorepo shape", () => {
  const dirs = [
    ...readdirSync(join(root, "packages")).map((d) => join(root, "packages", d)),
    ...readdirSync(join(root, "apps")).map((d) => join(root, "apps", d)),
  ];
  it("has the ten packages and apps, each with its fixed name", () => {
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
        for (const m of stripComments(readFileSync(f, "utf8")).matchAll(/from "(@qcowkit\/[a-z-]+)/g)) {
          expect(deps, `${relative(root, f)} imports ${m[1]}`).toContain(m[1]);
        }
      }
    });
  }

  for (const name of ["spec", "cluster", "refcount", "datafile", "nbd-protocol", "core"]) {
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

  for (const name of ["spec", "cluster", "refcount", "datafile", "nbd-protocol", "core"]) {
    it(`@qcowkit/${name} has no import cycles between its source files, type-only imports included`, () => {
      expect(importCycles(join(root, "packages", name, "src"))).toEqual([]);
    });
  }

  it("the cycle finder sees cycles through type-only imports (and leaves them out when asked)", () => {
    const dir = mkdtempSync(join(tmpdir(), "qcowkit-cycles-"));
    try {
      mkdirSync(join(dir, "src"));
      writeFileSync(join(dir, "src", "a.ts"), 'import type { B } from "./b";\nexport interface A { b?: B }\n');
      writeFileSync(join(dir, "src", "b.ts"), 'import { type A } from "./a";\nexport interface B { a?: A }\n');
      writeFileSync(join(dir, "src", "c.ts"), 'import type { A } from "./a";\nexport type C = A;\n');
      expect(importCycles(join(dir, "src"))).toEqual(["a.ts -> b.ts -> a.ts"]);
      expect(importCycles(join(dir, "src"), true)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refcounts reach disk only through the metadata owner (its write-back order or a named rule)", () => {
    const src = join(root, "packages", "core", "src");
    const outside = files(src).filter((f) => !relative(src, f).startsWith(`metadata${sep}`));
    // Refcounts.writeBack (and the caches' writeBack) is called inside metadata/ only; other code states
    // its rule through MetadataOwner.commitRefcounts.
    const calls = outside.filter((f) => /\.writeBack\(/.test(readFileSync(f, "utf8"))).map((f) => relative(src, f));
    expect(calls).toEqual([]);
    expect(outside.some((f) => readFileSync(f, "utf8").includes('commitRefcounts("after-reference-removal")'))).toBe(true);
  });

  it("core classifies and encodes L2 entries through @qcowkit/cluster only (one vocabulary)", () => {
    const src = join(root, "packages", "core", "src");
    // spec's word-level L2 decoders and encoders are cluster's building blocks; core uses cluster's L2Entry.
    const raw = /\b(?:classifyCluster|decodeCompressedDescriptor|l2HostOffset|l2IsCopied|l2HasReservedBits|setL2Entry|setL2Raw|setL2Bitmap)\b/;
    expect(files(src).filter((f) => raw.test(stripComments(readFileSync(f, "utf8")))).map((f) => relative(src, f))).toEqual([]);
  });

  it("core's files stay readable: qcow2-image.ts (the facade) under 700 lines, no file over 1000", () => {
    const src = join(root, "packages", "core", "src");
    const lines = (f: string) => readFileSync(f, "utf8").split("\n").length;
    expect(lines(join(src, "qcow2-image.ts"))).toBeLessThan(700);
    expect(files(src).filter((f) => lines(f) > 1000).map((f) => relative(src, f))).toEqual([]);
  });

  it("apps use Qcow2Image's public members only: no metadata owner, lock or other engine member", () => {
    // The engine members are the ones qcow2-image.ts marks internal (left out of the published declarations).
    const source = readFileSync(join(root, "packages", "core", "src", "qcow2-image.ts"), "utf8");
    const internal = [...source.matchAll(/@internal[^\n]*\n(?:\s*\*[^\n]*\n)*?\s*(?:\*\/\s*)?(?:readonly\s+|async\s+)?(\w+)/g)].map((m) => m[1]!);
    expect(internal).toEqual(expect.arrayContaining(["metadata", "lock", "writeObservers", "closeHooks", "warn", "signalCorruption", "discardUnlocked", "linkPreallocated", "writeFromStoresGuessing"]));
    // `warn` is left out of the pattern: the apps' own contexts have a warn().
    const names = internal.filter((n) => n !== "warn");
    const forbidden = new RegExp(`\\.(?:${names.join("|")})\\b`);
    const offenders: string[] = [];
    for (const app of readdirSync(join(root, "apps"))) {
      const src = join(root, "apps", app, "src");
      if (!existsSync(src)) continue;
      for (const f of files(src)) {
        const text = stripComments(readFileSync(f, "utf8"));
        const hit = forbidden.exec(text);
        if (hit) offenders.push(`${relative(root, f)}: ${hit[0]}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it("@qcowkit/core/internal is imported only by qcowkit's own apps, and core's public entries do not re-export it", () => {
    const packageSources = readdirSync(join(root, "packages")).flatMap((p) => files(join(root, "packages", p, "src")));
    const examples = readdirSync(join(root, "examples")).map((f) => join(root, "examples", f));
    const users = [...packageSources, ...examples]
      .filter((f) => /from\s+"@qcowkit\/core\/internal"/.test(readFileSync(f, "utf8")))
      .map((f) => relative(root, f));
    expect(users).toEqual([]);
    const src = join(root, "packages", "core", "src");
    for (const entry of ["index.ts", "node.ts", "browser.ts"]) expect(readFileSync(join(src, entry), "utf8")).not.toMatch(/["']\.\/internal["']/);
    // No method is patched onto images after opening: bitmap access is Qcow2Image's own (with its checks).
    expect(files(src).filter((f) => /\b(?:listBitmaps|bitmapStatus)\s*=/.test(stripComments(readFileSync(f, "utf8")))).map((f) => relative(src, f))).toEqual([]);
  });
});
