/**
 * qimg amend, snapshot, commit, rebase, measure, bitmap and dd against qemu-img 7.2, scenario by scenario:
 * the same images are made with QEMU's tools in two folders, qemu-img runs the command in one and qimg in the
 * other; exit status, stdout and stderr must match, and so must every image afterwards: qemu-img check's
 * verdict, qemu-img info --output=json (without actual-size and snapshot dates), the guest content, and the
 * content of every internal snapshot. bench: option errors and its output lines.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { normalizeQemu, ok, qemuImg, qemuIo, qimg, run, subDir, tempDir, type Run } from "./helpers";

const root = tempDir("qimg-maint-");

type Step = ["img" | "io", ...string[]];

/** Setup steps in `dir` with QEMU's tools; `$` in an argument stands for nothing (keeps lists readable). */
async function setup(dir: string, steps: readonly Step[]): Promise<void> {
  for (const [tool, ...args] of steps) {
    const r = tool === "img" ? await qemuImg(args, dir) : await qemuIo(args, dir);
    if (r.code !== 0 && !args.includes("sigraise 9")) throw new Error(`setup ${tool} ${args.join(" ")}: ${r.stderr}`);
  }
}

/** What can legitimately differ: QEMU's node names, dates, progress bars of block jobs. */
function normalize(text: string): string {
  return normalizeQemu(text).replace(/#block\d+/g, "#block");
}

interface ImageState {
  check: { code: number; verdict: string };
  info: unknown;
  content: string;
  snapshots: Record<string, string>;
}

function hashOf(file: string): string {
  if (!fs.existsSync(file)) return "missing";
  const fd = fs.openSync(file, "r");
  const buf = Buffer.alloc(4 * 1024 * 1024);
  let h = 0x811c9dc5;
  let total = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, total);
      if (n === 0) break;
      for (let i = 0; i < n; i += 7) h = Math.imul(h ^ buf[i]!, 16777619) >>> 0;
      total += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return `${total}:${h.toString(16)}`;
}

function stripInfo(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stripInfo);
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (k === "actual-size" || k === "date-sec" || k === "date-nsec") continue;
      o[k] = stripInfo(x);
    }
    return o;
  }
  return v;
}

/** The state of every qcow2 image of `dir`, judged with QEMU's tools. */
async function imagesOf(dir: string): Promise<Record<string, ImageState>> {
  const out: Record<string, ImageState> = {};
  for (const name of fs.readdirSync(dir).filter((f) => f.endsWith(".qcow2")).sort()) {
    const check = await qemuImg(["check", "-U", name], dir);
    const info = await qemuImg(["info", "-U", "--output=json", name], dir);
    const flat = path.join(dir, `${name}.flat`);
    fs.rmSync(flat, { force: true });
    await qemuImg(["convert", "-U", "-O", "raw", name, flat], dir);
    const state: ImageState = {
      check: { code: check.code, verdict: (check.stdout + check.stderr).split("\n").filter((l) => !/allocated|Image end offset/.test(l)).join("\n") },
      info: info.code === 0 ? stripInfo(JSON.parse(info.stdout)) : info.stderr,
      content: hashOf(flat),
      snapshots: {},
    };
    fs.rmSync(flat, { force: true });
    const list = info.code === 0 ? ((JSON.parse(info.stdout) as { snapshots?: Array<{ id: string }> }).snapshots ?? []) : [];
    for (const s of list) {
      const snapFile = path.join(dir, `${name}.${s.id}.flat`);
      await qemuImg(["convert", "-U", "-l", `snapshot.id=${s.id}`, "-O", "raw", name, snapFile], dir);
      state.snapshots[s.id] = hashOf(snapFile);
      fs.rmSync(snapFile, { force: true });
    }
    out[name] = state;
  }
  return out;
}

let caseNo = 0;

