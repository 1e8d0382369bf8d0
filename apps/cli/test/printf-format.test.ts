/**
 * The printf-style number formatting behind qemu-io's statistics lines and qemu-img's sizes, against C's own
 * printf (coreutils' /usr/bin/printf). Each double is handed over as a hexadecimal float, which strtold reads
 * exactly, so both sides round the same exact value. Exact ties (where JavaScript's toFixed and printf part
 * ways) are generated on purpose.
 */
import { execFileSync } from "node:child_process";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { cvtstr, formatFixed, formatG } from "../src/cli/size";

/** A finite double >= 0 as C's "%a" spells it, exactly. */
function hexFloat(v: number): string {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, v);
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const biased = (hi >>> 20) & 0x7ff;
  const mantissa = ((hi & 0xfffff).toString(16).padStart(5, "0") + lo.toString(16).padStart(8, "0")).replace(/0+$/, "");
  if (biased === 0) return `0x0.${mantissa || "0"}p-1022`;
  return `0x1${mantissa ? "." + mantissa : ""}p${biased - 1023}`;
}

/** printf(format, v) for every value, in one process. */
function cPrintf(format: string, values: number[]): string[] {
  const out = execFileSync("/usr/bin/printf", [`${format}\\n`, ...values.map(hexFloat)], { encoding: "utf8" });
  return out.split("\n").slice(0, values.length);
}

function sampleValues(seed: number, decimals: number): number[] {
  const next = seededRandom(seed);
  const values = [0, 1, 0.5, 0.125, 0.0625, 1e21, 2 ** 70 + 2 ** 18, Number.MIN_VALUE, 1.005, 2.675, 999.9995, 1023.9995];
  for (let i = 0; i < 300; i++) values.push(next() * 2 ** Math.floor(next() * 80 - 40));
  // Exact ties at this precision: odd multiples of 2^-(decimals + 1), and ties one step coarser.
  for (let i = 0; i < 100; i++) {
    const odd = 2 * Math.floor(next() * 100_000) + 1;
    values.push(odd / 2 ** (decimals + 1), odd / 2 ** decimals);
  }
  // Statistics-line values: byte and op rates over nanosecond-resolution durations.
  for (let i = 0; i < 100; i++) values.push(4096 / ((Math.floor(next() * 1e9) + 1) / 1e9));
  return values;
}

describe("printf-style formatting equals C's printf", () => {
  for (const decimals of [0, 1, 2, 3, 4, 6]) {
    it(`%.${decimals}f`, () => {
      const values = sampleValues(1000 + decimals, decimals);
      const expected = cPrintf(`%.${decimals}f`, values);
      values.forEach((v, i) => expect(`${hexFloat(v)} -> ${formatFixed(v, decimals)}`).toBe(`${hexFloat(v)} -> ${expected[i]}`));
    });
  }
  for (const precision of [1, 3, 4, 6]) {
    it(`%.${precision}g`, () => {
      const values = sampleValues(2000 + precision, 3).filter((v) => v !== 0);
      const expected = cPrintf(`%.${precision}g`, values);
      values.forEach((v, i) => expect(`${hexFloat(v)} -> ${formatG(v, precision)}`).toBe(`${hexFloat(v)} -> ${expected[i]}`));
    });
  }
  it("cvtstr: qemu-io's sizes, three decimals with .000 dropped, ties to even", () => {
    expect(cvtstr(0)).toBe("0 bytes");
    expect(cvtstr(512)).toBe("512 bytes");
    expect(cvtstr(0.5)).toBe("0.500000 bytes");
    expect(cvtstr(4096)).toBe("4 KiB");
    expect(cvtstr(1.5 * 2 ** 20)).toBe("1.500 MiB");
    expect(cvtstr(3.8125 * 2 ** 20)).toBe("3.812 MiB");
    expect(cvtstr(3.8135 * 2 ** 20)).toBe("3.813 MiB");
    expect(cvtstr(2 ** 30 * 1.0625)).toBe("1.062 GiB");
    expect(cvtstr(2 ** 40 * 1.0001)).toBe("1 TiB");
  });
});
