import { describe, expect, it } from "vitest";
import {
  applyPipeFilter,
  filterDates,
  filterDiskSize,
  filterJson,
  filterOutput,
  filterProgramNames,
  filterTestDir,
  filterTimings,
  filterVersion,
} from "../src/filters";
import { wantsJson } from "../src/filters";
import { parseJson, printJson } from "../src/json-canon";

describe("global filters", () => {
  it("prints the case directory and its real path as TEST_DIR, longest first", () => {
    const out = filterTestDir("a /dev/shm/q/001/t.qcow2 b /run/shm/q/001/x", ["/dev/shm/q/001", "/run/shm/q/001"]);
    expect(out).toBe("a TEST_DIR/t.qcow2 b TEST_DIR/x");
    expect(filterTestDir("/tmp/q/0011/t", ["/tmp/q/001", "/tmp/q/0011"])).toBe("TEST_DIR/t");
  });

  it("replaces an implementation's program names, and only whole names", () => {
    const pairs: [string, string][] = [
      ["qimg", "qemu-img"],
      ["/opt/bin/qio", "qemu-io"],
      ["qio", "qemu-io"],
    ];
    expect(filterProgramNames("qimg: Could not open 'x'", pairs)).toBe("qemu-img: Could not open 'x'");
    expect(filterProgramNames("/opt/bin/qio: can't open", pairs)).toBe("qemu-io: can't open");
    expect(filterProgramNames("Try 'qimg --help'", pairs)).toBe("Try 'qemu-img --help'");
    expect(filterProgramNames("qimgs and myqimg and qimg-x stay", pairs)).toBe("qimgs and myqimg and qimg-x stay");
  });

  it("normalises qemu-io statistics but keeps the byte counts", () => {
    const line = "64 KiB, 1 ops; 00.00 sec (114.744 MiB/sec and 1835.8999 ops/sec)";
    expect(filterTimings(line)).toBe("64 KiB, 1 ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)");
    expect(filterTimings("1 MiB, 16 ops; 0:00:01.25 (inf GiB/sec and inf ops/sec)")).toBe(
      "1 MiB, 16 ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)",
    );
    expect(filterTimings("wrote 65536/65536 bytes at offset 0")).toBe("wrote 65536/65536 bytes at offset 0");
  });

  it("hides disk usage, dates and versions", () => {
    expect(filterDiskSize("virtual size: 1 MiB\ndisk size: 196 KiB\n")).toBe("virtual size: 1 MiB\ndisk size: SIZE\n");
    expect(filterDates("1         s1      0 B 2024-05-01 10:00:00 00:00:00.000")).toBe(
      "1         s1      0 B yyyy-mm-dd hh:mm:ss 00:00:00.000",
    );
    expect(filterVersion("qemu-img version 7.2.22 (Debian 1:7.2+dfsg)\nother")).toBe("qemu-img version VERSION\nother");
  });

  it("applies every filter and ends non-empty output with a newline", () => {
    const ctx = { testDirs: ["/w/007"], programNames: [["qimg", "qemu-img"] as const] };
    expect(filterOutput("qimg: /w/007/t.qcow2: bad", ctx)).toBe("qemu-img: TEST_DIR/t.qcow2: bad\n");
    expect(filterOutput("", ctx)).toBe("");
    expect(filterOutput("a\r\nb\r\n", ctx)).toBe("a\nb\n");
  });
});

describe("canonical JSON", () => {
  it("gives the same text for the same value printed differently", () => {
    const qemu = '[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},\n{ "start": 65536, "length": 8, "depth": 0, "present": false, "zero": true, "data": false}]\n';
    const other = JSON.stringify([
      { data: true, depth: 0, length: 65536, present: true, start: 0, zero: false },
      { zero: true, data: false, start: 65536, length: 8, depth: 0, present: false },
    ]);
    expect(filterJson(qemu)).toBe(filterJson(other));
    expect(filterJson(qemu)).toBe(
      '[\n  {"data": true, "depth": 0, "length": 65536, "present": true, "start": 0, "zero": false},\n' +
        '  {"data": false, "depth": 0, "length": 8, "present": false, "start": 65536, "zero": true}\n]\n',
    );
  });

  it("keeps 64-bit numbers exactly and redacts disk usage and dates", () => {
    const out = filterJson('{"vm-state-size": 18446744073709551615, "actual-size": 4096, "date-sec": 1700000000}');
    expect(out).toContain("18446744073709551615");
    expect(out).toContain('"actual-size": "SIZE"');
    expect(out).toContain('"date-sec": "DATE"');
  });

  it("leaves text that is not one JSON document alone", () => {
    expect(filterJson("qemu-img: error\n")).toBe("qemu-img: error\n");
    expect(filterJson('{"a": 1} trailing')).toBe('{"a": 1} trailing');
    expect(parseJson('{"a": [1, 2}')).toBeUndefined();
  });

  it("pretty-prints nested objects with sorted keys", () => {
    const v = parseJson('{"b": {"y": [1, {"q": 2}], "x": "s"}, "a": null}');
    expect(v).toBeDefined();
    expect(printJson(v!)).toBe('{\n  "a": null,\n  "b": {\n    "x": "s",\n    "y": [\n      1,\n      {"q": 2}\n    ]\n  }\n}');
  });

  it("recognises JSON output requests", () => {
    expect(wantsJson(["map", "--output=json", "x"])).toBe(true);
    expect(wantsJson(["map", "--output", "json", "x"])).toBe(true);
    expect(wantsJson(["map", "--output=human", "x"])).toBe(false);
  });
});

describe("pipe filters", () => {
  const text = "b line\na line\nc other\n";
  it("grep, grep -v, sort, head, tail", () => {
    expect(applyPipeFilter(text, ["grep", "line"])).toBe("b line\na line\n");
    expect(applyPipeFilter(text, ["grep", "-v", "line"])).toBe("c other\n");
    expect(applyPipeFilter(text, ["grep", "^(a|c) "])).toBe("a line\nc other\n");
    expect(applyPipeFilter(text, ["sort"])).toBe("a line\nb line\nc other\n");
    expect(applyPipeFilter(text, ["head", "1"])).toBe("b line\n");
    expect(applyPipeFilter(text, ["tail", "2"])).toBe("a line\nc other\n");
    expect(applyPipeFilter(text, ["grep", "nothing"])).toBe("");
  });

  it("rejects unknown filters and bad arguments", () => {
    expect(() => applyPipeFilter(text, ["sed", "s/a/b/"])).toThrow(/unknown filter/);
    expect(() => applyPipeFilter(text, ["grep", "-A", "3", "x"])).toThrow(/usage/);
    expect(() => applyPipeFilter(text, ["head", "-1"])).toThrow(/usage/);
  });
});