/** Run `args` with qemu-img and with qimg on identical images and compare everything. */
async function differential(steps: readonly Step[], args: string[], opts: { progress?: boolean } = {}): Promise<Run> {
  const base = subDir(root, `c${++caseNo}`);
  const q = subDir(base, "q");
  const o = subDir(base, "o");
  await setup(q, steps);
  await setup(o, steps);
  const theirs = await qemuImg(args, q);
  const ours = await qimg(args, o);
  const strip = (t: string) => (opts.progress ? t.replace(/ {4}\(\d+\.\d\d\/100%\)\r/g, "") : t);
  expect({ code: ours.code, stdout: strip(ours.stdout), stderr: normalize(ours.stderr) }).toEqual({
    code: theirs.code,
    stdout: strip(normalize(theirs.stdout)),
    stderr: normalize(theirs.stderr),
  });
  expect(await imagesOf(o)).toEqual(await imagesOf(q));
  return ours;
}

const mk = (name: string, size: string, ...opts: string[]): Step => ["img", "create", "-q", "-f", "qcow2", ...opts, name, size];
const io = (name: string, ...cmds: string[]): Step => ["io", ...cmds.flatMap((c) => ["-c", c]), name];

const plain: Step[] = [mk("img.qcow2", "64M"), io("img.qcow2", "write -P 1 0 1M", "write -z 2M 1M", "write -c -P 3 4M 64k")];
const v2snap: Step[] = [
  mk("img.qcow2", "64M", "-o", "compat=0.10"),
  io("img.qcow2", "write -P 1 0 1M"),
  ["img", "snapshot", "-c", "s1", "img.qcow2"],
  io("img.qcow2", "write -P 2 512k 64k"),
];
const backed: Step[] = [
  mk("b.qcow2", "64M"),
  io("b.qcow2", "write -P 9 0 64M"),
  mk("img.qcow2", "64M", "-b", "b.qcow2", "-F", "qcow2"),
  io("img.qcow2", "write -P 1 0 1M", "write -z 2M 1M", "write -z 8M 64k"),
  ["img", "snapshot", "-c", "s1", "img.qcow2"],
  io("img.qcow2", "write -z 4M 1M", "write -P 5 8M 64k"),
];
const dataFile: Step[] = [mk("img.qcow2", "64M", "-o", "data_file=img.raw"), io("img.qcow2", "write -P 1 0 1M")];
const dataFileRaw: Step[] = [mk("img.qcow2", "64M", "-o", "data_file=img.raw,data_file_raw=on")];
const lazyDirty: Step[] = [mk("img.qcow2", "64M", "-o", "lazy_refcounts=on"), io("img.qcow2", "write -P 1 0 64k", "sigraise 9")];

