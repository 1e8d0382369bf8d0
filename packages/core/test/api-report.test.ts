/**
 * The public surface of every published package is checked in under api/ (scripts/api-report.mjs): a change to
 * an export shows as a diff there, and this test fails until `pnpm api` has rewritten the report.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { apiEntries, apiReport } from "../../../scripts/api-report.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

describe("API reports (api/*.api.md)", () => {
  const entries = apiEntries();
  it("covers every library entry point", () => {
    expect(entries.map((e) => e.name)).toEqual(expect.arrayContaining(["@qcowkit/spec", "@qcowkit/core", "@qcowkit/core/node", "@qcowkit/datafile/node"]));
  });
  for (const entry of entries) {
    it(`${entry.name} matches api/${entry.report} (run pnpm build && pnpm api after changing exports)`, () => {
      const file = join(root, "api", entry.report);
      expect(existsSync(file), `api/${entry.report} is missing`).toBe(true);
      expect(apiReport(entry)).toBe(readFileSync(file, "utf8"));
    }, 60_000);
  }
});
