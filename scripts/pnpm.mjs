// How to run pnpm here: the global one when present, else the pinned version through npx
// (corepack is not used: its signature check fails on these machines).
import { spawnSync } from "node:child_process";

export const PNPM_VERSION = "10.34.9";

export function pnpmCommand() {
  const r = spawnSync("pnpm", ["--version"], { stdio: "ignore" });
  if (r.status === 0) return ["pnpm"];
  return ["npx", "--yes", `pnpm@${PNPM_VERSION}`];
}
