#!/usr/bin/env node
/**
 * The size of @qcowkit/core's browser entry as a page gets it: bundled by esbuild for browsers, minified,
 * with everything it exports kept. "initial" is what loads with the page (the entry and what it imports
 * statically); "lazy" are the chunks loaded on first use (fflate for deflate clusters, the zstd module and
 * its WebAssembly bytes). Prints JSON; used by the README figures and test/bundle-size.test.ts.
 */
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export async function measureCoreBundle() {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..");
  const result = await build({
    stdin: { contents: 'export * from "@qcowkit/core/browser";', resolveDir: root, loader: "js" },
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify: true,
    write: false,
    outdir: "/bundle",
    metafile: true,
    logLevel: "silent",
    logOverride: { "ignored-bare-import": "silent" },
  });
  const files = new Map(result.outputFiles.map((f) => [f.path, f.contents]));
  const outputs = result.metafile.outputs;
  const entry = Object.keys(outputs).find((k) => outputs[k].entryPoint !== undefined);
  const initial = new Set();
  const visit = (name) => {
    if (initial.has(name)) return;
    initial.add(name);
    for (const i of outputs[name].imports) if (i.kind === "import-statement" && !i.external) visit(i.path);
  };
  visit(entry);
  const sizes = (names) => {
    let min = 0;
    let gz = 0;
    for (const n of names) {
      const bytes = files.get(join("/", n)) ?? files.get(n);
      min += bytes.byteLength;
      gz += gzipSync(bytes, { level: 9 }).byteLength;
    }
    return { minified: min, gzipped: gz };
  };
  const text = result.outputFiles.map((f) => new TextDecoder().decode(f.contents)).join("\n");
  return {
    initial: sizes([...initial]),
    lazy: sizes(Object.keys(outputs).filter((n) => !initial.has(n) && n.endsWith(".js"))),
    nodeReferences: (text.match(/"node:[a-z_/]+"|\brequire\(|\bBuffer\.from\b/g) ?? []).length,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(JSON.stringify(await measureCoreBundle(), null, 2));
