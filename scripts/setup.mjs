#!/usr/bin/env node
// One-time set-up, idempotent: pnpm (through npm when it is missing), dependencies, build.
// Runs on a machine with only Node 20 and npm.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const PNPM_VERSION = "10.34.9";

function have(cmd, args = ["--version"]) {
  const r = spawnSync(cmd, args, { stdio: "ignore" });
  return r.status === 0;
}

export function pnpmCommand() {
  if (have("pnpm")) return ["pnpm"];
  // No global pnpm: run the pinned version through npx (corepack is not used: its signature check fails here).
  return ["npx", "--yes", `pnpm@${PNPM_VERSION}`];
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", env: { ...process.env, TURBO_TELEMETRY_DISABLED: "1", TURBO_NO_UPDATE_NOTIFIER: "1" } });
  if (r.status !== 0) {
    console.error(`setup: '${[cmd, ...args].join(" ")}' failed`);
    process.exit(r.status ?? 1);
  }
}

const [pnpm, ...pre] = pnpmCommand();
if (!existsSync(join(root, "node_modules", ".modules.yaml")) || process.env.QCOWKIT_FORCE_INSTALL) {
  run(pnpm, [...pre, "install", "--frozen-lockfile"]);
}
run(pnpm, [...pre, "exec", "turbo", "run", "build", "--output-logs=errors-only"]);
void execFileSync;
