import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadCases } from "../src/case-file";
import { main, PACKAGE_CASES_DIR, PACKAGE_GOLDEN_DIR } from "../src/cli";
import { customDriver, qemuDriver } from "../src/drivers";
import { runCase, validateCase } from "../src/run-case";
import { runSuite, selectCases } from "../src/suite";
import { parseCaseFile } from "../src/case-file";
import { scratchDir, wrapperScript } from "./helpers";

const allCases = loadCases(PACKAGE_CASES_DIR);
const pick = (...ids: string[]) => selectCases(allCases, { ids });

describe("a deliberately different implementation fails", () => {
  it("when one output line differs (a qemu-img that words check's verdict differently)", async () => {
    const dir = scratchDir("broken");
    const img = wrapperScript(
      dir,
      "broken-img.mjs",
      "qemu-img",
      'return [out.replace("No errors were found on the image.", "No errors found on the image."), err, status];',
    );
    const r = await runSuite({ driver: customDriver({ img, io: "qemu-io" }), cases: pick("001"), goldenDir: PACKAGE_GOLDEN_DIR });
    expect(r.failed).toBe(1);
    expect(r.results[0]?.status).toBe("fail");
    expect(r.results[0]?.diff).toContain("-No errors were found on the image.");
    expect(r.results[0]?.diff).toContain("+No errors found on the image.");
  });

  it("when exit statuses differ (a qemu-io that always exits 0)", async () => {
    const dir = scratchDir("exit0");
    const io = wrapperScript(dir, "happy-io.mjs", "qemu-io", "return [out, err, 0];");
    const r = await runSuite({ driver: customDriver({ img: "qemu-img", io }), cases: pick("014"), goldenDir: PACKAGE_GOLDEN_DIR });
    expect(r.results[0]?.status).toBe("fail");
    expect(r.results[0]?.diff).toContain("-[exit 1]");
  });

  it("when data differs (a qemu-io whose pattern reads all fail)", async () => {
    const dir = scratchDir("pattern");
    const io = wrapperScript(
      dir,
      "bad-io.mjs",
      "qemu-io",
      'return [out, err + (out.includes("read ") ? "Pattern verification failed at offset 0, 1 bytes\\n" : ""), status];',
    );
    const r = await runSuite({ driver: customDriver({ img: "qemu-img", io }), cases: pick("024"), goldenDir: PACKAGE_GOLDEN_DIR });
    expect(r.results[0]?.status).toBe("fail");
    expect(r.results[0]?.diff).toContain("+Pattern verification failed");
  });

  it("but not when only its program name differs, which the filters neutralise", async () => {
    const dir = scratchDir("named");
    const img = wrapperScript(dir, "myimg", "qemu-img", 'return [out, err.replace(/qemu-img:/g, "myimg:"), status];');
    const r = await runSuite({ driver: customDriver({ img, io: "qemu-io" }), cases: pick("009"), goldenDir: PACKAGE_GOLDEN_DIR });
    expect(r.results[0]?.reason).toBeUndefined();
    expect(r.results[0]?.status).toBe("pass");
  });
});

