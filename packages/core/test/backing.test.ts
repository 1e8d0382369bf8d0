/**
 * Backing chains: the same random operations on an overlay (qcow2 over qcow2, qcow2 over raw, v2 and v3,
 * extended L2) by our engine and by qemu-io; the results must read the same, check clean and map alike.
 */
import { describe, expect, it } from "vitest";
import { openImage } from "../src/node";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

const SIZE = 4 * 1024 * 1024;

function ops(seed: number, clusterSize: number): string[] {
  const r = rng(seed);
  const out: string[] = [];
  for (let i = 0; i < 40; i++) {
    const unit = r() < 0.5 ? 512 : clusterSize;
    const offset = Math.floor((r() * SIZE) / unit) * unit;
    const length = Math.max(512, Math.min(SIZE - offset, Math.floor((r() * clusterSize * 3) / 512) * 512));
    if (length <= 0 || offset >= SIZE) continue;
    const k = r();
    if (k < 0.6) out.push(`write -P ${1 + Math.floor(r() * 250)} ${offset} ${length}`);
    else if (k < 0.75) out.push(`write -z ${offset} ${length}`);
    else if (k < 0.85) out.push(`write -z -u ${offset} ${length}`);
    else out.push(`discard ${offset} ${length}`);
  }
  return out;
}

async function applyOurs(path: string, cmds: string[]): Promise<void> {
  const img = await openImage(path);
  try {
    for (const c of cmds) {
      const p = c.split(" ");
      const off = Number(p[p.length - 2]);
      const len = Number(p[p.length - 1]);
      if (p[1] === "-P") await img.write(off, new Uint8Array(len).fill(Number(p[2])));
      else if (p[0] === "discard") await img.discard(off, len);
      else await img.writeZeroes(off, len, { unmap: p[2] === "-u" });
    }
  } finally {
    await img.close();
  }
}

const cases: Array<[string, string, string, string]> = [
  // name, base format, base create options, overlay create options
  ["qcow2 over qcow2", "qcow2", "", ""],
  ["qcow2 over raw", "raw", "", ""],
  ["v2 over qcow2", "qcow2", "", "compat=0.10"],
  ["extended L2 over qcow2", "qcow2", "", "extended_l2=on"],
  ["small clusters over larger base", "qcow2", "cluster_size=4096", "cluster_size=512"],
  ["overlay with data file over qcow2", "qcow2", "", "data_file=DATA"],
  ["shorter base", "qcow2", "", ""],
];

describe("writes over a backing file: ours vs qemu-io", () => {
  for (const [name, fmt, baseOpts, topOpts] of cases) {
    for (const seed of [11, 12]) {
      it(`${name} (seed ${seed})`, async () => {
        const t = tempDir();
        try {
          const baseSize = name === "shorter base" ? SIZE / 2 + 4096 : SIZE;
          const base = t.path(`base.${fmt}`);
          qemu("qemu-img", ["create", "-q", "-f", fmt, ...(baseOpts ? ["-o", baseOpts] : []), base, String(baseSize)]);
          qemu("qemu-io", ["-f", fmt, "-c", `write -P 0x5a 0 ${baseSize}`, "-c", "write -z 1M 256k", base]);
          const overlays = ["ours", "theirs"].map((n) => {
            const path = t.path(`${n}.qcow2`);
            const o = [topOpts.replace("DATA", t.path(`${n}.data`)), ""].filter(Boolean).join(",");
            qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", fmt, ...(o ? ["-o", o] : []), path, String(SIZE)]);
            return path;
          });
          const cs = /cluster_size=(\d+)/.exec(topOpts)?.[1];
          const cmds = ops(seed, cs ? Number(cs) : 65536);
          await applyOurs(overlays[0]!, cmds);
          qemu("qemu-io", ["-f", "qcow2", ...cmds.flatMap((c) => ["-c", c]), overlays[1]!]);
          const cmp = qemuStatus("qemu-img", ["compare", overlays[0]!, overlays[1]!]);
          expect(cmp.stdout + cmp.stderr).toContain("Images are identical.");
          const check = qemuStatus("qemu-img", ["check", overlays[0]!]);
          expect(check.status, check.stdout + check.stderr).toBe(0);
          const status = (p: string) =>
            (JSON.parse(qemu("qemu-img", ["map", "--output=json", p])) as Array<Record<string, unknown>>).map(
              (e) => `${e.start}+${e.length} ${e.depth} ${e.present} ${e.data ? "-" : e.zero} ${e.data}`,
            );
          expect(status(overlays[0]!)).toEqual(status(overlays[1]!));
        } finally {
          t.cleanup();
        }
      });
    }
  }
});
