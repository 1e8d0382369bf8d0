/**
 * Where clusters land (issue 19, iotests 060 and 271): the same seeded random writes by qemu-io and qio, then
 * `qemu-img map --output=json` with host offsets must be equal, not only the guest layout. The writes span
 * allocated and unallocated clusters (QEMU places a write's new clusters right after its previous host range
 * when free there, and all new clusters of one write together). No discards, zero+unmap or copy-on-write
 * frees: QEMU drops a freed cluster's refcount at once, qcowkit after the L2 update reaches the disk, so the
 * reuse of freed clusters differs (see notes-issue19.md).
 */
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { filterTimings, firstDifference, normalizeQemu, ok, pool, qemuImg, qemuIo, qio, subDir, tempDir } from "./helpers";

const root = tempDir("placement-diff-");
const SIZE = 4 * 1024 * 1024;
const SEEDS = [1, 2, 3];
const OPS = 40;
const VARIANTS = [
  { name: "default", create: [] as string[] },
  { name: "c4k", create: ["-o", "cluster_size=4k"] },
  { name: "extl2", create: ["-o", "extended_l2=on"] },
  { name: "extl2-backing", create: ["-o", "extended_l2=on", "-b", "base.qcow2", "-F", "qcow2"] },
];

function commands(seed: number): string[] {
  const rnd = seededRandom(seed);
  const pick = (n: number) => Math.floor(rnd() * n);
  const out: string[] = [];
  for (let i = 0; i < OPS; i++) {
    const unit = rnd() < 0.6 ? 512 : 1;
    const len = Math.max(1, pick(300_000 / unit)) * unit;
    const off = Math.min(pick(SIZE / unit) * unit, SIZE - len);
    out.push(rnd() < 0.8 ? `write -P ${1 + pick(255)} ${off} ${len}` : `write -z ${off} ${len}`);
  }
  return out;
}

describe("qio places clusters where qemu-io does", () => {
  it(`${VARIANTS.length} variants x ${SEEDS.length} seeds x ${OPS} writes: the same host offsets`, async () => {
    const failures: string[] = [];
    const jobs = VARIANTS.flatMap((v) => SEEDS.map((seed) => ({ v, seed })));
    await pool(jobs, 2, async ({ v, seed }) => {
      const label = `${v.name} seed ${seed}`;
      const dirs = [subDir(root, `${v.name}-${seed}-q`), subDir(root, `${v.name}-${seed}-o`)] as const;
      for (const dir of dirs) {
        await ok(qemuImg(["create", "-q", "-f", "qcow2", "base.qcow2", String(SIZE)], dir));
        await ok(qemuIo(["-c", `write -P 0x11 0 ${SIZE / 2}`, "base.qcow2"], dir));
        await ok(qemuImg(["create", "-q", "-f", "qcow2", ...v.create, "t.qcow2", String(SIZE)], dir));
      }
      const args = commands(seed).flatMap((c) => ["-c", c]);
      const q = await qemuIo([...args, "t.qcow2"], dirs[0]);
      const o = await qio([...args, "t.qcow2"], dirs[1]);
      const [qo, oo] = [filterTimings(normalizeQemu(q.stdout)), filterTimings(o.stdout)];
      if (q.code !== o.code || qo !== oo) {
        failures.push(`${label}: output\n${firstDifference(qo, oo)}`);
        return;
      }
      const [qm, om] = await Promise.all(dirs.map((d) => ok(qemuImg(["map", "--output=json", "t.qcow2"], d))));
      if (qm !== om) failures.push(`${label}: map with host offsets\n${firstDifference(qm!, om!)}`);
      const cmp = await qemuImg(["compare", `${dirs[0]}/t.qcow2`, `${dirs[1]}/t.qcow2`]);
      if (cmp.code !== 0) failures.push(`${label}: ${cmp.stdout}${cmp.stderr}`);
    });
    expect(failures.join("\n\n")).toBe("");
  }, 600_000);
});