describe("qimg amend", () => {
  const cases: Array<[string, Step[], string[]]> = [
    ["downgrade", plain, ["-o", "compat=0.10", "img.qcow2"]],
    ["unknown compat", plain, ["-o", "compat=0.42", "img.qcow2"]],
    ["unknown option", plain, ["-o", "foo=bar", "img.qcow2"]],
    ["creation-only option", plain, ["-o", "cluster_size=4k", "img.qcow2"]],
    ["creation-only encryption", plain, ["-o", "encryption=on", "img.qcow2"]],
    ["creation-only preallocation", plain, ["-o", "preallocation=full", "img.qcow2"]],
    ["lazy refcounts on", plain, ["-o", "lazy_refcounts=on", "img.qcow2"]],
    ["refcount_bits=1", plain, ["-o", "refcount_bits=1", "img.qcow2"]],
    ["refcount_bits=64", plain, ["-o", "refcount_bits=64", "img.qcow2"]],
    ["refcount_bits=3", plain, ["-o", "refcount_bits=3", "img.qcow2"]],
    ["grow", plain, ["-o", "size=128M", "img.qcow2"]],
    ["shrink", plain, ["-o", "size=32M", "img.qcow2"]],
    ["data_file without one", plain, ["-o", "data_file=x", "img.qcow2"]],
    ["data_file_raw=on on a plain image", plain, ["-o", "data_file_raw=on", "img.qcow2"]],
    ["backing file change refused", plain, ["-o", "backing_file=x", "img.qcow2"]],
    ["downgrade with progress", plain, ["-p", "-o", "compat=0.10", "img.qcow2"]],
    ["downgrade needs 16-bit refcounts", plain, ["-o", "compat=0.10,refcount_bits=1", "img.qcow2"]],
    ["no -o", plain, ["img.qcow2"]],
    ["-o help", plain, ["-o", "help", "img.qcow2"]],
    ["-f qcow2 -o help", [], ["-f", "qcow2", "-o", "help"]],
    ["raw", [["img", "create", "-q", "-f", "raw", "img.raw", "1M"]], ["-f", "raw", "-o", "size=2M", "img.raw"]],
    ["upgrade rewrites v2 snapshots", v2snap, ["-o", "compat=1.1", "img.qcow2"]],
    ["upgrade with progress and lazy refcounts", v2snap, ["-p", "-o", "compat=1.1,lazy_refcounts=on", "img.qcow2"]],
    ["lazy refcounts on v2", v2snap, ["-o", "lazy_refcounts=on", "img.qcow2"]],
    ["downgrade expands zero clusters over a backing file and snapshots", backed, ["-o", "compat=0.10", "img.qcow2"]],
    ["same backing file without format", backed, ["-o", "backing_file=b.qcow2", "img.qcow2"]],
    ["same backing file and format", backed, ["-o", "backing_file=b.qcow2,backing_fmt=qcow2", "img.qcow2"]],
    ["refcount_bits=1 with a snapshot", backed, ["-o", "refcount_bits=1", "img.qcow2"]],
    ["refcount_bits=2 with a snapshot", backed, ["-o", "refcount_bits=2", "img.qcow2"]],
    ["downgrade with a data file", dataFile, ["-o", "compat=0.10", "img.qcow2"]],
    ["rename the data file", dataFile, ["-o", "data_file=foo", "img.qcow2"]],
    ["remove the data file name", dataFile, ["-o", "data_file=", "img.qcow2"]],
    ["data_file_raw=on refused", dataFile, ["-o", "data_file_raw=on", "img.qcow2"]],
    ["data_file_raw=on when on", dataFileRaw, ["-o", "data_file_raw=on", "img.qcow2"]],
    ["data_file_raw=off", dataFileRaw, ["-o", "data_file_raw=off", "img.qcow2"]],
    ["zstd clusters prevent downgrade", [mk("img.qcow2", "64M", "-o", "compression_type=zstd"), io("img.qcow2", "write -c -P 1 0 64k")], ["-o", "compat=0.10", "img.qcow2"]],
    ["zstd without compressed clusters", [mk("img.qcow2", "64M", "-o", "compression_type=zstd"), io("img.qcow2", "write -P 1 0 64k")], ["-o", "compat=0.10", "img.qcow2"]],
    ["extended L2 prevents downgrade", [mk("img.qcow2", "64M", "-o", "extended_l2=on")], ["-o", "compat=0.10", "img.qcow2"]],
    ["lazy refcounts off on a dirty image", lazyDirty, ["-o", "lazy_refcounts=off", "img.qcow2"]],
    ["downgrade of a dirty image", lazyDirty, ["-o", "compat=0.10", "img.qcow2"]],
    ["downgrade of preallocated zero clusters", [mk("img.qcow2", "64M", "-o", "preallocation=metadata"), io("img.qcow2", "write -z 0 1M")], ["-o", "compat=0.10", "img.qcow2"]],
  ];
  it.concurrent.each(cases)("%s", async (_name, steps, args) => {
    await differential(steps, ["amend", ...args]);
  });
});

