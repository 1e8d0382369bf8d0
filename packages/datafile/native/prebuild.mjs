#!/usr/bin/env node
/**
 * Build the prebuilt addons shipped inside @qcowkit/datafile, in prebuildify's layout, which node-gyp-build
 * also reads: prebuilds/<platform>-<arch>/node.napi.glibc.node. The addon uses Node-API only (NAPI_VERSION 8),
 * so one file per platform serves every Node release from 20 on; it is linked against glibc.
 *
 *   pnpm build:prebuilds                linux-x64 and linux-arm64 (the arm64 one with the cross compiler
 *                                       aarch64-linux-gnu-gcc: apt-get install g++-aarch64-linux-gnu)
 *   node native/prebuild.mjs linux-x64  only the targets named
 *
 * They need glibc 2.34 or later (Debian 12, Ubuntu 22.04, RHEL 9). Where the prebuilt addon does not load
 * (older glibc, musl, another platform), `npm install` compiles one with the system compiler as before.
 *
 * Fails (exit 1) when a target cannot be built: the binaries are committed, so a partial set must not pass
 * unnoticed. Rebuild and commit them whenever native/qcowkit_fs.c changes (a test compares the ABI version).
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { compile, findInclude } from "./build.mjs";

const packageDir = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Compilers per target: the native one first where this machine is that target. */
const targets = {
  "linux-x64": { compilers: ["x86_64-linux-gnu-gcc", ...(process.arch === "x64" ? ["cc", "gcc"] : [])], machine: "x86-64" },
  "linux-arm64": { compilers: ["aarch64-linux-gnu-gcc", ...(process.arch === "arm64" ? ["cc", "gcc"] : [])], machine: "AArch64" },
};

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in targets)) {
    console.error(`prebuild: unknown target '${name}' (known: ${Object.keys(targets).join(", ")})`);
    process.exit(1);
  }
}
const include = findInclude();
if (!include) {
  console.error("prebuild: Node's headers (node_api.h) were not found; set QCOWKIT_NODE_INCLUDE");
  process.exit(1);
}
let failed = false;
for (const [name, target] of Object.entries(targets)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue;
  const dir = join(packageDir, "prebuilds", name);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "node.napi.glibc.node");
  // -s: no symbols (smaller); no build id, so the same source and compiler give the same bytes.
  const result = compile(include, file, target.compilers, ["-s", "-Wl,--build-id=none"]);
  if (!result.ok) {
    console.error(`prebuild: ${name}: ${result.problem}`);
    failed = true;
    continue;
  }
  const header = spawnSync("readelf", ["-h", file], { encoding: "utf8" });
  const machine = /Machine:\s+(.*)/.exec(header.stdout ?? "")?.[1] ?? "?";
  if (header.status === 0 && !machine.toLowerCase().includes(target.machine.toLowerCase())) {
    console.error(`prebuild: ${name}: ${result.compiler} produced a ${machine} binary`);
    failed = true;
    continue;
  }
  console.log(`prebuild: ${name}: ${join("prebuilds", name, "node.napi.glibc.node")} (${statSync(file).size} bytes, ${result.compiler}, ${machine})`);
}
process.exit(failed ? 1 : 0);
