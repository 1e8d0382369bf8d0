#!/usr/bin/env node
/**
 * `pnpm attack`: hostile inputs against the built tools, with the figures issue 13 bounds. Loopback only,
 * every part under a time limit. Parts:
 *
 *   scripts/attack/images.mjs   hostile images (decompression bombs, ...) through qio/qimg, when present
 *   scripts/attack/nbd.mjs      hostile NBD clients against qnbd (handshake flood, memory budget, bomb read)
 *
 * Each part prints its own lines ("NAME: VALUE (bound B) PASS|FAIL"); this prints which parts passed and
 * exits 1 if any failed. Build first (pnpm build). Timing figures depend on the machine's load.
 * Usage: pnpm attack [PART...]   (part names: images, nbd)
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const wanted = process.argv.slice(2);
const parts = ["images", "nbd"].filter((name) => wanted.length === 0 || wanted.includes(name));
const outcome = [];
for (const name of parts) {
  const script = join(here, `${name}.mjs`);
  if (!existsSync(script)) {
    console.log(`attack: ${name}: not present (${script}), skipped`);
    continue;
  }
  console.log(`attack: ${name}`);
  const r = spawnSync(process.execPath, [script], { stdio: "inherit", timeout: 600_000, killSignal: "SIGKILL" });
  const ok = !r.error && r.status === 0;
  outcome.push(`${name} ${ok ? "PASS" : r.error ? `did not finish (${r.error.message})` : "FAIL"}`);
}
console.log(`attack: ${outcome.join(", ") || "nothing run"}`);
process.exit(outcome.every((o) => o.endsWith("PASS")) ? 0 : 1);
