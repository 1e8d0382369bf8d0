/**
 * Issue 19: cases QEMU 7.2's own iotests found where qimg/qio gave other guest data (or damaged an image).
 * Each test runs the same steps with QEMU's tools and ours and compares guest content (qemu-img compare),
 * allocation (qemu-img map) and consistency (qemu-img check), or QEMU's exact answer.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { QIMG, QIO, filterTimings, normalizeQemu, ok, qemuImg, qemuIo, qimg, qio, run, subDir, tempDir } from "./helpers";

const root = tempDir("qimg-iotests-regr-");

/** Build the same files twice (q = QEMU, o = ours): `setup` gets the directory and uses QEMU's tools only. */
async function twin(name: string, setup: (dir: string) => Promise<void>): Promise<{ q: string; o: string }> {
  const q = subDir(root, `${name}-q`);
  const o = subDir(root, `${name}-o`);
  await setup(q);
  await setup(o);
  return { q, o };
}

const mapOf = async (dir: string, file: string) => JSON.parse(await ok(qemuImg(["map", "--output=json", file], dir))) as Array<Record<string, unknown>>;
/** map without host offsets (allocation order may legitimately differ). */
const layout = async (dir: string, file: string) => (await mapOf(dir, file)).map(({ offset: _o, ...rest }) => rest);

/** Guest content equal (compared by QEMU), same map layout, both images clean. */
async function sameImage(dirs: { q: string; o: string }, file: string): Promise<void> {
  const cmp = await qemuImg(["compare", "-f", "qcow2", "-F", "qcow2", path.join(dirs.q, file), path.join(dirs.o, file)]);
  expect(cmp.stdout + cmp.stderr).toBe("Images are identical.\n");
  expect(await layout(dirs.o, file)).toEqual(await layout(dirs.q, file));
  const check = await qemuImg(["check", file], dirs.o);
  expect(check.stdout + check.stderr).toContain("No errors were found on the image.");
}

const io = (dir: string, file: string, ...cmds: string[]) => ok(qemuIo([...cmds.flatMap((c) => ["-c", c]), file], dir));
const img = (dir: string, ...args: string[]) => ok(qemuImg(args, dir));

describe("issue 19 item 1: resize --shrink into a cluster keeps the kept part of that cluster (iotest 292)", () => {
  for (const backing of [false, true]) {
    it(backing ? "with a backing file" : "without a backing file", async () => {
      const dirs = await twin(`shrink-${backing}`, async (d) => {
        if (backing) {
          await img(d, "create", "-q", "-f", "qcow2", "base.qcow2", "1M");
          await io(d, "base.qcow2", "write -P 0x11 0 1M");
          await img(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "1M");
        } else {
          await img(d, "create", "-q", "-f", "qcow2", "t.qcow2", "1M");
        }
        await io(d, "t.qcow2", "write -P 0x22 0 1M");
      });
      await img(dirs.q, "resize", "-q", "--shrink", "t.qcow2", "520K");
      await ok(qimg(["resize", "-q", "--shrink", "t.qcow2", "520K"], dirs.o));
      expect(await io(dirs.o, "t.qcow2", "read -P 0x22 512K 8K")).not.toContain("failed");
      await sameImage(dirs, "t.qcow2");
    });
  }
});

describe("issue 19 item 2: growing an overlay over a longer backing file reads zeros in the new area (iotests 292, 271)", () => {
  for (const prealloc of ["off", "metadata", "falloc", "full"]) {
    for (const extl2 of [false, true]) {
      it(`preallocation=${prealloc}${extl2 ? ", extended_l2" : ""}`, async () => {
        const dirs = await twin(`grow-${prealloc}-${extl2}`, async (d) => {
          await img(d, "create", "-q", "-f", "qcow2", "base.qcow2", "2M");
          await io(d, "base.qcow2", "write -P 0x11 0 2M");
          const o = extl2 ? ["-o", "extended_l2=on"] : [];
          await img(d, "create", "-q", "-f", "qcow2", ...o, "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "1000K");
          await io(d, "t.qcow2", "write -P 0x22 900K 50K");
        });
        await img(dirs.q, "resize", "-q", `--preallocation=${prealloc}`, "t.qcow2", "1800K");
        await ok(qimg(["resize", "-q", `--preallocation=${prealloc}`, "t.qcow2", "1800K"], dirs.o));
        expect(await io(dirs.o, "t.qcow2", "read -P 0 1000K 800K")).not.toContain("failed");
        await sameImage(dirs, "t.qcow2");
      });
    }
  }

  it("compat=0.10 cannot zero the new area: QEMU's error, size unchanged", async () => {
    const dirs = await twin("grow-v2", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "base.qcow2", "2M");
      await img(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", "1M");
    });
    const q = await qemuImg(["resize", "t.qcow2", "2M"], dirs.q);
    const o = await qimg(["resize", "t.qcow2", "2M"], dirs.o);
    expect(q.stderr).toContain("Failed to zero out new clusters: Operation not supported");
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    const size = async (d: string) => JSON.parse(await img(d, "info", "--output=json", "t.qcow2"))["virtual-size"];
    expect(await size(dirs.o)).toBe(await size(dirs.q));
  });
});

