import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { loadCases } from "../src/case-file";
import { PACKAGE_CASES_DIR, PACKAGE_GOLDEN_DIR } from "../src/cli";
import { qcowkitDriver } from "../src/drivers";
import { runSuite, type CaseResult } from "../src/suite";

/**
 * qiotests --impl qcowkit against our own qimg, qio and qnbd. expected-qcowkit.txt lists the cases that pass
 * today; this test asserts that exactly those pass, so a regression fails here and so does a case that starts
 * passing without being added to the list.
 */
const cases = loadCases(PACKAGE_CASES_DIR);
const expectedFile = new URL("../expected-qcowkit.txt", import.meta.url);
const expected = new Set(
  readFileSync(expectedFile, "utf8")
    .split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter(Boolean),
);
const results = new Map<string, CaseResult>();

beforeAll(async () => {
  const run = await runSuite({ driver: qcowkitDriver(), cases, goldenDir: PACKAGE_GOLDEN_DIR });
  for (const r of run.results) results.set(r.id, r);
}, 1_800_000);

describe("qiotests --impl qcowkit", () => {
  it("expected-qcowkit.txt names existing cases only", () => {
    const ids = new Set(cases.map((c) => c.id));
    expect([...expected].filter((id) => !ids.has(id))).toEqual([]);
  });

  it.each(cases.map((c) => [c.id, c.title]))("%s %s", (id) => {
    const r = results.get(id);
    expect(r, `no result for ${id}`).toBeDefined();
    if (expected.has(id)) {
      expect(r!.status, `${id} is listed in expected-qcowkit.txt but: ${r!.reason ?? ""}\n${r!.diff ?? ""}`).toBe("pass");
    } else {
      expect(r!.status, `${id} passes now: add it to expected-qcowkit.txt`).not.toBe("pass");
    }
  });
});