describe("qimg snapshot", () => {
  const withData: Step[] = [mk("img.qcow2", "64M"), io("img.qcow2", "write -P 1 0 1M", "write -c -P 7 4M 64k", "write -z 8M 64k")];
  const cycle: Step[] = [
    ...withData,
    ["img", "snapshot", "-c", "s1", "img.qcow2"],
    io("img.qcow2", "write -P 2 512k 1M", "write -P 9 4M 4k"),
    ["img", "snapshot", "-c", "s2", "img.qcow2"],
    io("img.qcow2", "write -P 3 0 64k", "write -P 4 20M 64k"),
  ];
  const cases: Array<[string, Step[], string[]]> = [
    ["create", withData, ["-c", "s1"]],
    ["list empty", withData, ["-l"]],
    ["apply by name", cycle, ["-a", "s1"]],
    ["apply by id", cycle, ["-a", "2"]],
    ["apply unknown", cycle, ["-a", "nope"]],
    ["delete", cycle, ["-d", "s1"]],
    ["delete by id is by name", cycle, ["-d", "1"]],
    ["mixed actions", cycle, ["-l", "-c", "x"]],
    ["unknown option", cycle, ["-x"]],
    ["no action", cycle, []],
    ["data file: create refused", dataFile, ["-c", "s1"]],
    ["data file: apply refused", dataFile, ["-a", "s1"]],
    ["data file: delete refused", dataFile, ["-d", "s1"]],
    ["data file: list", dataFile, ["-l"]],
    ["v2 image", v2snap, ["-c", "s2"]],
    ["refcount_bits=1 cannot count a snapshot", [mk("img.qcow2", "1M", "-o", "refcount_bits=1"), io("img.qcow2", "write 0 64k")], ["-c", "s"]],
    [
      "apply takes the snapshot's smaller size",
      [
        mk("img.qcow2", "64M"),
        io("img.qcow2", "write -P 1 0 1M", "write -P 2 63M 1M"),
        ["img", "snapshot", "-c", "s1", "img.qcow2"],
        ["img", "resize", "img.qcow2", "320M"],
        io("img.qcow2", "write -P 3 256M 1M", "write -P 4 62M 2M"),
        ["img", "snapshot", "-c", "s2", "img.qcow2"],
      ],
      ["-a", "s1"],
    ],
    [
      "apply takes the snapshot's larger size",
      [
        mk("img.qcow2", "320M"),
        io("img.qcow2", "write -P 1 0 1M", "write -P 2 256M 1M"),
        ["img", "snapshot", "-c", "s1", "img.qcow2"],
        ["img", "resize", "--shrink", "img.qcow2", "64M"],
        io("img.qcow2", "write -P 3 0 64k"),
      ],
      ["-a", "s1"],
    ],
  ];
  it.concurrent.each(cases)("%s", async (_name, steps, args) => {
    await differential(steps, ["snapshot", ...args, "img.qcow2"]);
  });

  it("list matches qemu-img's table", async () => {
    const dir = subDir(root, "snaplist");
    await setup(dir, [...cycle, ["img", "snapshot", "-c", "a longer snapshot name than the column", "img.qcow2"]]);
    const theirs = await qemuImg(["snapshot", "-l", "img.qcow2"], dir);
    const ours = await qimg(["snapshot", "-l", "img.qcow2"], dir);
    expect(ours).toEqual(theirs);
    expect(ours.stdout.split("\n")).toHaveLength(6);
  });

  it("create, apply and delete cycles with writes in between read back as QEMU's", async () => {
    const program: Array<["snap" | "io", ...string[]]> = [
      ["snap", "-c", "a"],
      ["io", "write -P 11 0 128k", "write -z 1M 64k", "discard 4M 64k"],
      ["snap", "-c", "b"],
      ["io", "write -P 12 96k 64k", "write -c -P 13 2M 64k"],
      ["snap", "-a", "a"],
      ["io", "write -P 14 64k 8k"],
      ["snap", "-c", "c"],
      ["snap", "-d", "b"],
      ["io", "write -P 15 0 4k"],
      ["snap", "-a", "c"],
      ["snap", "-d", "a"],
      ["snap", "-c", "d"],
    ];
    const base = subDir(root, "cycles");
    const dirs = { q: subDir(base, "q"), o: subDir(base, "o") };
    for (const d of Object.values(dirs)) await setup(d, withData);
    for (const [kind, ...args] of program) {
      if (kind === "io") {
        for (const d of Object.values(dirs)) await ok(qemuIo([...args.flatMap((c) => ["-c", c]), "img.qcow2"], d));
      } else {
        await ok(qemuImg(["snapshot", ...args, "img.qcow2"], dirs.q));
        await ok(qimg(["snapshot", ...args, "img.qcow2"], dirs.o));
      }
      const [q, o] = [await imagesOf(dirs.q), await imagesOf(dirs.o)];
      expect(o).toEqual(q);
      expect(o["img.qcow2"]!.check.code).toBe(0);
    }
  });
});