describe("issue 19 item 3: safe rebase within the chain keeps zeros past the old backing file's end (iotest 024)", () => {
  it("base_new (320K) <- base_old (256K) <- overlay (320K), rebase -b base_new", async () => {
    const dirs = await twin("rebase-chain", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "base_new.qcow2", "320K");
      await io(d, "base_new.qcow2", "write -P 0x11 0 320K");
      await img(d, "create", "-q", "-f", "qcow2", "-b", "base_new.qcow2", "-F", "qcow2", "base_old.qcow2", "256K");
      await io(d, "base_old.qcow2", "write -P 0x22 0 256K");
      await img(d, "create", "-q", "-f", "qcow2", "-b", "base_old.qcow2", "-F", "qcow2", "t.qcow2", "320K");
    });
    await img(dirs.q, "rebase", "-b", "base_new.qcow2", "-F", "qcow2", "t.qcow2");
    await ok(qimg(["rebase", "-b", "base_new.qcow2", "-F", "qcow2", "t.qcow2"], dirs.o));
    expect(await io(dirs.o, "t.qcow2", "read -P 0x22 0 256K", "read -P 0 256K 64K")).not.toContain("failed");
    await sameImage(dirs, "t.qcow2");
  });
});

describe("issue 19 item 5: convert -c of several odd-sized sources, convert -B past the backing file's end (iotest 122)", () => {
  for (const [fmt, size] of [["raw", "300K"], ["qcow2", "1000K"], ["qcow2", "33K"]] as const) {
    it(`convert -c of three ${size} ${fmt} sources`, async () => {
      const dirs = await twin(`multi-c-${fmt}-${size}`, async (d) => {
        for (const i of [1, 2, 3]) {
          await img(d, "create", "-q", "-f", fmt, `s${i}.img`, size);
          await ok(qemuIo(["-f", fmt, "-c", `write -P ${i} 0 ${size}`, `s${i}.img`], d));
        }
      });
      const args = ["convert", "-c", "-f", fmt, "-O", "qcow2", "s1.img", "s2.img", "s3.img", "t.qcow2"];
      await img(dirs.q, ...args);
      await ok(qimg(args, dirs.o));
      await sameImage(dirs, "t.qcow2");
    });
  }

  it("convert -B to a target longer than its backing file writes nothing past the backing file's end", async () => {
    const dirs = await twin("convert-B", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "base.qcow2", "256M");
      await img(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "src.qcow2", "1G");
      await io(d, "src.qcow2", "write -P 42 0 64k");
    });
    const args = ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "src.qcow2", "t.qcow2"];
    await img(dirs.q, ...args);
    await ok(qimg(args, dirs.o));
    expect(await mapOf(dirs.o, "t.qcow2")).toEqual(await mapOf(dirs.q, "t.qcow2"));
    await sameImage(dirs, "t.qcow2");
  });
});


/** Replace the snapshot table of `file` by `count` copies of its first entry (written at the end of the file). */
function multiplySnapshots(dir: string, file: string, count: number, headerCount = count): void {
  const p = path.join(dir, file);
  const bytes = fs.readFileSync(p);
  const h = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tableOffset = Number(h.getBigUint64(64));
  const t = new DataView(bytes.buffer, bytes.byteOffset + tableOffset);
  const entryBytes = (40 + t.getUint32(36) + t.getUint16(12) + t.getUint16(14) + 7) & ~7;
  // Copies without an L1 table (offset and size 0), so that they reference nothing.
  const entry = Uint8Array.from(bytes.subarray(tableOffset, tableOffset + entryBytes)).fill(0, 0, 12);
  const table = new Uint8Array(entryBytes * count);
  for (let i = 0; i < count; i++) table.set(entry, i * entryBytes);
  const at = Math.ceil(bytes.byteLength / 65536) * 65536;
  const fd = fs.openSync(p, "r+");
  fs.writeSync(fd, table, 0, table.byteLength, at);
  const field = new DataView(new ArrayBuffer(12));
  field.setUint32(0, headerCount);
  field.setBigUint64(4, BigInt(at));
  fs.writeSync(fd, new Uint8Array(field.buffer), 0, 12, 60);
  fs.closeSync(fd);
}

describe("issue 19 item 7: 64-bit refcounts (iotest 112)", () => {
  it("check prints a refcount of 2^64-1 exactly", async () => {
    const dirs = await twin("rc64", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "refcount_bits=64", "t.qcow2", "64M");
      await io(d, "t.qcow2", "write 0 512");
      const fd = fs.openSync(path.join(d, "t.qcow2"), "r+");
      // The data cluster's refblock entry at its maximum; the L2 entry without COPIED.
      fs.writeSync(fd, new Uint8Array(8).fill(0xff), 0, 8, 0x20028);
      fs.writeSync(fd, new Uint8Array([0, 0, 0, 0, 0, 5, 0, 0]), 0, 8, 0x40000);
      fs.closeSync(fd);
    });
    const q = await qemuImg(["check", "t.qcow2"], dirs.q);
    const o = await qimg(["check", "t.qcow2"], dirs.o);
    expect(q.stderr).toContain("refcount=18446744073709551615");
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
  });

  it("a 64-bit refcount with its MSb set drops by one exactly on copy-on-write (iotest 112)", async () => {
    const dirs = await sameSteps(
      "refcount-64-msb",
      async (d) => {
        await fresh(["-o", "refcount_bits=64"], "write 0 512")(d);
        poke(d, "t.qcow2", 0x20028, [0x80, 0, 0, 0, 0, 0, 0, 0]);
        poke(d, "t.qcow2", 0x40000, [0, 0, 0, 0, 0, 5, 0, 0]);
      },
      [["io", "-c", "write 0 512", "t.qcow2"], ["img", "check", "t.qcow2"]],
    );
    expect((await qemuImg(["check", "t.qcow2"], dirs.o)).stderr).toContain("Leaked cluster 5 refcount=9223372036854775807 reference=0");
  });

  it("a snapshot, then refcount_bits=1 (refused) and 2: as clean as QEMU leaves it", async () => {
    const dirs = await twin("rc-widths", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "t.qcow2", "4M");
      await io(d, "t.qcow2", "write 1M 2M");
    });
    for (const d of [dirs.q, dirs.o]) await ok((d === dirs.q ? qemuImg : qimg)(["snapshot", "-c", "foo", "t.qcow2"], d));
    for (const d of [dirs.q, dirs.o]) await io(d, "t.qcow2", "write 0 1M");
    for (const bits of ["1", "2"]) {
      const q = await qemuImg(["amend", "-o", `refcount_bits=${bits}`, "t.qcow2"], dirs.q);
      const o = await qimg(["amend", "-o", `refcount_bits=${bits}`, "t.qcow2"], dirs.o);
      expect([o.code, o.stderr]).toEqual([q.code, normalizeQemu(q.stderr)]);
      const qc = await qemuImg(["check", "t.qcow2"], dirs.q);
      const oc = await qemuImg(["check", "t.qcow2"], dirs.o);
      expect(oc.stdout.replace(/Image end offset: \d+/, "")).toBe(qc.stdout.replace(/Image end offset: \d+/, ""));
    }
    await sameImage(dirs, "t.qcow2");
  });
});

