/**
 * qimg convert and qimg compare against qemu-img: the same commands on twin directories give the same output
 * and exit code; converted images are identical in content to QEMU's (qemu-img compare), pass qemu-img check,
 * and have the same allocation map; round trips through raw and qcow2 compare identical.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { firstDifference, normalizeQemu, ok, pool, qemuImg, qemuIo, qimg, subDir, tempDir } from "./helpers";

const root = tempDir("qimg-convert-");
const SOURCES = path.join(root, "sources");

/** Source images made by QEMU: name -> [create args..., size] and qemu-io commands. */
const SOURCE_SPECS: Array<{ name: string; create: string[]; io: string[]; fmt?: string }> = [
  { name: "plain.qcow2", create: ["-f", "qcow2", "plain.qcow2", "8M"], io: ["write -P 1 0 1M", "write -z 2M 64k", "write -P 2 3M 4k", "write -P 0 5M 64k", "write -P 3 7M 100"] },
  { name: "empty.qcow2", create: ["-f", "qcow2", "empty.qcow2", "4M"], io: [] },
  { name: "v2.qcow2", create: ["-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", "v2.qcow2", "6M"], io: ["write -P 5 4k 12k", "write -P 6 1M 2M"] },
  { name: "extl2.qcow2", create: ["-f", "qcow2", "-o", "extended_l2=on", "extl2.qcow2", "8M"], io: ["write -P 7 0 5k", "write -z -u 1M 512k", "write -P 8 2M 3M"] },
  { name: "compressed.qcow2", create: ["-f", "qcow2", "compressed.qcow2", "4M"], io: ["write -c -P 9 0 64k", "write -c -P 10 1M 64k", "write -P 11 2M 8k"] },
  { name: "zstd.qcow2", create: ["-f", "qcow2", "-o", "compression_type=zstd", "zstd.qcow2", "4M"], io: ["write -c -P 12 0 128k", "write -P 13 2M 64k"] },
  { name: "datafile.qcow2", create: ["-f", "qcow2", "-o", "data_file=datafile.raw", "datafile.qcow2", "4M"], io: ["write -P 14 0 256k", "write -z 1M 64k"] },
  { name: "base.qcow2", create: ["-f", "qcow2", "base.qcow2", "8M"], io: ["write -P 15 0 4M"] },
  { name: "top.qcow2", create: ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"], io: ["write -P 16 1M 1M", "write -z 3M 64k", "discard 2M 64k"] },
  { name: "data.raw", create: ["-f", "raw", "data.raw", "6M"], io: ["write -P 17 0 1M", "write -P 0 1M 1M", "write -P 18 5M 1M"], fmt: "raw" },
  { name: "odd.qcow2", create: ["-f", "qcow2", "odd.qcow2", "1000k"], io: ["write -P 19 900k 100k"] },
];

beforeAll(async () => {
  fs.mkdirSync(SOURCES, { recursive: true });
  for (const s of SOURCE_SPECS) {
    await ok(qemuImg(["create", "-q", ...s.create], SOURCES));
    if (s.io.length > 0) await ok(qemuIo(["-f", s.fmt ?? "qcow2", ...s.io.flatMap((c) => ["-c", c]), s.name], SOURCES));
  }
});

/** Twin directories holding the sources (by absolute path) for one case. */
function twins(label: string): { theirs: string; ours: string } {
  return { theirs: subDir(root, `${label}-q`), ours: subDir(root, `${label}-o`) };
}

const src = (name: string) => path.join(SOURCES, name);

/** convert cases: arguments after "convert" (OUT names the output in the case's directory). */
const CONVERT_CASES: string[][] = [];
const conv = (...args: string[]) => CONVERT_CASES.push(args);
for (const s of SOURCE_SPECS) {
  conv("-O", "raw", src(s.name), "OUT");
  conv("-O", "qcow2", src(s.name), "OUT");
}
conv("-O", "qcow2", "-c", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-c", "-o", "compression_type=zstd", src("extl2.qcow2"), "OUT");
conv("-O", "qcow2", "-c", src("data.raw"), "OUT");
conv("-O", "qcow2", "-S", "0", src("plain.qcow2"), "OUT");
conv("-O", "raw", "-S", "0", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-S", "64k", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-S", "512", src("data.raw"), "OUT");
conv("-O", "qcow2", "-o", "cluster_size=4k,compat=0.10", src("extl2.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64", src("v2.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "data_file=OUT.data", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "data_file=OUT.data,data_file_raw=on", src("top.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "preallocation=metadata", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "preallocation=falloc", src("compressed.qcow2"), "OUT");
conv("-O", "qcow2", "-B", src("base.qcow2"), "-F", "qcow2", src("top.qcow2"), "OUT");
conv("-O", "qcow2", "-B", src("base.qcow2"), src("top.qcow2"), "OUT");
conv("-O", "qcow2", "-o", `backing_file=${src("base.qcow2")},backing_fmt=qcow2`, src("plain.qcow2"), "OUT");
conv("-O", "qcow2", src("plain.qcow2"), src("v2.qcow2"), src("data.raw"), "OUT");
conv("-f", "raw", "-O", "qcow2", src("plain.qcow2"), "OUT");
conv("-p", "-O", "qcow2", src("plain.qcow2"), "OUT");
conv("-p", "-O", "raw", src("empty.qcow2"), "OUT");
conv("-p", "-q", "-O", "raw", src("plain.qcow2"), "OUT");
conv("-c", "-O", "raw", src("plain.qcow2"), "OUT");
conv("-c", "-O", "qcow2", "-o", "data_file=OUT.data", src("plain.qcow2"), "OUT");
conv("-c", "-O", "qcow2", "-o", "preallocation=metadata", src("plain.qcow2"), "OUT");
conv("-C", "-c", "-O", "qcow2", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "cluster_size=1000", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "foo=bar", src("plain.qcow2"), "OUT");
conv("-O", "foo", src("plain.qcow2"), "OUT");
conv("-O", "qcow2", "-o", "help");
conv("-o", "help", src("plain.qcow2"), "OUT");
conv("-S", "1000", src("plain.qcow2"), "OUT");
conv("-S", "1x", src("plain.qcow2"), "OUT");
conv("-S", "32M", src("plain.qcow2"), "OUT");
conv("-m", "0", src("plain.qcow2"), "OUT");
conv("-t", "foo", "-O", "qcow2", src("plain.qcow2"), "OUT");
conv("-T", "foo", src("plain.qcow2"), "OUT");
conv("--target-is-zero", src("plain.qcow2"), "OUT");
conv(src("plain.qcow2"));
conv(src("nonexist.qcow2"), "OUT");
conv("-O", "qcow2", "-B", src("base.qcow2"), "-F", "qcow2", src("top.qcow2"), src("plain.qcow2"), "OUT");

/** -n cases: the target exists first (created by qemu-img with these arguments). */
const EXISTING: Array<{ create: string[]; args: string[] }> = [
  { create: ["-f", "qcow2", "OUT", "8M"], args: ["-n", "-O", "qcow2", src("plain.qcow2"), "OUT"] },
  { create: ["-f", "qcow2", "OUT", "16M"], args: ["-n", "-O", "qcow2", src("top.qcow2"), "OUT"] },
  { create: ["-f", "raw", "OUT", "8M"], args: ["-n", src("plain.qcow2"), "OUT"] },
  { create: ["-f", "qcow2", "OUT", "8M"], args: ["-n", "--target-is-zero", "-O", "qcow2", src("plain.qcow2"), "OUT"] },
  { create: ["-f", "qcow2", "OUT", "1M"], args: ["-n", "-O", "qcow2", src("plain.qcow2"), "OUT"] },
  { create: ["-f", "qcow2", "OUT", "8M"], args: ["-n", "-O", "qcow2", "-o", "cluster_size=4k", src("plain.qcow2"), "OUT"] },
];

function fill(args: string[], dir: string): string[] {
  return args.map((a) => a.replace(/^OUT/, path.join(dir, "out")).replace(/=OUT/, `=${path.join(dir, "out")}`));
}

async function checkConverted(label: string, theirs: string, ours: string, failures: string[]): Promise<void> {
  const q = path.join(theirs, "out");
  const o = path.join(ours, "out");
  if (!fs.existsSync(q) || !fs.existsSync(o)) return;
  const cmp = await qemuImg(["compare", q, o]);
  if (cmp.code !== 0) failures.push(`${label}: qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
  const qInfo = JSON.parse((await qemuImg(["info", "-U", "--output=json", q])).stdout || "{}");
  const oInfo = JSON.parse((await qemuImg(["info", "-U", "--output=json", o])).stdout || "{}");
  if (qInfo.format !== "qcow2") return;
  const check = await qemuImg(["check", o]);
  if (check.code !== 0) failures.push(`${label}: qemu-img check: ${check.stdout}${check.stderr}`);
  for (const info of [qInfo, oInfo]) {
    delete info["actual-size"];
    delete info.filename;
    const data = info["format-specific"]?.data;
    if (data?.["data-file"]) data["data-file"] = "DATA";
  }
  // (Raw targets: the allocation of the file depends on the file system; the content was compared.)
  if (JSON.stringify(qInfo) !== JSON.stringify(oInfo)) failures.push(`${label}: info differs\n${JSON.stringify(qInfo)}\n${JSON.stringify(oInfo)}`);
  const qMap = (await qemuImg(["map", "--output=json", q])).stdout.split(theirs).join("DIR");
  const oMap = (await qemuImg(["map", "--output=json", o])).stdout.split(ours).join("DIR");
  if (qMap !== oMap) failures.push(`${label}: map differs\n${firstDifference(qMap, oMap)}`);
}

describe("qimg convert matches qemu-img convert", () => {
  it(`${CONVERT_CASES.length} conversions`, async () => {
    const failures: string[] = [];
    await pool(CONVERT_CASES, 3, async (args, i) => {
      const { theirs, ours } = twins(`c${i}`);
      const label = `convert ${args.join(" ").split(SOURCES).join("SRC")}`;
      const q = await qemuImg(["convert", ...fill(args, theirs)], theirs);
      const o = await qimg(["convert", ...fill(args, ours)], ours);
      const norm = (t: string, dir: string) => t.split(dir).join("DIR");
      if (q.code !== o.code || norm(q.stdout, theirs) !== norm(o.stdout, ours) || norm(normalizeQemu(q.stderr), theirs) !== norm(o.stderr, ours)) {
        failures.push(`${label}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
        return;
      }
      if (q.code === 0) await checkConverted(label, theirs, ours, failures);
    });
    expect(failures.join("\n\n")).toBe("");
  });

  it("into existing targets (-n)", async () => {
    const failures: string[] = [];
    for (const [i, c] of EXISTING.entries()) {
      const { theirs, ours } = twins(`n${i}`);
      await ok(qemuImg(["create", "-q", ...fill(c.create, theirs)]));
      await ok(qemuImg(["create", "-q", ...fill(c.create, ours)]));
      const q = await qemuImg(["convert", ...fill(c.args, theirs)]);
      const o = await qimg(["convert", ...fill(c.args, ours)]);
      const label = `convert ${c.args.join(" ").split(SOURCES).join("SRC")}`;
      if (q.code !== o.code || q.stdout !== o.stdout || normalizeQemu(q.stderr) !== o.stderr) {
        failures.push(`${label}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
        continue;
      }
      if (q.code === 0) await checkConverted(label, theirs, ours, failures);
    }
    expect(failures.join("\n\n")).toBe("");
  });

  it("round trips qcow2 -> raw -> qcow2 (and compressed) are identical", async () => {
    const dir = subDir(root, "roundtrip");
    for (const s of SOURCE_SPECS.filter((x) => !x.fmt)) {
      const raw = path.join(dir, `${s.name}.raw`);
      const back = path.join(dir, `${s.name}.back.qcow2`);
      const comp = path.join(dir, `${s.name}.c.qcow2`);
      await ok(qimg(["convert", "-O", "raw", src(s.name), raw], SOURCES));
      await ok(qimg(["convert", "-f", "raw", "-O", "qcow2", raw, back]));
      await ok(qimg(["convert", "-c", "-O", "qcow2", back, comp]));
      for (const out of [raw, back, comp]) {
        const cmp = await qemuImg(["compare", src(s.name), out], SOURCES);
        expect(`${s.name} -> ${path.basename(out)}: ${cmp.stdout}${cmp.stderr}`).toBe(`${s.name} -> ${path.basename(out)}: Images are identical.\n`);
      }
      expect((await qemuImg(["check", comp])).code).toBe(0);
    }
  });
});

describe("qimg compare matches qemu-img compare", () => {
  it("on pairs of images, with and without -s, -q, -p", async () => {
    const dir = subDir(root, "compare");
    const mk = async (name: string, size: string, ...io: string[]) => {
      await ok(qemuImg(["create", "-q", "-f", "qcow2", name, size], dir));
      if (io.length) await ok(qemuIo([...io.flatMap((c) => ["-c", c]), name], dir));
    };
    await mk("a.qcow2", "4M");
    await mk("b.qcow2", "4M");
    await mk("c.qcow2", "8M", "write -P 1 1M 512");
    await mk("d.qcow2", "8M", "write -P 1 7340132 10");
    await mk("e.qcow2", "4M", "write -P 0 1M 64k", "write -P 1 1048676 1");
    await mk("f.qcow2", "4M", "write -P 0 1M 64k");
    await mk("g.qcow2", "4M", "write -z 0 64k");
    await mk("h.qcow2", "4M", "write -P 2 0 4M");
    await mk("i.qcow2", "4M", "write -P 2 0 4M", "write -P 3 3M 1");
    await mk("j.qcow2", "8M");
    await ok(qemuImg(["create", "-q", "-f", "raw", "r.raw", "4M"], dir));
    const pairs = [
      ["a", "b"], ["a", "c"], ["c", "a"], ["a", "d"], ["d", "a"], ["a", "e"], ["a", "f"], ["e", "f"], ["a", "g"],
      ["h", "i"], ["i", "h"], ["a", "j"], ["j", "a"], ["h", "h"],
    ];
    const failures: string[] = [];
    for (const [x, y] of pairs) {
      for (const flags of [[], ["-s"], ["-q"], ["-p"], ["-p", "-s"]]) {
        const args = ["compare", ...flags, `${x}.qcow2`, `${y}.qcow2`];
        const q = await qemuImg(args, dir);
        const o = await qimg(args, dir);
        if (q.code !== o.code || q.stdout !== o.stdout || normalizeQemu(q.stderr) !== o.stderr) {
          failures.push(`${args.join(" ")}\n--- qemu (${q.code})\n${JSON.stringify(q.stdout)}${q.stderr}--- ours (${o.code})\n${JSON.stringify(o.stdout)}${o.stderr}`);
        }
      }
    }
    for (const args of [
      ["compare", "a.qcow2", "r.raw"],
      ["compare", "-s", "a.qcow2", "r.raw"],
      ["compare", "-f", "qcow2", "-F", "raw", "a.qcow2", "r.raw"],
      ["compare", "-F", "qcow2", "a.qcow2", "r.raw"],
      ["compare", "a.qcow2", "nonexist"],
      ["compare", "nonexist", "a.qcow2"],
      ["compare", "a.qcow2"],
      ["compare", "-T", "foo", "a.qcow2", "b.qcow2"],
      ["compare", "-Z", "a.qcow2", "b.qcow2"],
    ]) {
      const q = await qemuImg(args, dir);
      const o = await qimg(args, dir);
      if (q.code !== o.code || q.stdout !== o.stdout || normalizeQemu(q.stderr) !== o.stderr) {
        failures.push(`${args.join(" ")}\n--- qemu (${q.code})\n${q.stdout}${q.stderr}--- ours (${o.code})\n${o.stdout}${o.stderr}`);
      }
    }
    expect(failures.join("\n\n")).toBe("");
  });
});
