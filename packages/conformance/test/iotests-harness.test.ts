/**
 * The qemu-iotests harness (scripts/iotests.mjs) reads check's result lines. With -j, check's workers sometimes
 * print two results on one line; each must be counted (a CI run once lost 022's pass this way and counted it
 * as "no result").
 */
import { describe, expect, it } from "vitest";
import { resultsOfLine } from "../../../scripts/iotests.mjs";

describe("iotests harness: check's result lines", () => {
  it("splits two results printed on one line", () => {
    expect(resultsOfLine("008   pass       [16:22:01] [16:22:07]   5.9s  022   pass       [16:22:08] [16:22:15]   6.5s")).toEqual([
      "008   pass       [16:22:01] [16:22:07]   5.9s",
      "022   pass       [16:22:08] [16:22:15]   6.5s",
    ]);
  });
  it("keeps a single result, its reason included, whole", () => {
    expect(resultsOfLine("060   fail       [16:22:08] [16:22:15]   6.5s   output mismatch (see 060.out.bad)")).toEqual([
      "060   fail       [16:22:08] [16:22:15]   6.5s   output mismatch (see 060.out.bad)",
    ]);
    expect(resultsOfLine("244   not run    [16:22:08] [16:22:09]   ...   qemu-system-x86_64 not found")).toHaveLength(1);
    expect(resultsOfLine("some other output")).toEqual(["some other output"]);
  });
});
