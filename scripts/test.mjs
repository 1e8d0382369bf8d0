#!/usr/bin/env node
// The test command: checks that the QEMU tools the interop tests need are present (installing them with
// apt-get when running as root), runs every test once through vitest, and ends with one line
// "N passed, N failed".
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { pnpmCommand } from "./pnpm.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tools = ["qemu-img", "qemu-io", "qemu-nbd", "nbdinfo", "nbdcopy", "fio", "qemu-system-x86_64", "dpkg-source", "python3", "nginx"];
const missing = () => tools.filter((t) => spawnSync("sh", ["-c", `command -v ${t}`], { stdio: "ignore" }).status !== 0);

function summary(passed, failed) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed > 0 || passed === 0 ? 1 : 0);
}

if (missing().length > 0 && process.getuid?.() === 0 && spawnSync("sh", ["-c", "command -v apt-get"]).status === 0) {
  console.log(`Installing the QEMU tools the interop tests need (${missing().join(", ")})...`);
  spawnSync("apt-get", ["update", "-qq"], { stdio: "inherit" });
  spawnSync("apt-get", ["install", "-y", "-qq", "qemu-utils", "libnbd-bin", "fio", "qemu-system-x86", "dpkg-dev", "python3", "qemu-block-extra", "nginx", "chromium"], { stdio: "inherit" });
}
if (missing().length > 0) {
  console.error(`test: missing required tools: ${missing().join(", ")} (install qemu-utils libnbd-bin fio qemu-system-x86 dpkg-dev python3)`);
  summary(0, 1);
}

const results = join(root, ".test-results.json");
rmSync(results, { force: true });
const [pnpm, ...pre] = pnpmCommand();
const args = [...pre, "exec", "vitest", "run", "--reporter=default", "--reporter=json", `--outputFile.json=${results}`, ...process.argv.slice(2)];
// Everything was built by the set-up step: tests must not rebuild dist/ while others run from it.
const r = spawnSync(pnpm, args, { cwd: root, stdio: "inherit", env: { ...process.env, CI: process.env.CI ?? "true", QCOWKIT_PREBUILT: "1" } });
if (!existsSync(results)) {
  console.error(`test: vitest produced no results (exit ${r.status})`);
  summary(0, 1);
}
const json = JSON.parse(readFileSync(results, "utf8"));
let passed = json.numPassedTests ?? 0;
let failed = json.numFailedTests ?? 0;
// A test file that fails to load counts as a failure even when it reported no tests.
for (const file of json.testResults ?? []) {
  if (file.status === "failed" && (file.assertionResults ?? []).length === 0) failed++;
}
// QEMU's own qemu-iotests (the list in scripts/iotests-ci.txt) on a full run: each test counts once.
if (process.argv.length <= 2) {
  const io = spawnSync(process.execPath, [join(root, "scripts/iotests.mjs"), "--ci"], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    timeout: 40 * 60 * 1000,
    maxBuffer: 16 * 1024 * 1024,
  });
  process.stdout.write(io.stdout ?? "");
  const m = /^iotests: (\d+) passed, (\d+) failed$/m.exec(io.stdout ?? "");
  if (m) {
    passed += Number(m[1]);
    failed += Number(m[2]);
  } else {
    console.error(`test: the iotests run printed no result (exit ${io.status})`);
    failed++;
  }
}
summary(passed, failed);
