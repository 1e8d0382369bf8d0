import { chmodSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A scratch directory for a test. */
export function scratchDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `qiotests-${prefix}-`));
}

/**
 * Writes an executable Node script that runs `program` with its own arguments and passes the output through
 * `transform` (a function body over `out`, `err` and `status` that returns [out, err, status]): a deliberately
 * different implementation built on QEMU's tools.
 */
export function wrapperScript(dir: string, name: string, program: string, transform: string): string {
  const path = join(dir, name);
  writeFileSync(
    path,
    [
      "#!/usr/bin/env node",
      'import { spawnSync } from "node:child_process";',
      `const r = spawnSync(${JSON.stringify(program)}, process.argv.slice(2), { encoding: "utf8" });`,
      `const [out, err, status] = ((out, err, status) => { ${transform} })(r.stdout, r.stderr, r.status ?? 1);`,
      "process.stdout.write(out);",
      "process.stderr.write(err);",
      "process.exitCode = status;",
      "",
    ].join("\n"),
  );
  chmodSync(path, 0o755);
  return path;
}