describe("issue 19 items 4 and 9: QEMU's snapshot limits (iotests 080, 261)", () => {
  // One consistent image with 65536 snapshots, built once (QEMU repairs the refcounts of the new table).
  let full: string;
  beforeAll(async () => {
    full = subDir(root, "snap-full");
    await img(full, "create", "-q", "-f", "qcow2", "t.qcow2", "1M");
    await img(full, "snapshot", "-c", "s", "t.qcow2");
    multiplySnapshots(full, "t.qcow2", 65537, 65536);
    await qemuImg(["check", "-r", "all", "t.qcow2"], full);
  }, 300_000);
  const copyFull = (name: string, headerCount: number) =>
    twin(name, async (d) => {
      fs.copyFileSync(path.join(full, "t.qcow2"), path.join(d, "t.qcow2"));
      const fd = fs.openSync(path.join(d, "t.qcow2"), "r+");
      const field = new DataView(new ArrayBuffer(4));
      field.setUint32(0, headerCount);
      fs.writeSync(fd, new Uint8Array(field.buffer), 0, 4, 60);
      fs.closeSync(fd);
    });

  it("item 4: snapshot -c at 65536 snapshots fails with EFBIG and leaves the file unchanged", async () => {
    const dirs = await copyFull("snap-limit", 65536);
    const before = fs.readFileSync(path.join(dirs.o, "t.qcow2"));
    const q = await qemuImg(["snapshot", "-c", "new", "t.qcow2"], dirs.q);
    const o = await qimg(["snapshot", "-c", "new", "t.qcow2"], dirs.o);
    expect(q.stderr).toContain("File too large");
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    expect(fs.readFileSync(path.join(dirs.o, "t.qcow2")).equals(before)).toBe(true);
  }, 300_000);

  it("item 9: with 65537 snapshots, check -r all discards the overhanging one", async () => {
    const dirs = await copyFull("overhang", 65537);
    const hint = await qimg(["check", "t.qcow2"], dirs.o);
    expect(hint.stderr).toContain("You can force-remove all 1 overhanging snapshots with");
    const q = await qemuImg(["check", "-r", "all", "t.qcow2"], dirs.q);
    const o = await qimg(["check", "-r", "all", "t.qcow2"], dirs.o);
    expect(q.stderr).toContain("Discarding 1 overhanging snapshots");
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    expect(fs.readFileSync(path.join(dirs.o, "t.qcow2")).equals(fs.readFileSync(path.join(dirs.q, "t.qcow2")))).toBe(true);
  }, 300_000);
});

describe("issue 19 item 8: file: prefixes and colons in names (iotest 126)", () => {
  it("create file:DIR/a:b.qcow2, then a backing chain named with file: prefixes", async () => {
    const dirs = await twin("colons", async () => undefined);
    const steps = (d: string) => [
      ["create", "-q", "-f", "qcow2", `file:${d}/a:b.qcow2`, "1M"],
      ["create", "-q", "-f", "qcow2", "-b", "file:a:b.qcow2", "-F", "qcow2", "file:image:top.qcow2", "1M"],
      ["info", "--output=json", "file:image:top.qcow2"],
    ];
    for (const [i, s] of steps(dirs.q).entries()) {
      const q = await qemuImg(s, dirs.q);
      const o = await qimg(steps(dirs.o)[i]!, dirs.o);
      expect([o.code, o.stderr]).toEqual([q.code, normalizeQemu(q.stderr).split(dirs.q).join(dirs.o)]);
      if (s[0] === "info") {
        const strip = (t: string) => {
          const j = JSON.parse(t);
          delete j["actual-size"];
          return j;
        };
        expect(strip(o.stdout)).toEqual(strip(q.stdout));
      }
    }
    expect(fs.existsSync(path.join(dirs.o, "a:b.qcow2")) && fs.existsSync(path.join(dirs.o, "image:top.qcow2"))).toBe(true);
    await io(dirs.q, "file:a:b.qcow2", "write -P 7 0 64k");
    await io(dirs.o, "file:a:b.qcow2", "write -P 7 0 64k");
    expect(await ok(qio(["-c", "read -P 7 0 64k", "file:image:top.qcow2"], dirs.o))).not.toContain("failed");
  });
});

