#!/usr/bin/env node
// One-time set-up, idempotent: pnpm (through npm when it is missing), dependencies, build.
// Runs on a machine with only Node 20 and npm.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { pnpmCommand } from "./pnpm.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

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
