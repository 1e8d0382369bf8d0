/**
 * qimg against qemu-img for the maintenance commands (issue 19): the same seeded random sequence of guest
 * writes, resize (grow and shrink, unaligned sizes, every preallocation mode, with and without a backing
 * file), rebase (safe and unsafe, within the chain, to shorter and longer bases, to none), internal
 * snapshots, refcount width changes (1-64 bits, amend between them) and convert (several odd-sized sources,
 * compressed or not, with -B naming the source's backing file or another image) is applied to twin backing
 * chains, QEMU's tools on one, ours on the other.
 * After every operation: the same exit code and messages, `qemu-img compare` identical, the same
 * `qemu-img map` layout; at the end of a sequence, `qemu-img check` gives the same verdict on every image.
 * Size: SEEDS sequences x OPS operations (each also compared three ways), run two at a time.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { firstDifference, normalizeQemu, ok, pool, qemuImg, qemuIo, qimg, qio, type Run, subDir, tempDir } from "./helpers";

const root = tempDir("maint-diff-");
const SEEDS = 6;
const OPS = 12;
const IMAGES = ["base.qcow2", "mid.qcow2", "top.qcow2"] as const;

interface Layout {
  clusterSize: number;
  v2: boolean;
  extl2: boolean;
  refcountBits: number;
  sizes: [number, number, number];
}

/** One step: arguments for qemu-img/qimg ("img") or qemu-io/qio ("io"). */
interface Step {
  tool: "img" | "io";
  args: string[];
  /** Image whose guest content and map are compared after the step. */
  image: string;
  /** A file the step creates that is compared too (then removed). */
  output?: string;
}

function plan(seed: number): { layout: Layout; steps: Step[] } {
  const rnd = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const int = (n: number) => Math.floor(rnd() * n);
  const v2 = rnd() < 0.2;
  const extl2 = !v2 && rnd() < 0.3;
  const clusterSize = pick(extl2 ? [16384, 65536] : [4096, 65536, 65536]);
  const refcountBits = v2 ? 16 : pick([1, 2, 4, 8, 16, 32, 64]);
  // Sizes in 512-byte units, mostly not whole clusters, up to 2 MiB; base may be shorter or longer.
  const size = () => (1 + int(4096)) * 512;
  const sizes: [number, number, number] = [size(), size(), size()];
  const layout: Layout = { clusterSize, v2, extl2, refcountBits, sizes };
  const virtual = [...sizes];
  const backingOf: Array<string | undefined> = [undefined, "base.qcow2", "mid.qcow2"];
  const steps: Step[] = [];
  const range = (limit: number) => {
    const aligned = rnd() < 0.6;
    const unit = aligned ? 512 : 1;
    const len = Math.max(1, int(Math.min(limit, 300_000) / unit)) * unit;
    const off = int(Math.max(1, Math.floor((limit - len) / unit))) * unit;
    return [off, Math.min(len, limit - off)] as const;
  };
  for (let i = 0; i < OPS; i++) {
    const k = rnd();
    const which = int(3);
    const name = IMAGES[which]!;
    if (k < 0.28) {
      const [off, len] = range(virtual[which]!);
      const cmd = rnd() < 0.7 ? `write -P ${1 + int(255)} ${off} ${len}` : `write -z ${off} ${len}`;
      steps.push({ tool: "io", args: ["-c", cmd, name], image: name });
    } else if (k < 0.46) {
      // Resize of the top image (or another one): grow or shrink, unaligned, any preallocation mode.
      const grow = rnd() < 0.55;
      const cur = virtual[which]!;
      const target = grow ? cur + (1 + int(2048)) * 512 : Math.max(512, cur - (1 + int(Math.max(1, cur / 512 - 1))) * 512);
      const prealloc = grow ? pick(["off", "off", "metadata", "falloc", "full"]) : "off";
      const args = ["resize", "-q", ...(grow ? [`--preallocation=${prealloc}`] : ["--shrink"]), name, String(target)];
      steps.push({ tool: "img", args, image: name });
      virtual[which] = target; // (a refused resize leaves the size: tracked loosely, sizes only bound ranges)
    } else if (k < 0.6) {
      // Rebase the top image: safe or unsafe, within the chain or to nothing.
      const unsafe = rnd() < 0.3;
      const to = pick(["base.qcow2", "mid.qcow2", ""]);
      const args = ["rebase", ...(unsafe ? ["-u"] : []), "-b", to, ...(to ? ["-F", "qcow2"] : []), "top.qcow2"];
      steps.push({ tool: "img", args, image: "top.qcow2" });
      backingOf[2] = to || undefined;
    } else if (k < 0.72) {
      const sub = pick(["-c", "-c", "-a", "-d"]);
      steps.push({ tool: "img", args: ["snapshot", sub, `s${int(3)}`, name], image: name });
    } else if (k < 0.84) {
      const bits = v2 ? 16 : pick([1, 2, 4, 8, 16, 32, 64]);
      steps.push({ tool: "img", args: ["amend", "-o", `refcount_bits=${bits}`, name], image: name });
    } else {
      // Convert several sources (odd sizes), compressed or not; or one source onto a backing file (-B).
      const out = `out${i}.qcow2`;
      if (rnd() < 0.35) {
        // -B names the source's own backing file (the case convert -B is for), or another image of the chain
        // (or one outside it, when top has been rebased): QEMU copies what top itself allocates either way.
        const to = backingOf[2] && rnd() < 0.5 ? backingOf[2] : pick(["base.qcow2", "mid.qcow2"]);
        const args = ["convert", "-O", "qcow2", "-B", to, "-F", "qcow2", "top.qcow2", out];
        steps.push({ tool: "img", args, image: "top.qcow2", output: out });
      } else {
        const sources = IMAGES.filter(() => rnd() < 0.6);
        if (sources.length === 0) sources.push("top.qcow2");
        const c = rnd() < 0.5 ? ["-c"] : [];
        steps.push({ tool: "img", args: ["convert", ...c, "-O", "qcow2", "-o", `cluster_size=${pick([4096, 65536])}`, ...sources, out], image: "top.qcow2", output: out });
      }
    }
  }
  return { layout, steps };
}