describe("issue 19 item 10: readv/writev failures name the command (iotest 004)", () => {
  it("readv past the end of a raw file", async () => {
    const dirs = await twin("readv", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "t.qcow2", "1M");
    });
    for (const cmd of ["readv 2M 512", "writev -P 1 2M 512"]) {
      const q = await qemuIo(["-c", cmd, "t.qcow2"], dirs.q);
      const o = await qio(["-c", cmd, "t.qcow2"], dirs.o);
      expect(q.stdout).toContain(`${cmd.split(" ")[0]} failed`);
      expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    }
  });
});

describe("issue 19 item 6: corruption QEMU detects (iotest 060)", () => {
  it("discarding a cluster named by an unaligned L2 entry: 'Cannot free unaligned cluster'", async () => {
    const dirs = await twin("unaligned-l2", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "t.qcow2", "64M");
      await io(d, "t.qcow2", "write 0 64k");
      const fd = fs.openSync(path.join(d, "t.qcow2"), "r+");
      fs.writeSync(fd, new Uint8Array([0x80, 0, 0, 0, 0, 5, 2, 0]), 0, 8, 0x40000);
      fs.closeSync(fd);
    });
    const q = await qemuIo(["-c", "discard 0 64k", "t.qcow2"], dirs.q);
    const o = await qio(["-c", "discard 0 64k", "t.qcow2"], dirs.o);
    expect(q.stderr).toContain("Cannot free unaligned cluster 0x50200");
    expect([o.code, o.stderr]).toEqual([q.code, normalizeQemu(q.stderr)]);
    const corrupt = async (d: string) => JSON.parse(await img(d, "info", "--output=json", "t.qcow2"))["format-specific"].data.corrupt;
    expect(await corrupt(dirs.o)).toBe(await corrupt(dirs.q));
  });
});

describe("issue 19 item 10: amend -p shows QEMU's progress steps, walks added included (iotest 112)", () => {
  it("refcount_bits=1 -> 64 on 512-byte clusters needs a fourth walk: 66.67% then 50.00%", async () => {
    const dirs = await twin("amend-walks", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1,cluster_size=512", "t.qcow2", "64k");
      await io(d, "t.qcow2", `write 0 ${58 * 512}`);
    });
    const q = await qemuImg(["amend", "-o", "refcount_bits=64", "-p", "t.qcow2"], dirs.q);
    const o = await qimg(["amend", "-o", "refcount_bits=64", "-p", "t.qcow2"], dirs.o);
    expect(q.stdout).toContain("(66.67/100%)\r    (50.00/100%)");
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    await sameImage(dirs, "t.qcow2");
  });
});

/** Write `bytes` into `file` at `offset` (060's poke_file). */
function poke(dir: string, file: string, offset: number, bytes: number[]): void {
  const fd = fs.openSync(path.join(dir, file), "r+");
  fs.writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  fs.closeSync(fd);
}

/**
 * One of 060.sh's sections: `setup` (QEMU's tools and pokes) on both twins, then each command on both, run by
 * QEMU's tool on one and ours on the other: the same exit code and output (timings filtered) at every step.
 */
async function sameSteps(name: string, setup: (dir: string) => Promise<void>, steps: Array<["img" | "io", ...string[]]>): Promise<{ q: string; o: string }> {
  const dirs = await twin(name, setup);
  for (const [tool, ...args] of steps) {
    const q = await (tool === "img" ? qemuImg : qemuIo)(args, dirs.q);
    const o = await (tool === "img" ? qimg : qio)(args, dirs.o);
    const text = (r: { code: number | null; stdout: string; stderr: string }) =>
      `${r.code}\n${filterTimings(normalizeQemu(r.stdout))}${normalizeQemu(r.stderr)}`.split(dirs.q).join("DIR").split(dirs.o).join("DIR");
    expect(`${tool} ${args.join(" ")}\n${text(o)}`).toBe(`${tool} ${args.join(" ")}\n${text(q)}`);
  }
  return dirs;
}
/** 060's image: 64 MiB, header at 0, reftable at 0x10000, refblock at 0x20000, L1 at 0x30000, first L2 at 0x40000. */
const fresh = (extra: string[] = [], write?: string) => async (d: string) => {
  await img(d, "create", "-q", "-f", "qcow2", ...extra, "t.qcow2", "64M");
  if (write) await io(d, "t.qcow2", write);
};
const corruptFlag = async (d: string) => JSON.parse(await img(d, "info", "--output=json", "t.qcow2"))["format-specific"].data.corrupt;
const withoutEndOffset = (t: string) => t.replace(/Image end offset: \d+\n/, "");

