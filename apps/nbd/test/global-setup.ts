import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/** Builds dist/qnbd.js from the current source so the CLI tests never run a stale bundle. */
export default function setup(): void {
  const appDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const require = createRequire(import.meta.url);
  const tsupPackage = require.resolve("tsup/package.json");
  const bin = (JSON.parse(fs.readFileSync(tsupPackage, "utf8")) as { bin: Record<string, string> }).bin.tsup!;
  execFileSync(process.execPath, [path.join(path.dirname(tsupPackage), bin)], { cwd: appDir, stdio: "pipe", timeout: 120_000 });
}
