import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    /** Directory holding the qimg.js and qio.js built for this run. */
    cliBuild: string;
  }
}

/**
 * Builds the bins once from the current source: into dist/ (what bin/qimg.js and bin/qio.js load) and into a
 * private directory the tests run from, so a concurrent build of the workspace cannot pull dist/ from under
 * them.
 */
export default function setup(project: TestProject): () => void {
  const appDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const require = createRequire(import.meta.url);
  const tsupPackage = require.resolve("tsup/package.json");
  const tsup = path.join(path.dirname(tsupPackage), (JSON.parse(fs.readFileSync(tsupPackage, "utf8")) as { bin: Record<string, string> }).bin.tsup!);
  const build = fs.mkdtempSync(path.join(fs.existsSync("/dev/shm") ? "/dev/shm" : "/tmp", "qimg-build-"));
  for (const outDir of ["dist", build]) {
    execFileSync(process.execPath, [tsup], {
      cwd: appDir,
      stdio: "pipe",
      timeout: 120_000,
      env: { ...process.env, QCOWKIT_CLI_OUT_DIR: outDir },
    });
  }
  project.provide("cliBuild", build);
  return () => fs.rmSync(build, { recursive: true, force: true });
}