describe("issue 19 item 6, the rest: corruption QEMU detects, 060.sh's steps", () => {
  it("discarding with an unaligned refblock marks the image corrupt; the repair then leaves QEMU's leak", async () => {
    const dirs = await sameSteps(
      "discard-unaligned-refblock",
      async (d) => {
        await fresh([], "write 0 128k")(d);
        poke(d, "t.qcow2", 0x10000, [0, 0, 0, 0, 0, 0, 0x2a, 0]);
      },
      [["io", "-c", "discard 0 65537", "t.qcow2"], ["img", "check", "-q", "-r", "all", "t.qcow2"]],
    );
    expect(await corruptFlag(dirs.o)).toBe(true);
    const q = await qemuImg(["check", "-r", "all", "t.qcow2"], dirs.q);
    const o = await qemuImg(["check", "-r", "all", "t.qcow2"], dirs.o);
    expect(q.stdout).toContain("1 leaked clusters");
    expect([o.code, o.stdout]).toEqual([q.code, q.stdout]);
  });

  for (const [label, opts, pokes] of [
    ["an out-of-bounds refblock", [], [[0x10008, [0, 0xff, 0xff, 0xff, 0, 0, 0, 0]]]],
    ["a non-covered in-bounds refblock", ["-o", "refcount_bits=1"], [[0x10008, [0, 0, 0, 0x10, 0, 0, 0, 0]]]],
    ["a refblock covered by an unaligned refblock", ["-o", "refcount_bits=1"], [[0x10008, [0, 0, 0, 0x10, 0, 0, 0, 0]], [0x10010, [0, 0, 0, 0, 0, 0, 2, 0]]]],
  ] as Array<[string, string[], Array<[number, number[]]>]>) {
    it(`resize --shrink with ${label} refuses, marks the image corrupt and keeps the size`, async () => {
      const dirs = await sameSteps(
        `shrink-${label.replace(/\W+/g, "-")}`,
        async (d) => {
          await fresh(opts)(d);
          for (const [at, bytes] of pokes) poke(d, "t.qcow2", at, bytes);
        },
        [["img", "resize", "--shrink", "t.qcow2", "32M"]],
      );
      const size = async (d: string) => JSON.parse(await img(d, "info", "--output=json", "t.qcow2"))["virtual-size"];
      expect(await size(dirs.o)).toBe(64 * 1024 * 1024);
      expect(await corruptFlag(dirs.o)).toBe(true);
      // What the refusal left on disk: the same verdict (host layout aside), the same repair.
      for (const args of [["check", "t.qcow2"], ["check", "-r", "all", "t.qcow2"], ["resize", "--shrink", "t.qcow2", "32M"]]) {
        const q = await qemuImg(args, dirs.q);
        const o = await qimg(args, dirs.o);
        expect([o.code, withoutEndOffset(o.stdout), o.stderr]).toEqual([q.code, withoutEndOffset(q.stdout), normalizeQemu(q.stderr)]);
      }
    });
  }

  for (const [label, at, bytes] of [
    ["an unaligned L1 entry", 0x30000, [0x80, 0, 0, 0, 0, 4, 0x2a, 0]],
    ["an unaligned preallocated zero cluster", 0x40000, [0x80, 0, 0, 0, 0, 5, 0x2a, 1]],
  ] as Array<[string, number, number[]]>) {
    it(`amend -o compat=0.10 with ${label} fails and marks the image corrupt`, async () => {
      const dirs = await sameSteps(
        `amend-${label.replace(/\W+/g, "-")}`,
        async (d) => {
          await fresh([], "write 0 64k")(d);
          poke(d, "t.qcow2", at, bytes);
        },
        [["img", "amend", "-o", "compat=0.10", "t.qcow2"]],
      );
      const compat = async (d: string) => JSON.parse(await img(d, "info", "--output=json", "t.qcow2"))["format-specific"].data;
      expect(await compat(dirs.o)).toEqual(await compat(dirs.q));
      expect(await corruptFlag(dirs.o)).toBe(true);
    });
  }

  it("amend -o compat=0.10 with an invalid snapshot L1 table: QEMU's two messages (iotest 080)", async () => {
    await sameSteps(
      "amend-snapshot-l1",
      async (d) => {
        await fresh([], "write 0 512")(d);
        await img(d, "snapshot", "-c", "test", "t.qcow2");
        // The first snapshot's L1 table offset, made unaligned.
        const h = new DataView(fs.readFileSync(path.join(d, "t.qcow2")).buffer);
        poke(d, "t.qcow2", Number(h.getBigUint64(64)), [0, 0, 0, 0, 0, 0x40, 2, 0]);
      },
      [["img", "amend", "-o", "compat=0.10", "t.qcow2"]],
    );
  });

  it("writes after the refcount table lost its entries: QEMU's refusals, then QEMU's refcounts after check -r all", async () => {
    await sameSteps(
      "empty-reftable",
      async (d) => {
        await fresh()(d);
        poke(d, "t.qcow2", 0x10000, [0, 0, 0, 0, 0, 0, 0, 0]);
      },
      [["io", "-c", "write 0 64k", "t.qcow2"], ["img", "check", "-r", "all", "t.qcow2"], ["img", "check", "t.qcow2"]],
    );
    await sameSteps(
      "empty-refblock",
      async (d) => {
        await fresh()(d);
        poke(d, "t.qcow2", 0x20000, [0, 0, 0, 0, 0, 0, 0, 0]);
      },
      [["io", "-c", "write 0 64k", "t.qcow2"], ["img", "check", "-r", "all", "t.qcow2"]],
    );
  });

  it("writing to an unaligned preallocated zero cluster", async () => {
    await sameSteps(
      "write-unaligned-zero",
      async (d) => {
        await fresh([], "write 0 64k")(d);
        await io(d, "t.qcow2", "discard 0 64k");
        poke(d, "t.qcow2", 0x40000, [0x80, 0, 0, 0, 0, 0, 0x2a, 1]);
      },
      [["io", "-c", "write 0 64k", "t.qcow2"], ["img", "check", "-r", "all", "t.qcow2"]],
    );
  });

  it("a data write over a refcount block names it as QEMU does", async () => {
    await sameSteps(
      "overlap-refblock",
      async (d) => {
        await fresh()(d);
        fs.truncateSync(path.join(d, "t.qcow2"), 0x40000 + 65536);
        poke(d, "t.qcow2", 0x30000, [0x80, 0, 0, 0, 0, 4, 0, 0]);
        poke(d, "t.qcow2", 0x20008, [0, 1]);
        poke(d, "t.qcow2", 0x40000, [0x80, 0, 0, 0, 0, 2, 0, 0]);
      },
      [["io", "-c", "open -o overlap-check=all t.qcow2", "-c", "write -P 0x2a 0 512"]],
    );
  });
});