describe("qimg commit", () => {
  const chain: Step[] = [
    mk("b.qcow2", "64M"),
    io("b.qcow2", "write -P 1 0 4M"),
    mk("m.qcow2", "64M", "-b", "b.qcow2", "-F", "qcow2"),
    io("m.qcow2", "write -P 2 1M 1M", "write -z 3M 64k"),
    mk("t.qcow2", "64M", "-b", "m.qcow2", "-F", "qcow2"),
    io("t.qcow2", "write -P 3 1536k 1M", "write -z 100k 8k", "write -P 4 63M 1M"),
  ];
  const dataChain: Step[] = [
    mk("b.qcow2", "8M", "-o", "data_file=b.raw"),
    io("b.qcow2", "write -P 1 0 2M"),
    mk("t.qcow2", "8M", "-o", "data_file=t.raw", "-b", "b.qcow2", "-F", "qcow2"),
    io("t.qcow2", "write -P 2 1M 2M", "write -z 6M 64k"),
  ];
  const cases: Array<[string, Step[], string[]]> = [
    ["into the backing file", chain, ["t.qcow2"]],
    ["-d keeps the top", chain, ["-d", "t.qcow2"]],
    ["-b base implies -d", chain, ["-b", "b.qcow2", "t.qcow2"]],
    ["-b not in the chain", chain, ["-b", "nope", "t.qcow2"]],
    ["no backing file", chain, ["b.qcow2"]],
    ["-q", chain, ["-q", "m.qcow2"]],
    ["-p", chain, ["-p", "t.qcow2"]],
    ["data-file chain", dataChain, ["t.qcow2"]],
    ["no file", chain, []],
  ];
  it.concurrent.each(cases)("%s", async (_name, steps, args) => {
    await differential(steps, ["commit", ...args], { progress: true });
  });
});

