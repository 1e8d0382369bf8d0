// vitest globalSetup helper for tests that run built code (bins, packed tarballs): build the package and
// everything it depends on through turbo (cached, so nearly free when nothing changed), never a stale dist/.
// The full test command builds everything once beforehand and sets QCOWKIT_PREBUILT=1, so concurrent test
// projects never rebuild (and rewrite) dist/ under each other's feet; builds are also serialised by a lock.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmdirSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const lock = join(root, "node_modules", ".qcowkit-build-lock");

function sleep(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function buildWithDependencies(packageName) {
  if (process.env.QCOWKIT_PREBUILT === "1") return;
  const deadline = Date.now() + 600_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch {
      // A lock older than 10 minutes belongs to a build that died.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 600_000) rmdirSync(lock);
      } catch {}
      if (Date.now() > deadline) throw new Error("timed out waiting for another test build");
      sleep(200);
    }
  }
  try {
    execFileSync(join(root, "node_modules", ".bin", "turbo"), ["run", "build", `--filter=${packageName}...`, "--output-logs=errors-only"], {
      cwd: root,
      stdio: "pipe",
      timeout: 600_000,
      env: { ...process.env, TURBO_TELEMETRY_DISABLED: "1", TURBO_NO_UPDATE_NOTIFIER: "1" },
    });
  } finally {
    rmdirSync(lock);
  }
}
