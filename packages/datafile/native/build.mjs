#!/usr/bin/env node
/**
 * Build the optional native addon native/build/qcowkit_fs.node with the system C compiler against
 * the running Node's own headers. Nothing is downloaded: the include directory is found next to
 * the Node binary (<prefix>/include/node), through `npm_config_nodedir`, or in an existing
 * node-gyp header cache.
 *
 * This script never fails the surrounding install or build: when there is no compiler, no headers
 * or the compile fails, it prints one line saying so and exits 0, and FileStore runs on pure
 * JavaScript (`nativeAvailable` is false).
 *
 * At `npm install` time (npm_lifecycle_event "install") nothing is compiled when the package carries a
 * prebuilt addon for this platform and architecture in prebuilds/ (made by prebuild.mjs); the loader
 * prefers a local build when one exists, so `--force` still builds one.
 *
 * Environment: CC (compiler, default cc, then gcc, clang), QCOWKIT_NATIVE=0 (skip the build),
 * QCOWKIT_NODE_INCLUDE (the directory holding node_api.h).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const nativeDir = dirname(fileURLToPath(import.meta.url));
const source = join(nativeDir, "qcowkit_fs.c");
const outputDir = join(nativeDir, "build");
const output = join(outputDir, "qcowkit_fs.node");
const force = process.argv.includes("--force");

function say(text) {
  console.log(`@qcowkit/datafile native: ${text}`);
}

function includeDirs() {
  const candidates = [];
  if (process.env.QCOWKIT_NODE_INCLUDE) candidates.push(process.env.QCOWKIT_NODE_INCLUDE);
  candidates.push(join(dirname(process.execPath), "..", "include", "node"));
  if (process.env.npm_config_nodedir) candidates.push(join(process.env.npm_config_nodedir, "include", "node"));
  const prefix = process.config?.variables?.node_prefix;
  if (typeof prefix === "string" && prefix !== "") candidates.push(join(prefix, "include", "node"));
  const version = process.versions.node;
  candidates.push(join(homedir(), ".cache", "node-gyp", version, "include", "node"));
  candidates.push(join(homedir(), ".node-gyp", version, "include", "node"));
  return candidates;
}

export function findInclude() {
  return includeDirs().find((dir) => existsSync(join(dir, "node_api.h")));
}

function upToDate() {
  if (force || !existsSync(output)) return false;
  const built = statSync(output).mtimeMs;
  return statSync(source).mtimeMs <= built && statSync(fileURLToPath(import.meta.url)).mtimeMs <= built;
}

function compilers() {
  return process.env.CC ? [process.env.CC] : ["cc", "gcc", "clang"];
}

/**
 * Compile qcowkit_fs.c into `target` with the first of `candidates` that exists (native/prebuild.mjs uses it
 * with cross compilers). `extra` goes after the usual flags.
 */
export function compile(include, target = output, candidates = compilers(), extra = []) {
  const temporary = `${target}.${process.pid}.tmp`;
  const args = ["-shared", "-fPIC", "-pthread", "-O2", "-std=c11", "-Wall", "-Wextra", ...extra, `-I${include}`, source, "-o", temporary];
  if (process.platform === "darwin") args.unshift("-undefined", "dynamic_lookup");
  let lastProblem = "no C compiler found";
  for (const compiler of candidates) {
    // A CC such as "ccache gcc" is split on spaces, as make does.
    const [command, ...prefixArgs] = compiler.trim().split(/\s+/);
    const result = spawnSync(command, [...prefixArgs, ...args], { encoding: "utf8", timeout: 120_000 });
    if (result.error) {
      lastProblem = result.error.code === "ENOENT" ? "no C compiler found" : `${command}: ${result.error.message}`;
      continue;
    }
    if (result.status === 0) {
      renameSync(temporary, target);
      return { ok: true, compiler: command, warnings: result.stderr.trim() };
    }
    rmSync(temporary, { force: true });
    const firstError = result.stderr.split("\n").find((line) => /error/i.test(line)) ?? result.stderr.trim();
    return { ok: false, problem: `${command} failed: ${firstError}` };
  }
  return { ok: false, problem: lastProblem };
}

/** Whether the prebuilt addon at `file` loads here (right architecture, a new enough glibc). */
function prebuiltLoads(file) {
  if (!existsSync(file)) return false;
  try {
    return typeof createRequire(import.meta.url)(file).abiVersion === "number";
  } catch {
    return false;
  }
}

function main() {
  if (process.env.QCOWKIT_NATIVE === "0" || process.env.QCOWKIT_NATIVE === "off") {
    say("skipped (QCOWKIT_NATIVE=0); FileStore uses the pure JavaScript fallback");
    return;
  }
  if (process.platform === "win32") {
    say("not built on Windows; FileStore uses the pure JavaScript fallback");
    return;
  }
  const prebuilt = join(nativeDir, "..", "prebuilds", `${process.platform}-${process.arch}`, "node.napi.glibc.node");
  if (process.env.npm_lifecycle_event === "install" && !force && prebuiltLoads(prebuilt)) {
    // An install from the registry: the package carries an addon built for this platform (see prebuild.mjs).
    say(`using the prebuilt addon in prebuilds/${process.platform}-${process.arch}`);
    return;
  }
  if (upToDate()) {
    say("up to date");
    return;
  }
  const include = findInclude();
  if (!include) {
    say("not built (Node's headers, node_api.h, were not found; set QCOWKIT_NODE_INCLUDE); using the pure JavaScript fallback");
    return;
  }
  mkdirSync(outputDir, { recursive: true });
  const result = compile(include);
  if (!result.ok) {
    say(`not built (${result.problem}); using the pure JavaScript fallback`);
    return;
  }
  if (result.warnings) console.log(result.warnings);
  say(`built ${join("native", "build", "qcowkit_fs.node")} with ${result.compiler}`);
}

if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (error) {
    say(`not built (${error instanceof Error ? error.message : String(error)}); using the pure JavaScript fallback`);
  }
}
