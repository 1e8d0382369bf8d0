import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../bin/qiotests.js", import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: "utf8", timeout: 300_000 });

describe("the built qiotests bin", () => {
  it("runs cases against QEMU and ends with the summary line", () => {
    const r = run("--impl", "qemu", "001", "019");
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/^001 pass /m);
    expect(r.stdout).toMatch(/^019 pass /m);
    expect(r.stdout.endsWith("2 passed, 0 failed\n")).toBe(true);
    expect(r.status).toBe(0);
  });

  it("prints its usage and rejects unknown options", () => {
    const help = run("--help");
    expect(help.status).toBe(0);
    expect(help.stdout).toContain("Usage: qiotests [OPTIONS] [CASE...]");
    const bad = run("--no-such-option");
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("qiotests: unknown option --no-such-option");
  });
});