describe("issue 19: convert -B naming an image that is not the source's backing file", () => {
  it("source backing file shorter than the new base: QEMU's top-layer status decides", async () => {
    const dirs = await twin("convert-B-foreign", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "base.qcow2", "1M");
      await io(d, "base.qcow2", "write -P 17 0 1M");
      await img(d, "create", "-q", "-f", "qcow2", "mid.qcow2", "512K");
      await io(d, "mid.qcow2", "write -P 5 256K 128K");
      await img(d, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "1200K");
      await io(d, "top.qcow2", "write -P 9 100K 50K");
    });
    const args = ["convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2", "t.qcow2"];
    await img(dirs.q, ...args);
    await ok(qimg(args, dirs.o));
    await sameImage(dirs, "t.qcow2");
  });
});

describe("issue 19 item 10: amend -p ends its progress line as qemu-img does (iotest 061)", () => {
  // 061's "progress report" sections: zero clusters 1 GiB apart, expanded by a downgrade, with and without a
  // snapshot (whose L1 table doubles the steps).
  for (const snapshot of [false, true]) {
    const setup = async (d: string) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "compat=1.1", "t.qcow2.base", "4G");
      await img(d, "create", "-q", "-f", "qcow2", "-o", "compat=1.1", "-b", "t.qcow2.base", "-F", "qcow2", "t.qcow2", "4G");
      await io(d, "t.qcow2", "write -z 0 64k", "write -z 1G 64k", "write -z 2G 64k", "write -z 3G 64k");
      if (snapshot) await img(d, "snapshot", "-c", "foo", "t.qcow2");
    };
    it(`through a pipe${snapshot ? ", with a snapshot" : ""}: the same bytes`, async () => {
      const dirs = await twin(`amend-p-pipe-${snapshot}`, setup);
      const q = await qemuImg(["amend", "-p", "-o", "compat=0.10", "t.qcow2"], dirs.q);
      const o = await qimg(["amend", "-p", "-o", "compat=0.10", "t.qcow2"], dirs.o);
      expect(q.stdout.endsWith("(100.00/100%)\r    (100.00/100%)\r\n")).toBe(true);
      expect([o.code, JSON.stringify(o.stdout), o.stderr]).toEqual([q.code, JSON.stringify(q.stdout), q.stderr]);
    });
  }

  it("through a terminal (script(1) gives both a pty): the same bytes", async () => {
    const dirs = await twin("amend-p-pty", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "compat=1.1", "t.qcow2", "4G");
      await io(d, "t.qcow2", "write -z 0 64k", "write -z 3G 64k");
    });
    const inPty = (dir: string, cmd: string) => run("script", ["-qec", cmd, "/dev/null"], { cwd: dir });
    const q = await inPty(dirs.q, "qemu-img amend -p -o compat=0.10 t.qcow2");
    const o = await inPty(dirs.o, `'${process.execPath}' '${QIMG}' amend -p -o compat=0.10 t.qcow2`);
    expect(q.stdout).toContain("(100.00/100%)\r");
    expect([o.code, JSON.stringify(o.stdout)]).toEqual([q.code, JSON.stringify(q.stdout)]);
  });
});

describe("issue 19: check differences on hostile images", () => {
  const sameCheck = async (name: string, patch: (d: string) => void, args: string[]) => {
    const dirs = await twin(name, async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "t.qcow2", "1M");
      await io(d, "t.qcow2", "write -P 7 0 16k");
      patch(d);
    });
    const q = await qemuImg(args, dirs.q);
    const o = await qimg(args, dirs.o);
    expect([o.code, o.stdout, o.stderr]).toEqual([q.code, q.stdout, normalizeQemu(q.stderr)]);
    expect(fs.readFileSync(path.join(dirs.o, "t.qcow2")).equals(fs.readFileSync(path.join(dirs.q, "t.qcow2")))).toBe(true);
    return q;
  };

  it("refcount table offset naming the L1 table: QEMU's 'Can't get refcount' lines and 'Check failed' (exit 1)", async () => {
    const q = await sameCheck("rt-at-l1", (d) => poke(d, "t.qcow2", 48, [0, 0, 0, 0, 0, 0, 0x30, 0]), ["check", "t.qcow2"]);
    expect(q.code).toBe(1);
    expect(q.stderr).toContain("Can't get refcount for cluster 0: Input/output error");
  });

  it("check -r all with 65536 snapshots whose table overlaps metadata: QEMU's messages, exit 1, the same bytes", async () => {
    const q = await sameCheck(
      "sn-65536",
      (d) => poke(d, "t.qcow2", 60, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0]),
      ["check", "-r", "all", "t.qcow2"],
    );
    expect(q.code).toBe(1);
    expect(q.stderr).toContain("overlaps with snapshot table");
  });
});

