// vitest globalSetup for packages whose tests run built bins: build the package and everything it
// depends on through turbo (cached, so a no-op when nothing changed), never a stale dist/.
import { execFileSync } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

export function buildWithDependencies(packageName) {
  execFileSync(join(root, "node_modules", ".bin", "turbo"), ["run", "build", `--filter=${packageName}...`, "--output-logs=errors-only"], {
    cwd: root,
    stdio: "pipe",
    timeout: 300_000,
    env: { ...process.env, TURBO_TELEMETRY_DISABLED: "1", TURBO_NO_UPDATE_NOTIFIER: "1" },
  });
}
