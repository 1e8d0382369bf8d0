#!/usr/bin/env node
/**
 * Build the static page into dist/: index.html, and assets/ with the page's script, the export worker and
 * the stylesheet. esbuild bundles @qcowkit/core's browser entry as published (its dist/), with no Node
 * polyfills: a Node module reaching the bundle fails the build. The zstd WebAssembly module comes along as
 * a chunk of its own, loaded only when a zstd-compressed cluster is read or written.
 */
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "assets"), { recursive: true });

const result = await build({
  entryPoints: { main: join(root, "src/main.ts"), "export-worker": join(root, "src/export-worker.ts") },
  outdir: join(dist, "assets"),
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "browser",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: true,
  metafile: true,
  chunkNames: "chunk-[hash]",
  logLevel: "warning",
  // tsup's shared chunks are imported for their helpers only; the packages are free of side effects.
  logOverride: { "ignored-bare-import": "silent" },
});
copyFileSync(join(root, "index.html"), join(dist, "index.html"));
copyFileSync(join(root, "src/style.css"), join(dist, "assets/style.css"));
writeFileSync(join(dist, "meta.json"), JSON.stringify(result.metafile));
const bytes = Object.entries(result.metafile.outputs)
  .filter(([f]) => f.endsWith(".js"))
  .reduce((n, [, o]) => n + o.bytes, 0);
console.log(`web: dist/ written (${Math.round(bytes / 1024)} KiB of scripts)`);