async function build(dir: string, l: Layout): Promise<void> {
  const o = [
    `compat=${l.v2 ? "0.10" : "1.1"}`,
    `cluster_size=${l.clusterSize}`,
    `refcount_bits=${l.refcountBits}`,
    ...(l.extl2 ? ["extended_l2=on"] : []),
  ].join(",");
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", o, "base.qcow2", String(l.sizes[0])], dir));
  await ok(qemuIo(["-c", `write -P 17 0 ${l.sizes[0]}`, "base.qcow2"], dir));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", o, "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", String(l.sizes[1])], dir));
  await ok(qemuIo(["-c", `write -P 34 0 ${Math.floor(l.sizes[1] / 1024) * 512}`, "mid.qcow2"], dir));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", o, "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", String(l.sizes[2])], dir));
}

const layoutOf = async (dir: string, file: string) => {
  const r = await qemuImg(["map", "--output=json", file], dir);
  if (r.code !== 0) return r.stderr;
  return (JSON.parse(r.stdout) as Array<Record<string, unknown>>).map(({ offset: _o, ...rest }) => JSON.stringify(rest)).join("\n");
};
const filterCheck = (r: Run) => `${r.code} ${r.stdout.replace(/Image end offset: \d+\n?/, "").replace(/\d+\/\d+ = [^\n]*\n?/, "")}`;

describe("qimg and qemu-img apply the same random maintenance sequences alike", () => {
  it(`${SEEDS} seeds x ${OPS} operations`, async () => {
    const failures: string[] = [];
    const seeds = Array.from({ length: SEEDS }, (_, i) => 19_000 + i);
    await pool(seeds, 2, async (seed) => {
      const { layout, steps } = plan(seed);
      const q = subDir(root, `${seed}-q`);
      const o = subDir(root, `${seed}-o`);
      await build(q, layout);
      await build(o, layout);
      const label = `seed ${seed} (${JSON.stringify(layout)})`;
      for (const [n, step] of steps.entries()) {
        const where = `${label}, step ${n + 1} ${step.tool} ${step.args.join(" ")}`;
        const rq = await (step.tool === "img" ? qemuImg : qemuIo)(step.args, q);
        const ro = await (step.tool === "img" ? qimg : qio)(step.args, o);
        if (rq.code !== ro.code || normalizeQemu(rq.stderr) !== ro.stderr) {
          failures.push(`${where}: exit ${rq.code} / ${ro.code}\n${firstDifference(normalizeQemu(rq.stderr), ro.stderr)}`);
          return;
        }
        for (const file of [step.image, ...(step.output ? [step.output] : [])]) {
          if (!fs.existsSync(path.join(q, file))) continue;
          const cmp = await qemuImg(["compare", "-f", "qcow2", "-F", "qcow2", path.join(q, file), path.join(o, file)]);
          if (cmp.code !== 0) {
            failures.push(`${where}: ${file}: ${cmp.stdout}${cmp.stderr}`);
            return;
          }
          const [mq, mo] = [await layoutOf(q, file), await layoutOf(o, file)];
          if (mq !== mo) {
            failures.push(`${where}: map of ${file}\n${firstDifference(mq, mo)}`);
            return;
          }
        }
        if (step.output) for (const d of [q, o]) fs.rmSync(path.join(d, step.output));
      }
      for (const file of IMAGES) {
        const [cq, co] = [filterCheck(await qemuImg(["check", file], q)), filterCheck(await qemuImg(["check", file], o))];
        if (cq !== co) failures.push(`${label}: check ${file}\n${firstDifference(cq, co)}`);
      }
    });
    expect(failures.join("\n\n")).toBe("");
  }, 900_000);
});