describe("issue 19: snapshots over damaged tables (iotest 080)", () => {
  for (const [label, entry] of [
    ["an L2 entry past any refcount table growth: EFBIG", [0xbf, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]],
    ["an L2 entry no refcount block covers: EAGAIN, as QEMU's refcount update answers", [0x80, 0, 0, 0xff, 0xff, 0xff, 0, 0]],
  ] as Array<[string, number[]]>) {
    it(`snapshot -c with ${label}`, async () => {
      const dirs = await sameSteps(
        `snap-huge-${entry[0]}`,
        async (d) => {
          await fresh([], "write 0 512")(d);
          poke(d, "t.qcow2", 0x40000, entry);
        },
        [["img", "snapshot", "-c", "test", "t.qcow2"]],
      );
      const list = async (d: string) => (await qemuImg(["snapshot", "-l", "t.qcow2"], d)).stdout;
      expect(await list(dirs.o)).toBe(await list(dirs.q));
    });
  }

  it("snapshot -a of a snapshot whose L1 table offset is invalid: the driver's message, then the failure", async () => {
    await sameSteps(
      "snap-apply-bad-l1",
      async (d) => {
        await fresh([], "write 0 512")(d);
        await img(d, "snapshot", "-c", "test", "t.qcow2");
        const h = new DataView(fs.readFileSync(path.join(d, "t.qcow2")).buffer);
        poke(d, "t.qcow2", Number(h.getBigUint64(64)), [0, 0, 0, 0, 0, 0x40, 2, 0]);
      },
      [["img", "snapshot", "-a", "test", "t.qcow2"], ["img", "snapshot", "-d", "test", "t.qcow2"]],
    );
  });
});

/** A command through `sh -c` with stderr merged into stdout, as the iotests run it (QEMU's stdout is block-buffered there). */
async function sameMerged(dirs: { q: string; o: string }, tool: "img" | "io", args: string[]): Promise<void> {
  const quote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;
  const line = (prog: string) => `${prog} ${args.map(quote).join(" ")} 2>&1; echo "exit $?"`;
  const q = await run("sh", ["-c", line(tool === "img" ? "qemu-img" : "qemu-io")], { cwd: dirs.q });
  const o = await run("sh", ["-c", line(`${quote(process.execPath)} ${quote(tool === "img" ? QIMG : QIO)}`)], { cwd: dirs.o });
  const text = (s: string) => filterTimings(s).split(dirs.q).join("DIR").split(dirs.o).join("DIR");
  expect(`${tool} ${args.join(" ")}\n${text(o.stdout)}`).toBe(`${tool} ${args.join(" ")}\n${text(normalizeQemu(q.stdout))}`);
}

/** qemu-img map with host offsets: where each cluster was placed. */
const placement = async (dir: string, file: string) => JSON.stringify(await mapOf(dir, file));

