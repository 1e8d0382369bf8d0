import { beforeAll, describe, expect, it } from "vitest";
import { loadCases } from "../src/case-file";
import { PACKAGE_CASES_DIR, PACKAGE_GOLDEN_DIR } from "../src/cli";
import { qemuDriver } from "../src/drivers";
import { runSuite, type CaseResult } from "../src/suite";

// The goldens are QEMU's behaviour: every case must pass against QEMU's own tools (required, never skipped).
const cases = loadCases(PACKAGE_CASES_DIR);
const results = new Map<string, CaseResult>();

beforeAll(async () => {
  const run = await runSuite({ driver: qemuDriver(), cases, goldenDir: PACKAGE_GOLDEN_DIR });
  for (const r of run.results) results.set(r.id, r);
}, 1_800_000);

describe("qiotests --impl qemu", () => {
  it("has at least 60 cases, every one in a group", () => {
    expect(cases.length).toBeGreaterThanOrEqual(60);
    for (const c of cases) expect(c.groups.length).toBeGreaterThan(0);
  });

  it.each(cases.map((c) => [c.id, c.title]))("%s %s", (id) => {
    const r = results.get(id);
    expect(r, `no result for ${id}`).toBeDefined();
    expect(r!.status, `${r!.reason ?? ""}\n${r!.diff ?? ""}`).toBe("pass");
  });
});
