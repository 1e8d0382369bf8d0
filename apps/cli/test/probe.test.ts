/**
 * Format probing against qemu-img's verdict: images of every format and subformat `qemu-img create` makes
 * here, their extent files, and hand-made headers of the formats it cannot create (bochs, cloop, dmg by name,
 * vmdk descriptors, qcow). qcow2, raw and luks are opened as QEMU opens them; every other format QEMU recognises
 * is refused with one line and exit 1, and nothing is written.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ok, pool, qemuImg, qemuIo, qimg, qio, tempDir } from "./helpers";

const dir = tempDir("qimg-probe-");
const FORMATS = ["qcow2", "raw", "bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc"];

function write(name: string, bytes: Uint8Array | string, size?: number): void {
  const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  const out = new Uint8Array(size ?? b.byteLength);
  out.set(b);
  fs.writeFileSync(path.join(dir, name), out);
}

function header(fields: Array<[offset: number, bytes: number[] | string]>, size = 4096): Uint8Array {
  const b = new Uint8Array(size);
  for (const [at, v] of fields) b.set(typeof v === "string" ? Array.from(v, (c) => c.charCodeAt(0)) : v, at);
  return b;
}

beforeAll(async () => {
  const create = async (fmt: string, name: string, ...opts: string[]) => {
    // QEMU's LUKS key-slot benchmark gives up ("Unable to get accurate CPU usage") when the thread's CPU clock did
    // not move, which happens on a busy machine before anything is written: tried again then, at most 5 times.
    for (let attempt = 1; ; attempt++) {
      const r = await qemuImg(["create", "-q", "-f", fmt, ...opts, name, "4M"], dir);
      if (attempt >= 5 || r.code === 0 || !r.stderr.includes("Unable to get accurate CPU usage")) return ok(Promise.resolve(r));
    }
  };
  await create("qcow2", "a.qcow2");
  await create("qcow2", "v2.qcow2", "-o", "compat=0.10");
  await create("raw", "a.raw");
  for (const f of ["qcow", "qed", "vdi", "vhdx", "parallels"]) await create(f, `a.${f}`);
  for (const s of ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized"]) {
    await create("vmdk", `${s}.vmdk`, "-o", `subformat=${s}`);
  }
  await create("vpc", "dynamic.vpc", "-o", "subformat=dynamic");
  await create("vpc", "fixed.vpc", "-o", "subformat=fixed");
  await create("luks", "a.luks", "--object", "secret,id=s0,data=abc", "-o", "key-secret=s0");
  // Formats qemu-img cannot create: their probed headers.
  write("a.bochs", header([[0, "Bochs Virtual HD Image"], [32, "Redolog"], [48, "Growing"], [64, [0, 0, 2, 0]]]));
  write("v1.bochs", header([[0, "Bochs Virtual HD Image"], [32, "Redolog"], [48, "Growing"], [64, [0, 0, 1, 0]]]));
  write("bad-type.bochs", header([[0, "Bochs Virtual HD Image"], [32, "Redolog!"], [48, "Growing"], [64, [0, 0, 2, 0]]]));
  write("a.cloop", "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n", 4096);
  write("raw-named.dmg", new Uint8Array(1024 * 1024));
  write("ext.parallels", header([[0, "WithouFreSpacExt"], [16, [2, 0, 0, 0]]]));
  write("v3.parallels", header([[0, "WithoutFreeSpace"], [16, [3, 0, 0, 0]]]));
  write("descriptor.vmdk", "# Disk DescriptorFile\n   \r\n#x\nversion=1\r\nCID=fffffffe\n");
  write("late-version.vmdk", "# Disk DescriptorFile\nCID=fffffffe\nversion=1\n");
  write("qcow-magic-v1.img", header([[0, [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1]]]));
  write("qcow-magic-v0.img", header([[0, [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 0]]]));
  write("short.img", "QFI");
  write("vhdx-short.img", "vhdxfile");
  write("luks-v2.img", header([[0, [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 2]]]));
  write("vdi-signature.img", header([[64, [0x7f, 0x10, 0xda, 0xbe]]]));
  write("empty.img", new Uint8Array(0));
}, 120_000);

/**
 * QEMU's verdict: the format qemu-img info reports or, when the open fails after probing, the formats whose
 * drivers give the very same failure when named with -f (one, or several when the failure is a bare errno).
 */