describe("documented differences and golden updates", () => {
  const caseText = (id: string, difference: boolean) =>
    [
      `# Title: case ${id}`,
      "# Groups: test",
      ...(difference ? ["# Difference custom: this implementation words the check verdict differently"] : []),
      "",
      "$QEMU_IMG create -f qcow2 $TEST_IMG 1M",
      "$QEMU_IMG check $TEST_IMG",
      "",
    ].join("\n");

  it("a declared difference is judged by its own golden file; goldens of QEMU's behaviour only come from QEMU", async () => {
    const dir = scratchDir("diff");
    const casesDir = join(dir, "cases");
    const goldenDir = join(dir, "golden");
    mkdirSync(casesDir);
    mkdirSync(goldenDir);
    writeFileSync(join(casesDir, "900-with-difference.case"), caseText("900", true));
    writeFileSync(join(casesDir, "901-without.case"), caseText("901", false));
    const cases = loadCases(casesDir);
    const img = wrapperScript(dir, "other-img.mjs", "qemu-img", 'return [out.replace("were found", "found"), err, status];');
    const other = customDriver({ img, io: "qemu-io" });

    const fromQemu = await runSuite({ driver: qemuDriver(), cases, goldenDir, updateGolden: true });
    expect(fromQemu.results.map((r) => r.reason)).toEqual(["wrote golden/900.out", "wrote golden/901.out"]);
    expect(readFileSync(join(goldenDir, "900.out"), "utf8")).toContain("No errors were found on the image.");

    const updated = await runSuite({ driver: other, cases, goldenDir, updateGolden: true });
    expect(updated.results[0]?.reason).toBe("wrote golden/900.custom.out");
    expect(updated.results[1]?.status).toBe("fail");
    expect(updated.results[1]?.reason).toMatch(/records QEMU's behaviour/);
    expect(readFileSync(join(goldenDir, "901.out"), "utf8")).toContain("No errors were found on the image.");

    const judged = await runSuite({ driver: other, cases, goldenDir });
    expect(judged.results[0]).toMatchObject({ status: "pass", reason: expect.stringMatching(/^documented difference: /) });
    expect(judged.results[1]?.status).toBe("fail");
    expect((await runSuite({ driver: qemuDriver(), cases, goldenDir })).passed).toBe(2);
  });

  it("a missing golden file is a failure", async () => {
    const dir = scratchDir("nogolden");
    const cases = [parseCaseFile("902-x.case", caseText("902", false))];
    const r = await runSuite({ driver: qemuDriver(), cases, goldenDir: dir });
    expect(r.results[0]).toMatchObject({ status: "fail", reason: expect.stringMatching(/no golden\/902.out/) });
  });
});

describe("cases that cannot run", () => {
  it("an NBD case is reported as not run for a driver without an NBD server", async () => {
    const r = await runSuite({ driver: customDriver({ img: "qemu-img", io: "qemu-io" }), cases: pick("078"), goldenDir: PACKAGE_GOLDEN_DIR });
    expect(r.results[0]).toMatchObject({ status: "not run", reason: expect.stringMatching(/NBD server/) });
    expect(r).toMatchObject({ passed: 0, failed: 0, notRun: 1 });
  });

  it("every shipped case is well formed", () => {
    expect(allCases.length).toBeGreaterThanOrEqual(60);
    for (const c of allCases) expect(() => validateCase(c)).not.toThrow();
  });

  it("malformed steps are refused before anything runs", async () => {
    const bad = parseCaseFile("903-x.case", "# Title: t\n# Groups: g\n\necho hi\nfrobnicate $TEST_IMG\n");
    expect(() => validateCase(bad)).toThrow(/903-x.case:5: unknown command "frobnicate"/);
    const misuse = parseCaseFile("904-x.case", '# Title: t\n# Groups: g\n\necho "$QEMU_IMG"\n');
    expect(() => validateCase(misuse)).toThrow(/may only name the command/);
    const r = await runSuite({ driver: qemuDriver(), cases: [bad], goldenDir: scratchDir("bad") });
    expect(r.results[0]).toMatchObject({ status: "fail", reason: expect.stringMatching(/unknown command/) });
  });

  it("nbd_start insists on a persistent server", async () => {
    const c = parseCaseFile("905-x.case", "# Title: t\n# Groups: g\n# Requires: nbd\n\nnbd_start -f qcow2 $TEST_IMG\n");
    const out = await runCase(c, { driver: qemuDriver(), workRoot: scratchDir("nbd") });
    expect(out).toContain("nbd_start: the server must be persistent (-t)\n[exit 1]\n");
  });
});

describe("the qiotests command", () => {
  const capture = () => {
    const io = { out: "", err: "", write: (t: string) => void (io.out += t), error: (t: string) => void (io.err += t) };
    return io;
  };

  it("prints one line per case and the summary; exit 0 when all pass", async () => {
    const io = capture();
    expect(await main(["--impl", "qemu", "1", "002-create-compat-v2"], io)).toBe(0);
    expect(io.out).toMatch(/^001 pass +create with default options/m);
    expect(io.out).toMatch(/^002 pass /m);
    expect(io.out.endsWith("2 passed, 0 failed\n")).toBe(true);
  });

  it("exits 1 with the diff when a case fails", async () => {
    const dir = scratchDir("cli");
    mkdirSync(join(dir, "cases"));
    mkdirSync(join(dir, "golden"));
    writeFileSync(join(dir, "cases", "906-x.case"), "# Title: t\n# Groups: g\n\necho hello\n");
    writeFileSync(join(dir, "golden", "906.out"), "QA output created by 906\nhullo\n");
    const io = capture();
    expect(await main(["--impl", "qemu", "--cases", join(dir, "cases"), "--golden", join(dir, "golden")], io)).toBe(1);
    expect(io.out).toContain("906 fail    t\n");
    expect(io.out).toContain("    -hullo\n    +hello\n");
    expect(io.out.endsWith("0 passed, 1 failed\n")).toBe(true);
  });

  it("lists cases by group and rejects bad usage with exit 2", async () => {
    const io = capture();
    expect(await main(["--list", "-g", "nbd"], io)).toBe(0);
    expect(io.out.trim().split("\n").map((l) => l.slice(0, 3))).toEqual(["078", "079", "080"]);
    for (const args of [["--frob"], ["--impl", "bochs"], ["--img", "x"], ["-j", "0"], ["999"], ["-g", "no-such-group"]]) {
      const bad = capture();
      expect(await main(args, bad)).toBe(2);
      expect(bad.err).toMatch(/^qiotests: /);
    }
  });

  it("a custom implementation needs at least its img and io commands", async () => {
    const io = capture();
    expect(await main(["--impl", "custom", "--img", "qemu-img", "001"], io)).toBe(2);
    expect(io.err).toContain("--impl custom needs --img CMD and --io CMD");
    const missing = capture();
    expect(await main(["--impl", "custom", "--img", "no-such-tool-xyz", "--io", "qemu-io", "001"], missing)).toBe(2);
    expect(missing.err).toContain("no-such-tool-xyz not found");
  });
});
