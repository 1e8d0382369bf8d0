import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import type { TestProject } from "vitest/node";
import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";

declare module "vitest" {
  export interface ProvidedContext {
    /** A private copy of dist/ the tests run (inside the app, so its node_modules resolve). */
    cliDist: string;
  }
}

/**
 * The tests run the built bins: build this app and the packages it uses (turbo caches unchanged ones), then
 * copy dist/ aside so that a concurrent build of the workspace cannot delete it under running tests.
 */
export default function setup(project: TestProject): () => void {
  buildWithDependencies("@qcowkit/cli");
  const appDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const copy = path.join(appDir, `.test-dist-${process.pid}`);
  fs.cpSync(path.join(appDir, "dist"), copy, { recursive: true });
  project.provide("cliDist", copy);
  return () => fs.rmSync(copy, { recursive: true, force: true });
}