async function qemuVerdicts(name: string): Promise<string[]> {
  const probed = await qemuImg(["info", "--output=json", name], dir);
  if (probed.code === 0) return [(JSON.parse(probed.stdout) as { format: string }).format];
  const same: string[] = [];
  for (const f of FORMATS) {
    const forced = await qemuImg(["info", "--output=json", "-f", f, name], dir);
    if (forced.code !== 0 && forced.stderr === probed.stderr) same.push(f);
  }
  if (same.length === 0) throw new Error(`no driver gives qemu-img's failure on ${name}: ${probed.stderr}`);
  return same;
}

describe("probing", () => {
  it("gives qemu-img's format verdict on every file: qcow2, raw and luks open, the others are refused", async () => {
    const names = fs.readdirSync(dir).sort();
    expect(names.length).toBeGreaterThan(30);
    const seen = new Set<string>();
    const wrong: string[] = [];
    const results = await pool(names, 4, async (name) => ({ name, verdicts: await qemuVerdicts(name), ours: await qimg(["info", "--output=json", name], dir) }));
    for (const { name, verdicts, ours } of results) {
      const refused = /^qimg: Could not open '.*': Unknown driver '([a-z0-9]+)'\n$/.exec(ours.stderr)?.[1];
      const format = ours.code === 0 ? (JSON.parse(ours.stdout) as { format: string }).format : ours.code === 1 ? refused : undefined;
      if (format === undefined || !verdicts.includes(format)) wrong.push(`${name}: qemu ${verdicts.join("/")}, ours exit ${ours.code}: ${ours.stderr}`);
      else seen.add(format);
      // Only qcow2, raw and luks (info needs no key) are opened; every other verdict is a refusal.
      if ((format === "qcow2" || format === "raw" || format === "luks") !== (ours.code === 0)) wrong.push(`${name}: ${format} with exit ${ours.code}`);
    }
    expect(wrong).toEqual([]);
    // Every format QEMU 7.2 probes occurs among the verdicts.
    expect([...seen].sort()).toEqual([...FORMATS].sort());
  });

  it("convert, qio and check refuse a foreign image: exit 1, one line, nothing written", async () => {
    const before = fs.readFileSync(path.join(dir, "a.vhdx"));
    const c = await qimg(["convert", "-O", "qcow2", "a.vhdx", "out.qcow2"], dir);
    expect(c).toEqual({ code: 1, stdout: "", stderr: "qimg: Could not open 'a.vhdx': Unknown driver 'vhdx'\n" });
    expect(fs.existsSync(path.join(dir, "out.qcow2"))).toBe(false);
    const r = await qio(["-c", "write -P 1 0 64k", "a.vhdx"], dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("qio: can't open device a.vhdx: Unknown driver 'vhdx'\n");
    const k = await qimg(["check", "dynamic.vpc"], dir);
    expect(k.code).toBe(1);
    expect(k.stderr.trim().split("\n")).toEqual(["qimg: Could not open 'dynamic.vpc': Unknown driver 'vpc'"]);
    expect(fs.readFileSync(path.join(dir, "a.vhdx")).equals(before)).toBe(true);
  });

  it("raw stays the fallback, with QEMU's warning when it is opened for writing", async () => {
    const o = await qio(["-c", "write -P 1 0 4k", "fixed.vpc"], dir);
    expect(o.code).toBe(0);
    expect(o.stderr).toMatch(/^WARNING: Image format was not specified for 'fixed.vpc' and probing guessed raw\./);
  });

  it("a probed raw image cannot be given another format's first sector: EPERM, as qemu-io says", async () => {
    write("qcow2-head.bin", header([[0, [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]]], 512));
    write("vmdk-head.bin", "# Disk DescriptorFile\nversion=1\n", 512);
    write("plain-head.bin", "just data\n", 512);
    const results: string[] = [];
    for (const tool of ["qemu-io", "qio"]) {
      for (const [src, at] of [["qcow2-head.bin", 0], ["vmdk-head.bin", 0], ["plain-head.bin", 0]] as const) {
        const disk = `${tool}-${src}.img`;
        write(disk, new Uint8Array(64 * 1024));
        const args = ["-c", `write -s ${src} ${at} 512`, disk];
        const r = tool === "qio" ? await qio(args, dir) : await qemuIo(args, dir);
        const head = fs.readFileSync(path.join(dir, disk)).subarray(0, 4);
        results.push(`${tool} ${src}: ${r.stdout.split("\n")[0]} / first bytes ${head.toString("hex")}`);
      }
    }
    const [theirs, ours] = [results.slice(0, 3), results.slice(3)];
    expect(ours).toEqual(theirs.map((l) => l.replace(/^qemu-io/, "qio")));
    expect(theirs[0]).toContain("write failed: Operation not permitted / first bytes 00000000");
    expect(theirs[2]).toContain("wrote 512/512 bytes");
  });
});
