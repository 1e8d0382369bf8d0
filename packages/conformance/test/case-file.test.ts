import { describe, expect, it } from "vitest";
import { CaseFileError, parseCaseFile } from "../src/case-file";
import { unifiedDiff } from "../src/diff";
import { PIPE, quoteWords, splitWords, StepSyntaxError } from "../src/words";

const vars = new Map([
  ["TEST_DIR", "/t"],
  ["X", "a b"],
]);
const lookup = (name: string): string => {
  const value = vars.get(name);
  if (value === undefined) throw new StepSyntaxError(`unknown $${name}`);
  return value;
};

describe("step words", () => {
  it("splits on blanks, honours quotes and expands variables without splitting them", () => {
    expect(splitWords(`cmd -c "write -P 0x11 0 64k" $TEST_DIR/t.qcow2`, lookup)).toEqual([
      "cmd",
      "-c",
      "write -P 0x11 0 64k",
      "/t/t.qcow2",
    ]);
    expect(splitWords(`a $X '$X' "\\"$X\\""`, lookup)).toEqual(["a", "a b", "$X", '"a b"']);
    expect(splitWords(`a \${TEST_DIR}x ""`, lookup)).toEqual(["a", "/tx", ""]);
  });

  it("separates pipes and drops comments", () => {
    expect(splitWords(`info x | grep "a|b" # note`, lookup)).toEqual(["info", "x", PIPE, "grep", "a|b"]);
    expect(splitWords(`echo a#b`, lookup)).toEqual(["echo", "a#b"]);
  });

  it("reports syntax errors", () => {
    expect(() => splitWords(`a "b`, lookup)).toThrow(StepSyntaxError);
    expect(() => splitWords(`a 'b`, lookup)).toThrow(StepSyntaxError);
    expect(() => splitWords(`a $NOPE`, lookup)).toThrow(/unknown/);
    expect(() => splitWords(`a \${X`, lookup)).toThrow(StepSyntaxError);
  });

  it("quotes words for the transcript", () => {
    expect(quoteWords(["qemu-io", "-c", "read 0 1", "TEST_DIR/t.qcow2", "", "it's"])).toBe(
      `qemu-io -c 'read 0 1' TEST_DIR/t.qcow2 '' 'it'\\''s'`,
    );
  });
});

describe("case files", () => {
  it("reads the header and the steps, joining continued lines", () => {
    const c = parseCaseFile(
      "012-some-name.case",
      [
        "# Title: a title",
        "# Groups: quick data-file",
        "# Requires: nbd",
        "# Difference mine: we print more",
        "# A free comment: with a colon",
        "",
        "echo one",
        "# a comment",
        "$QEMU_IMG info \\",
        "   $TEST_IMG",
        "",
      ].join("\n"),
    );
    expect(c.id).toBe("012");
    expect(c.title).toBe("a title");
    expect(c.groups).toEqual(["quick", "data-file"]);
    expect(c.requires).toEqual(["nbd"]);
    expect(c.differences.get("mine")).toBe("we print more");
    expect(c.steps).toEqual([
      { line: 7, text: "echo one" },
      { line: 9, text: "$QEMU_IMG info  $TEST_IMG" },
    ]);
  });

  it("refuses malformed files", () => {
    expect(() => parseCaseFile("12-x.case", "# Title: t\n# Groups: g\necho")).toThrow(CaseFileError);
    expect(() => parseCaseFile("012-x.case", "# Groups: g\necho")).toThrow(/Title/);
    expect(() => parseCaseFile("012-x.case", "# Title: t\necho")).toThrow(/Groups/);
    expect(() => parseCaseFile("012-x.case", "# Title: t\n# Groups: g\n")).toThrow(/no steps/);
    expect(() => parseCaseFile("012-x.case", "# Title: t\n# Groups: g\n# Requires: gpu\necho")).toThrow(/requirement/);
  });
});

describe("unified diff", () => {
  it("is empty for equal text and shows changed lines with context", () => {
    expect(unifiedDiff("a\nb\n", "a\nb\n", "x", "y")).toBe("");
    const d = unifiedDiff("1\n2\n3\n4\n5\n6\n7\n8\n", "1\n2\n3\n4\nfive\n6\n7\n8\n", "golden", "output");
    expect(d).toBe("--- golden\n+++ output\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n");
  });

  it("handles added and removed lines at the ends", () => {
    expect(unifiedDiff("a\n", "a\nb\n", "g", "o")).toBe("--- g\n+++ o\n@@ -1,1 +1,2 @@\n a\n+b\n");
    expect(unifiedDiff("a\nb\n", "b\n", "g", "o")).toBe("--- g\n+++ o\n@@ -1,2 +1,1 @@\n-a\n b\n");
    expect(unifiedDiff("", "x\n", "g", "o")).toBe("--- g\n+++ o\n@@ -0,0 +1,1 @@\n+x\n");
  });
});