describe("qimg rebase", () => {
  const chain: Step[] = [
    mk("b.qcow2", "64M"),
    io("b.qcow2", "write -P 1 0 4M"),
    mk("m.qcow2", "64M", "-b", "b.qcow2", "-F", "qcow2"),
    io("m.qcow2", "write -P 2 1M 1M", "write -z 3M 64k"),
    mk("t.qcow2", "64M", "-b", "m.qcow2", "-F", "qcow2"),
    io("t.qcow2", "write -P 3 1536k 1M", "write -z 100k 8k", "write -P 4 63M 1M"),
    mk("other.qcow2", "32M"),
    io("other.qcow2", "write -P 1 0 2M", "write -P 8 20M 1M"),
  ];
  const cases: Array<[string, Step[], string[]]> = [
    ["onto an image of the chain", chain, ["-b", "b.qcow2", "-F", "qcow2", "t.qcow2"]],
    ["onto an unrelated, shorter image", chain, ["-b", "other.qcow2", "-F", "qcow2", "t.qcow2"]],
    ["flatten", chain, ["-b", "", "t.qcow2"]],
    ["unsafe", chain, ["-u", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"]],
    ["unsafe removal", chain, ["-u", "-b", "", "t.qcow2"]],
    ["without a backing format", chain, ["-b", "b.qcow2", "t.qcow2"]],
    ["without -b", chain, ["t.qcow2"]],
    ["missing new backing file", chain, ["-b", "nope.qcow2", "-F", "qcow2", "t.qcow2"]],
    ["progress", chain, ["-p", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"]],
    ["data-file-raw refuses a backing file", [...dataFileRaw, mk("b.qcow2", "1M")], ["-u", "-b", "b.qcow2", "-F", "qcow2", "img.qcow2"]],
    ["data-file-raw, safe", [...dataFileRaw, mk("b.qcow2", "1M")], ["-b", "b.qcow2", "-F", "qcow2", "img.qcow2"]],
    ["data file without the raw bit", [...dataFile, mk("b.qcow2", "64M"), io("b.qcow2", "write -P 5 0 8M")], ["-b", "b.qcow2", "-F", "qcow2", "img.qcow2"]],
  ];
  it.concurrent.each(cases)("%s", async (_name, steps, args) => {
    await differential(steps, ["rebase", ...args]);
  });
});

describe("qimg measure", () => {
  const chain: Step[] = [
    mk("b.qcow2", "64M"),
    io("b.qcow2", "write -P 1 0 4M"),
    mk("t.qcow2", "64M", "-b", "b.qcow2", "-F", "qcow2"),
    io("t.qcow2", "write -P 3 1536k 1M", "write -z 100k 8k", "write -P 4 63M 1M", "write -c -P 5 10M 64k"),
    ["img", "bitmap", "--add", "b.qcow2", "bm"],
    ["img", "bitmap", "--add", "-g", "512", "b.qcow2", "bm2"],
    mk("odd.qcow2", "1000000"),
    io("odd.qcow2", "write -P 1 999424 512"),
  ];
  const cases: string[][] = [
    ["-O", "qcow2", "t.qcow2"],
    ["-O", "qcow2", "--output=json", "t.qcow2"],
    ["-O", "qcow2", "b.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=512", "--output=json", "b.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10", "t.qcow2"],
    ["-O", "qcow2", "odd.qcow2"],
    ["t.qcow2"],
    ["--size", "1G"],
    ["-O", "qcow2", "--size", "1G"],
    ["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "--size", "1G"],
    ["-O", "qcow2", "-o", "preallocation=full", "--size", "1G"],
    ["-O", "qcow2", "-o", "preallocation=metadata", "--size", "1G"],
    ["-O", "qcow2", "-o", "extended_l2=on", "--size", "100M"],
    ["-O", "qcow2", "-o", "data_file=x", "--size", "1G"],
    ["-O", "qcow2", "--size", "0"],
    ["-o", "cluster_size=4k", "--size", "1G"],
    [],
    ["--size", "1G", "t.qcow2"],
    ["--output=xml", "--size", "1G"],
  ];
  it.concurrent.each(cases)("measure %j", async (...args) => {
    await differential(chain, ["measure", ...args]);
  });
});

describe("qimg bitmap", () => {
  const images: Step[] = [
    mk("a.qcow2", "64M"),
    io("a.qcow2", "write -P 1 0 1M"),
    mk("c.qcow2", "64M"),
    ["img", "bitmap", "--add", "c.qcow2", "cb"],
    io("c.qcow2", "write 5M 1M", "write 40M 64k"),
    ["img", "bitmap", "--add", "-g", "4k", "--disable", "c.qcow2", "off"],
    mk("v2.qcow2", "1M", "-o", "compat=0.10"),
    mk("small.qcow2", "1M"),
    ["img", "bitmap", "--add", "small.qcow2", "s"],
  ];
  const cases: string[][] = [
    ["--add", "a.qcow2", "b0"],
    ["--add", "-g", "4k", "--disable", "a.qcow2", "b1"],
    ["--add", "-g", "1000", "a.qcow2", "x"],
    ["--add", "-g", "4G", "a.qcow2", "x"],
    ["a.qcow2", "x"],
    ["-g", "4k", "--clear", "a.qcow2", "x"],
    ["--add", "--add", "a.qcow2", "x"],
    ["--remove", "a.qcow2", "x"],
    ["--add", "v2.qcow2", "x"],
    ["--add", "--remove", "a.qcow2", "x"],
    ["--add", "a.qcow2"],
    ["-b", "c.qcow2", "--add", "a.qcow2", "w"],
    ["-F", "qcow2", "--add", "a.qcow2", "w"],
    ["--add", "--merge", "cb", "-b", "c.qcow2", "-F", "qcow2", "a.qcow2", "m"],
    ["--add", "--merge", "nope", "-b", "c.qcow2", "a.qcow2", "m"],
    ["--add", "--merge", "s", "-b", "small.qcow2", "a.qcow2", "m"],
    ["--add", "--enable", "--disable", "--clear", "a.qcow2", "y"],
    ["--remove", "c.qcow2", "cb"],
    ["--clear", "c.qcow2", "cb"],
    ["--disable", "c.qcow2", "cb"],
    ["--enable", "c.qcow2", "off"],
    ["--add", "-g", "512", "--merge", "cb", "c.qcow2", "n"],
    ["--merge", "cb", "c.qcow2", "off"],
  ];
  it.concurrent.each(cases)("bitmap %j", async (...args) => {
    await differential(images, ["bitmap", ...args]);
  });
});

describe("qimg dd", () => {
  const src: Step[] = [mk("a.qcow2", "1M"), io("a.qcow2", "write -P 7 100k 300k")];
  const cases: string[][] = [
    [],
    ["if=a.qcow2"],
    ["foo", "if=a.qcow2", "of=b.raw"],
    ["x=1", "if=a.qcow2", "of=b.raw"],
    ["bs=0", "if=a.qcow2", "of=b.raw"],
    ["bs=1x", "if=a.qcow2", "of=b.raw"],
    ["skip=10000", "if=a.qcow2", "of=b.raw"],
    ["-O", "qcow2", "bs=64k", "count=3", "skip=2", "if=a.qcow2", "of=c.qcow2"],
    ["-O", "vmdk2", "if=a.qcow2", "of=d"],
    ["if=nope", "of=e"],
    ["-O", "qcow2", "if=a.qcow2", "of=g.qcow2"],
  ];
  it.concurrent.each(cases)("dd %j", async (...args) => {
    await differential(src, ["dd", ...args]);
  });

  it("raw output is byte for byte qemu-img's", async () => {
    const dir = subDir(root, "ddraw");
    await setup(dir, src);
    await ok(qemuImg(["dd", "bs=4k", "skip=3", "count=100", "if=a.qcow2", "of=q.raw"], dir));
    await ok(qimg(["dd", "bs=4k", "skip=3", "count=100", "if=a.qcow2", "of=o.raw"], dir));
    const q = fs.readFileSync(path.join(dir, "q.raw"));
    expect(q.byteLength).toBe(97 * 4096);
    expect(fs.readFileSync(path.join(dir, "o.raw")).equals(q)).toBe(true);
  });
});

describe("qimg resize", () => {
  // Every qcow2 file must come out byte for byte as qemu-img leaves it (same layout, same metadata).
  const cases: Array<[string, Step[], string[]]> = [
    ["full after data", [mk("img.qcow2", "4M"), io("img.qcow2", "write -P 1 0 1M")], ["--preallocation=full", "img.qcow2", "12M"]],
    ["falloc after data", [mk("img.qcow2", "4M"), io("img.qcow2", "write -P 1 0 1M")], ["--preallocation=falloc", "img.qcow2", "+5M"]],
    ["metadata after data", [mk("img.qcow2", "4M"), io("img.qcow2", "write -P 1 0 1M")], ["--preallocation=metadata", "img.qcow2", "8M"]],
    ["full from an unaligned size", [mk("img.qcow2", "1000k"), io("img.qcow2", "write -P 1 0 64k")], ["--preallocation=full", "img.qcow2", "3000k"]],
    ["full growing the L1 and refcount tables", [mk("img.qcow2", "1M", "-o", "cluster_size=512")], ["--preallocation=full", "img.qcow2", "40M"]],
    ["falloc with 4k clusters and refcount_bits=1", [mk("img.qcow2", "1M", "-o", "cluster_size=4k,refcount_bits=1"), io("img.qcow2", "write -P 2 0 512k")], ["--preallocation=falloc", "img.qcow2", "64M"]],
    ["full with extended L2", [mk("img.qcow2", "2M", "-o", "extended_l2=on"), io("img.qcow2", "write -P 3 4k 4k")], ["--preallocation=full", "img.qcow2", "6M"]],
    ["full on a data-file image", [mk("img.qcow2", "2M", "-o", "data_file=img.raw"), io("img.qcow2", "write -P 4 0 64k")], ["--preallocation=full", "img.qcow2", "6M"]],
    ["plain growth", [mk("img.qcow2", "2M"), io("img.qcow2", "write -P 5 1M 64k")], ["img.qcow2", "3G"]],
  ];
  it.concurrent.each(cases)("%s", async (_name, steps, args) => {
    await differential(steps, ["resize", ...args]);
  });
  it.concurrent.each(cases)("%s: the same bytes and map as qemu-img", async (_name, steps, args) => {
    const base = subDir(root, `rz${++caseNo}`);
    const q = subDir(base, "q");
    const o = subDir(base, "o");
    await setup(q, steps);
    await setup(o, steps);
    expect((await qemuImg(["resize", ...args], q)).code).toBe(0);
    expect((await qimg(["resize", ...args], o)).code).toBe(0);
    const map = async (dir: string) => (await qemuImg(["map", "--output=json", "img.qcow2"], dir)).stdout;
    expect(await map(o)).toBe(await map(q));
    expect(hashOf(path.join(o, "img.qcow2"))).toBe(hashOf(path.join(q, "img.qcow2")));
  });
});

describe("qimg bench", () => {
  const img: Step[] = [mk("a.qcow2", "1M")];
  const errors: string[][] = [
    ["-c", "x", "a.qcow2"],
    ["--flush-interval=3", "a.qcow2"],
    ["-w", "--flush-interval=3", "-d", "4", "a.qcow2"],
    ["-t", "bogus", "a.qcow2"],
    ["-i", "x", "a.qcow2"],
    ["--pattern=300", "a.qcow2"],
    [],
  ];
  it.concurrent.each(errors)("bench %j", async (...args) => {
    await differential(img, ["bench", ...args]);
  });

  it("prints qemu-img's lines and writes the pattern where asked", async () => {
    const dir = subDir(root, "bench");
    await setup(dir, img);
    const args = ["bench", "-w", "-c", "100", "-d", "2", "-s", "512", "-S", "1024", "-o", "4096", "--flush-interval=4", "--pattern=5", "a.qcow2"];
    const theirs = await qemuImg(args, dir);
    const ours = await qimg(args, dir);
    const timeless = (t: string) => t.replace(/[0-9]+\.[0-9]{3} seconds/, "T seconds");
    expect(timeless(ours.stdout)).toBe(timeless(theirs.stdout));
    expect(ours.code).toBe(0);
    // 100 requests of 512 bytes every 1024 bytes from 4096: the last one at 4096 + 99 * 1024.
    expect((await run("qemu-io", ["-c", `read -P 5 ${4096 + 99 * 1024} 512`, "-c", `read -P 0 ${4096 + 512} 512`, "a.qcow2"], { cwd: dir })).stdout).not.toMatch(/mismatch/);
  });
});