describe("issue 19, the rest of iotests 060, 080 and 271", () => {
  for (const [label, at, bytes] of [
    ["an unaligned L1 table offset (EINVAL)", 0, [0, 0, 0, 0, 0, 0x40, 2, 0]],
    ["a too large L1 table (EFBIG)", 8, [0x10, 0, 0, 0]],
  ] as Array<[string, number, number[]]>) {
    it(`overlap-check.inactive-l2=on with a snapshot's ${label}: every write fails, the refcount flush at close too (iotest 080)`, async () => {
      const dirs = await twin(`inactive-l2-${at}`, async (d) => {
        await fresh([], "write 0 512")(d);
        await img(d, "snapshot", "-c", "test", "t.qcow2");
        const h = new DataView(fs.readFileSync(path.join(d, "t.qcow2")).buffer);
        poke(d, "t.qcow2", Number(h.getBigUint64(64)) + at, bytes);
      });
      const before = fs.readFileSync(path.join(dirs.o, "t.qcow2"));
      await sameMerged(dirs, "io", ["-c", "open -o overlap-check.inactive-l2=on t.qcow2", "-c", "write 0 4k"]);
      expect(fs.readFileSync(path.join(dirs.o, "t.qcow2")).equals(before)).toBe(true);
      await sameMerged(dirs, "img", ["check", "t.qcow2"]);
    });
  }

  it("overlap-check=all: a data write onto an inactive L2 table marks the image corrupt (iotest 060)", async () => {
    await sameSteps(
      "inactive-l2-overlap",
      async (d) => {
        await fresh([], "write -P 1 0 512")(d);
        await img(d, "snapshot", "-c", "foo", "t.qcow2");
        await io(d, "t.qcow2", "write -P 2 0 512");
        // The active L2 table (copied by the write at 0x80000) maps guest cluster 0 onto the snapshot's L2 table.
        poke(d, "t.qcow2", 0x80000, [0x80, 0, 0, 0, 0, 4, 0, 0]);
      },
      [
        ["io", "-c", "open -o overlap-check=all t.qcow2", "-c", "write -P 3 0 512"],
        ["img", "check", "-r", "all", "t.qcow2"],
        ["io", "-c", "read -P 1 0 512", "t.qcow2"],
      ],
    );
  });

  it("an empty refcount table: the allocation right after an in-place cluster needs a refcount block at offset 0 (iotest 060)", async () => {
    await sameSteps(
      "empty-reftable-128k",
      async (d) => {
        await fresh([], "write 0 64k")(d);
        poke(d, "t.qcow2", 0x10000, [0, 0, 0, 0, 0, 0, 0, 0]);
      },
      [["io", "-c", "write 0 128k", "t.qcow2"], ["img", "check", "-r", "all", "t.qcow2"], ["img", "check", "t.qcow2"]],
    );
  });

  it("a write's new clusters follow its in-place part when free there, not the first free cluster (qcow2_alloc_clusters_at)", async () => {
    const dirs = await twin("alloc-hint", async (d) => {
      await fresh([], "write -P 1 0 192k")(d);
      await io(d, "t.qcow2", "write -z -u 64k 64k");
    });
    for (const cmd of ["write -P 2 128k 128k", "write -P 3 512k 64k", "write -P 4 448k 192k"]) {
      await sameMerged(dirs, "io", ["-c", cmd, "t.qcow2"]);
      expect(await placement(dirs.o, "t.qcow2")).toBe(await placement(dirs.q, "t.qcow2"));
    }
    await sameImage(dirs, "t.qcow2");
  });

  it("extended L2: clusters a write allocates together are contiguous; zero+unmap over compressed clusters (iotest 271)", async () => {
    const dirs = await twin("extl2-runs", async (d) => {
      await img(d, "create", "-q", "-f", "raw", "t.base", "2M");
      await io(d, "t.base", "write -q -P 0xff 0 2M");
      await img(d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "t.base", "-F", "raw", "t.qcow2", "2M");
      await io(d, "t.qcow2", ...Array.from({ length: 12 }, (_, i) => `write -q -c -P ${i + 1} ${i * 64}k 64k`));
      await io(d, "t.qcow2", "write -q -P 9 1280k 64k", "write -q -z -u 0 64k", "write -q -P 7 1408k 64k");
    });
    for (const cmd of ["write -q -z -u 64k 64k", "write -q -z -u 160k 128k", "write -q -z -u 351k 129k", "write -q -z -u 543k 128k", "write -q -P 5 1536k 192k"]) {
      await sameMerged(dirs, "io", ["-c", cmd, "t.qcow2"]);
      expect(await placement(dirs.o, "t.qcow2")).toBe(await placement(dirs.q, "t.qcow2"));
    }
    await sameImage(dirs, "t.qcow2");
  });

  it("extended L2: an invalid entry is named with one space on the write path and two on the read path (iotest 271)", async () => {
    for (const cmd of ["read -q 0 1k", "write -q 0 1k"]) {
      const dirs = await twin(`extl2-invalid-${cmd.split(" ")[0]}`, async (d) => {
        await img(d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "t.qcow2", "1M");
        await io(d, "t.qcow2", "write -q 256k 1k");
        poke(d, "t.qcow2", 0x40000 + 12, [0, 0, 0, 1]); // 'subcluster is allocated' on an unallocated cluster
      });
      await sameMerged(dirs, "io", ["-c", cmd, "t.qcow2"]);
    }
  });

  it("measure refuses extended L2 with clusters below 16 KiB, and an L1 table above 32 MiB (iotest 271)", async () => {
    const dirs = await twin("measure-extl2-8k", async () => undefined);
    await sameMerged(dirs, "img", ["measure", "--size", "1M", "-O", "qcow2", "-o", "cluster_size=8k,extended_l2=on"]);
    await sameMerged(dirs, "img", ["measure", "--size", "1024T", "-O", "qcow2", "-o", "extended_l2=on"]);
    await sameMerged(dirs, "img", ["measure", "--size", "1025T", "-O", "qcow2", "-o", "extended_l2=on"]);
  });

  it("extended L2 copy-on-write of a cluster a snapshot shares: the copied span is allocated, its zero subclusters too (iotest 271)", async () => {
    const dirs = await twin("extl2-cow-snapshot", async (d) => {
      await img(d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "t.qcow2", "1M");
      for (let c = 0; c < 10; c++) {
        await io(d, "t.qcow2", `write -q -z ${64 * c + 14}k 2k`, `write -q -P ${0xd0 + c} ${64 * c + 26}k 2k`, `write -q -P ${0xe0 + c} ${64 * c + 36}k 2k`);
      }
      await img(d, "snapshot", "-c", "snap1", "t.qcow2");
    });
    const writes = ["-P 0xf0 30k 1k", "-P 0xf1 84k 1k", "-P 0xf2 168k 1k", "-P 0xf3 218k 1k", "-P 0xf4 270k 1k", "-P 0xf5 321k 1k", "-z 414k 3k", "-z 474k 2k", "-z 538k 1k", "-z 588k 1k"];
    await sameMerged(dirs, "io", [...writes.flatMap((w) => ["-c", `write -q ${w}`]), "t.qcow2"]);
    // The L2 table the writes copied (0x110000), bitmaps included.
    const l2 = (d: string) => fs.readFileSync(path.join(d, "t.qcow2")).subarray(0x110000, 0x110000 + 160).toString("hex");
    expect(l2(dirs.o)).toBe(l2(dirs.q));
    await sameImage(dirs, "t.qcow2");
  });

  it("check -r all of an unaligned extended L2 entry: the second pass's findings come before the repair summary (iotest 271)", async () => {
    const dirs = await twin("extl2-unaligned-check", async (d) => {
      await img(d, "create", "-q", "-f", "raw", "t.base", "128k");
      await io(d, "t.base", "write -q -P 0xff 0 128k");
      await img(d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "t.base", "-F", "raw", "t.qcow2", "128k");
      await io(d, "t.qcow2", "write -q -P 1 4k 2k");
      poke(d, "t.qcow2", 0x40000 + 6, [2]);
    });
    await sameMerged(dirs, "img", ["check", "-r", "all", "t.qcow2"]);
    await sameMerged(dirs, "io", ["-c", "read -q 0 2k", "t.qcow2"]);
  });
});
