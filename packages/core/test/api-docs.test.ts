/**
 * The API documentation builds from the TSDoc comments (typedoc.json) with no warning, one page per entry point.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { pnpmCommand } from "../../../scripts/pnpm.mjs";
import { tempDir } from "./helpers";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const t = tempDir("qcowkit-typedoc-");
afterAll(() => t.cleanup());

describe("API documentation (pnpm docs:api)", () => {
  it("builds without warnings, with a page for each library entry point", () => {
    const [pnpm, ...pre] = pnpmCommand();
    const r = spawnSync(pnpm!, [...pre, "exec", "typedoc", "--out", t.dir], { cwd: root, encoding: "utf8" });
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(existsSync(join(t.dir, "index.html"))).toBe(true);
    const pages = readdirSync(join(t.dir, "modules"));
    for (const mod of ["spec", "cluster", "refcount", "datafile", "datafile_node", "nbd-protocol", "core", "core_node", "core_browser"]) {
      expect(pages).toContain(`_qcowkit_${mod}.html`);
    }
  }, 180_000);
});
