/**
 * The blkdebug driver against qemu-io and qemu-img on twin images: the same config files, rules and options,
 * the same messages, exit codes and resulting images (qemu-img check, compare, map).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { QIO, filterTimings, normalizeQemu, qemuImg, qemuIo, qimg, qio, run, subDir, tempDir, type Run } from "./helpers";

const root = tempDir("blkdebug-");

/** Twin images made by qemu-img (`prep` qemu-io commands applied to the first before the copy). */
async function twins(dir: string, size: string, opts: string[] = [], prep: string[] = []): Promise<[string, string]> {
  const a = path.join(dir, "ours.qcow2");
  const b = path.join(dir, "theirs.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", ...opts, a, size]);
  if (prep.length > 0) await qemuIo([...prep.flatMap((c) => ["-c", c]), a]);
  fs.copyFileSync(a, b);
  return [a, b];
}

function expectSame(o: Run, t: Run, ours: string, theirs: string, what: string): void {
  const strip = (text: string, img: string) => filterTimings(text.split(img).join("IMG"));
  expect(strip(o.stdout, ours), what).toBe(strip(normalizeQemu(t.stdout), theirs));
  expect(strip(o.stderr, ours), what).toBe(strip(normalizeQemu(t.stderr), theirs));
  expect(o.code, what).toBe(t.code);
}

/** qemu-img check of both images: the same report. */
async function sameCheck(a: string, b: string, what: string): Promise<void> {
  const [o, t] = await Promise.all([qemuImg(["check", a]), qemuImg(["check", b])]);
  expect(o.stdout.split(a).join("IMG"), what).toBe(t.stdout.split(b).join("IMG"));
  expect(o.code, what).toBe(t.code);
}

function config(dir: string, text: string): string {
  const file = path.join(dir, "blkdebug.conf");
  fs.writeFileSync(file, text);
  return file;
}

describe("blkdebug config files (blkdebug:CONFIG:FILE)", () => {
  // [config, qemu-io commands, prep commands]: each a case of QEMU's tests 026, 074, 179 and others.
  const cases: Array<[string, string[], string[]]> = [
    ['[inject-error]\nevent = "read_aio"\nerrno = "5"\n', ["read 0 64k"], ["write -P 1 0 64k"]],
    ['[inject-error]\nevent = "read_aio"\nerrno = "28"\nonce = "on"\n', ["read 0 4k", "read -P 1 0 4k"], ["write -P 1 0 64k"]],
    ['[inject-error]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n', ["write -P 2 0 4k", "write -P 2 64k 4k", "read -P 2 64k 4k"], []],
    ['[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n', ["write 0 64k", "write 0 64k", "read -P 0xcd 0 64k"], ["write -z 0 64k"]],
    ['[inject-error]\nevent = "l2_load"\nerrno = "5"\nonce = "off"\n', ["read 0 4k"], ["write 0 4k"]],
    ['[inject-error]\nevent = "l2_load"\nerrno = "28"\nonce = "on"\n', ["write 0 4k"], ["write 0 4k"]],
    ['[inject-error]\nevent = "refblock_load"\nerrno = "5"\nonce = "on"\n', ["write 1M 4k"], []],
    ['[inject-error]\nevent = "l2_update"\nerrno = "5"\nimmediately = "on"\n', ["write -z 0 64k", "write -z -u 0 64k"], []],
    ['[set-state]\nevent = "write_aio"\nnew_state = "2"\n\n[inject-error]\nevent = "write_aio"\nstate = "2"\n', ["write -P 3 0 4k", "write -P 4 1M 4k", "write -P 5 2M 4k"], []],
    ['# a comment\n[inject-error]\nevent = "read_aio"\niotype = "write"\n', ["write -P 6 0 4k", "read -P 6 0 4k"], []],
    ['[inject-error]\nevent = "none"\niotype = "flush"\n', ["write 0 4k", "flush"], []],
  ];
  for (const [text, list, prep] of cases) {
    it(`${text.replace(/\n/g, " ")}: ${list.join("; ")}`, async () => {
      const dir = subDir(root, `conf-${cases.findIndex((c) => c[0] === text)}`);
      const [a, b] = await twins(dir, "4M", [], prep);
      const conf = config(dir, text);
      const args = (img: string) => [...list.flatMap((c) => ["-c", c]), `blkdebug:${conf}:${img}`];
      const [o, t] = await Promise.all([qio(args(a)), qemuIo(args(b))]);
      expectSame(o, t, a, b, text);
      await sameCheck(a, b, text);
    });
  }

  it("qemu-img compare: a read error of the blkdebug image (exit 4), the size warning after it", async () => {
    const dir = subDir(root, "compare");
    const [a, b] = await twins(dir, "1M", [], ["write -P 7 512 512"]);
    const small = path.join(dir, "small.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", small, "0"]);
    const conf = config(dir, '[inject-error]\nevent = "read_aio"\nerrno = "5"\n');
    const [o, t] = await Promise.all([qimg(["compare", `blkdebug:${conf}:${a}`, small]), qemuImg(["compare", `blkdebug:${conf}:${b}`, small])]);
    expectSame(o, t, a, b, "compare");
    expect(o.code).toBe(4);
  });

  it("bad config files and names fail the open with QEMU's messages", async () => {
    const dir = subDir(root, "bad");
    const [a, b] = await twins(dir, "1M");
    const missing = path.join(dir, "missing.conf");
    const badEvent = config(dir, '[inject-error]\nevent = "no_such_event"\n');
    for (const name of [(img: string) => `blkdebug:${missing}:${img}`, (img: string) => `blkdebug:${img}`, (img: string) => `blkdebug:${badEvent}:${img}`]) {
      const [o, t] = await Promise.all([qio(["-c", "read 0 512", name(a)]), qemuIo(["-c", "read 0 512", name(b)])]);
      expectSame(o, t, a, b, name("IMG"));
    }
  });
});

describe("blkdebug nodes in options", () => {
  it("file.driver=blkdebug in a json: name, with inline inject-error and set-state rules", async () => {
    const dir = subDir(root, "json");
    const [a, b] = await twins(dir, "4M");
    const json = (img: string) =>
      `json:${JSON.stringify({
        driver: "qcow2",
        file: {
          driver: "blkdebug",
          image: { driver: "file", filename: img },
          "set-state": [{ event: "write_aio", new_state: 2 }],
          "inject-error": [{ event: "write_aio", state: 2, errno: 28 }],
        },
      })}`;
    const list = ["write -P 1 0 4k", "write -P 2 1M 4k", "read -P 1 0 4k"];
    const [o, t] = await Promise.all([qio([...list.flatMap((c) => ["-c", c]), json(a)]), qemuIo([...list.flatMap((c) => ["-c", c]), json(b)])]);
    expectSame(o, t, a, b, "json");
    await sameCheck(a, b, "json");
  });

  it("a json: backing file name with blkdebug: qemu-img commit fails as QEMU's block job, the base untouched", async () => {
    const dir = subDir(root, "json-backing");
    const make = async (tag: string): Promise<string> => {
      const base = path.join(dir, `${tag}.base.qcow2`);
      const top = path.join(dir, `${tag}.qcow2`);
      await qemuImg(["create", "-q", "-f", "qcow2", base, "1M"]);
      const backing = `json:{'driver': 'qcow2', 'file': { 'driver': 'blkdebug', 'inject-error': [{ 'event': 'write_aio', 'errno': 28, 'once': true }], 'image': { 'driver': 'file', 'filename': '${base}' }}}`;
      await qemuImg(["create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", top]);
      await qemuIo(["-c", "write -P 5 0 64k", top]);
      return top;
    };
    const [a, b] = [await make("ours"), await make("theirs")];
    const [oWrite, tWrite] = await Promise.all([qio(["-c", "read -P 0 64k 64k", a]), qemuIo(["-c", "read -P 0 64k 64k", b])]);
    expectSame(oWrite, tWrite, a, b, "read through the json: backing name");
    const [o, t] = await Promise.all([qimg(["commit", a]), qemuImg(["commit", b])]);
    expectSame(o, t, a, b, "commit");
    expect(o.stderr).toContain("Block job failed: No space left on device");
    await sameCheck(a.replace(".qcow2", ".base.qcow2"), b.replace(".qcow2", ".base.qcow2"), "base");
  });

  it("driver=blkdebug over qcow2: write-zeroes and discard split by the limits as QEMU splits them", async () => {
    const dir = subDir(root, "limits");
    const [a, b] = await twins(dir, "64M", ["-o", "cluster_size=1M"], ["write -P 22 0 60M"]);
    const cases = [
      ["align=512,opt-write-zero=15M,max-write-zero=15M", "write -z 2M 32M"],
      ["align=512,max-transfer=64k,opt-write-zero=1M", "write -z 8003584 2093056"],
      ["align=512,opt-discard=15M,max-discard=15M", "discard 40000001 12M"],
      ["align=4k,max-transfer=64k", "write -P 33 1000 128k"],
    ];
    for (const [limits, cmd] of cases) {
      const args = (img: string) => ["-c", `open -o driver=blkdebug,image.driver=qcow2,${limits} blkdebug::${img}`, "-c", cmd!];
      const [o, t] = await Promise.all([qio(args(a)), qemuIo(args(b))]);
      expectSame(o, t, a, b, `${limits} ${cmd}`);
    }
    const [mo, mt] = await Promise.all([qemuImg(["map", "--output=json", a]), qemuImg(["map", "--output=json", b])]);
    expect(mo.stdout).toBe(mt.stdout);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });

  it("limits QEMU cannot meet are refused in its words", async () => {
    const dir = subDir(root, "bad-limits");
    const [a, b] = await twins(dir, "1M");
    for (const limits of ["align=3", "align=4k,max-transfer=6k", "opt-write-zero=1000"]) {
      const args = (img: string) => ["-c", `open -o driver=blkdebug,image.driver=qcow2,${limits} blkdebug::${img}`];
      const [o, t] = await Promise.all([qio(args(a)), qemuIo(args(b))]);
      expectSame(o, t, a, b, limits);
    }
  });
});

/** qemu-img check as QEMU's tests read it with leaks ignored: exit 3 (leaks only) counts as no errors. */
async function checkIgnoringLeaks(img: string): Promise<string> {
  const r = await qemuImg(["check", img]);
  if (r.code === 3) return "No errors were found on the image.\n";
  return r.stdout.split(img).join("IMG").replace(/^.*(allocated.*fragmented|Image end offset).*\n/gm, "") + r.stderr.split(img).join("IMG");
}

describe("the qcow2 engine's debug events where QEMU raises them", () => {
  // [event, errno, once, cluster size, qemu-io command]: cases of QEMU's test 026.
  const cases: Array<[string, number, boolean, number, string]> = [
    ["refblock_alloc", 5, true, 1024, "write 0 128k"],
    ["refblock_alloc", 28, false, 1024, "write -b 0 128k"],
    ["refblock_load", 5, false, 1024, "write 0 128k"],
    ["l1_update", 5, true, 1024, "write -b 0 128k"],
    ["l2_update", 28, false, 1024, "write -b 0 128k"],
    ["l1_grow_alloc_table", 5, true, 1024, "write -b 0 64k"],
    ["l1_grow_write_table", 28, false, 1024, "write -b 0 64k"],
    ["l1_grow_activate_table", 5, false, 1024, "write -b 0 64k"],
    ["refblock_alloc_hookup", 28, true, 512, "write 0 2M"],
    ["refblock_alloc_write", 28, false, 512, "write -b 0 2M"],
    ["refblock_alloc_write_blocks", 28, true, 512, "write 0 64M"],
    ["refblock_alloc_write_table", 28, false, 512, "write 0 64M"],
    ["refblock_alloc_switch_table", 28, true, 512, "write -b 0 64M"],
  ];
  for (const [event, errno, once, cs, cmd] of cases) {
    it(`${event} errno ${errno} once ${once ? "on" : "off"}: ${cmd}`, async () => {
      const dir = subDir(root, `event-${event}-${errno}-${once}`);
      const [a, b] = await twins(dir, "1G", ["-o", `cluster_size=${cs}`], event === "l2_update" ? ["write -b 0 512"] : []);
      const conf = config(dir, `[inject-error]\nevent = "${event}"\nerrno = "${errno}"\nonce = "${once ? "on" : "off"}"\n`);
      const [o, t] = await Promise.all([qio(["-c", cmd, `blkdebug:${conf}:${a}`]), qemuIo(["-c", cmd, `blkdebug:${conf}:${b}`])]);
      expectSame(o, t, a, b, `${event} ${cmd}`);
      expect(o.stdout, "the rule fails the request").toContain(" failed: ");
      expect(await checkIgnoringLeaks(a)).toBe(await checkIgnoringLeaks(b));
    });
  }

  it("data and preallocated zero clusters with contiguous hosts are written as one request (066)", async () => {
    const dir = subDir(root, "one-request");
    const [a, b] = await twins(dir, "192k", [], ["write -P 42 0 192k", "write -z 64k 64k"]);
    // A second write_aio event would fail the request: it must stay one.
    const json = (img: string) =>
      `json:${JSON.stringify({
        driver: "qcow2",
        file: {
          driver: "blkdebug",
          "image.filename": img,
          "set-state": [{ event: "write_aio", new_state: 2 }],
          "inject-error": [{ event: "write_aio", state: 2 }],
        },
      })}`;
    const [o, t] = await Promise.all([qio(["-c", "write -P 43 0 192k", json(a)]), qemuIo(["-c", "write -P 43 0 192k", json(b)])]);
    expectSame(o, t, a, b, "write");
    expect(o.stdout).toContain("wrote 196608/196608");
    const [mo, mt] = await Promise.all([qemuImg(["map", "--output=json", a]), qemuImg(["map", "--output=json", b])]);
    expect(mo.stdout).toBe(mt.stdout);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
  });
});

describe("qemu-img commit emptying the top image (QEMU's make_completely_empty)", () => {
  for (const event of ["l1_update", "empty_image_prepare", "reftable_update", "refblock_alloc"]) {
    it(`a failure at ${event}: 'Failed to empty', the image dropped, repaired on the next open`, async () => {
      const dir = subDir(root, `empty-${event}`);
      const make = async (tag: string): Promise<string> => {
        const top = path.join(dir, `${tag}.qcow2`);
        await qemuImg(["create", "-q", "-f", "qcow2", `${top}.base`, "64M"]);
        await qemuImg(["create", "-q", "-f", "qcow2", "-b", `${top}.base`, "-F", "qcow2", top, "64M"]);
        await qemuIo(["-c", "write 0 64k", top]);
        return top;
      };
      const [a, b] = [await make("ours"), await make("theirs")];
      const conf = config(dir, `[inject-error]\nevent = "${event}"\n`);
      const [o, t] = await Promise.all([qimg(["commit", `blkdebug:${conf}:${a}`]), qemuImg(["commit", `blkdebug:${conf}:${b}`])]);
      expectSame(o, t, a, b, "commit");
      expect(o.stderr).toContain("Failed to empty");
      // The dirty image is repaired as it opens (QEMU prints what it repairs).
      const [ro, rt] = await Promise.all([qio(["-c", "close", a]), qemuIo(["-c", "close", b])]);
      expectSame(ro, rt, a, b, "reopen");
      await sameCheck(a, b, "after");
    });
  }

  it("without a failure the top image is empty", async () => {
    const dir = subDir(root, "empty-ok");
    const top = path.join(dir, "t.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", `${top}.base`, "64M"]);
    await qemuImg(["create", "-q", "-f", "qcow2", "-b", `${top}.base`, "-F", "qcow2", top, "64M"]);
    await qemuIo(["-c", "write -P 9 0 64k", top]);
    const conf = config(dir, '[inject-error]\nevent = "cluster_free"\n');
    expect((await qimg(["commit", `blkdebug:${conf}:${top}`])).stdout).toBe("Image committed.\n");
    expect((await qemuImg(["map", "--output=json", top])).stdout).not.toContain('"depth": 0');
    expect((await qemuIo(["-c", "read -P 9 0 64k", top])).stdout).toContain("read 65536/65536");
  });
});

describe("snapshot deletion with a failing cluster_free (QEMU's test 217)", () => {
  it("the old snapshot table leaks, the deletion fails with QEMU's messages, check reports the same leaks", async () => {
    const dir = subDir(root, "snapshot-free");
    const [a, b] = await twins(dir, "64M", [], ["write 0 64k"]);
    for (const img of [a, b]) await qemuImg(["snapshot", "-c", "foo", img]);
    const conf = config(dir, '[inject-error]\nevent = "cluster_free"\nerrno = "5"\n');
    const [o, t] = await Promise.all([qimg(["snapshot", "-d", "foo", `blkdebug:${conf}:${a}`]), qemuImg(["snapshot", "-d", "foo", `blkdebug:${conf}:${b}`])]);
    expectSame(o, t, a, b, "delete");
    expect(o.stderr).toContain("qcow2_free_clusters failed: Input/output error\n");
    await sameCheck(a, b, "check");
    const [ro, rt] = await Promise.all([qemuImg(["check", "-r", "leaks", a]), qemuImg(["check", "-r", "leaks", b])]);
    expect(ro.stdout.split(a).join("IMG")).toBe(rt.stdout.split(b).join("IMG"));
  });
});

describe("qemu-io break, wait_break, resume, remove_break (QEMU's test 046)", () => {
  // QEMU completes the requests that waited for the suspended one in no fixed order: offsets and sizes are
  // left out of the comparison, as QEMU's test 046 leaves them out (the image comparison covers the data).
  const prompts = (text: string) =>
    text
      .replace(/(qemu-io|qio)> /g, "")
      .replace(/\d+\/\d+ bytes at offset \d+/g, "N/N bytes at offset N")
      .replace(/^\d+ KiB, /gm, "N KiB, ");

  it("a suspended aio request, requests queued behind it, resumed: the same output and image", async () => {
    const dir = subDir(root, "break");
    const base = path.join(dir, "base.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", base, "1M"]);
    await qemuIo(["-c", "write -P 1 0 1M", base]);
    const [a, b] = [path.join(dir, "ours.qcow2"), path.join(dir, "theirs.qcow2")];
    for (const img of [a, b]) await qemuImg(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img, "6G"]);
    const input = [
      "break write_aio A",
      "aio_write -P 10 0x18000 0x2000",
      "wait_break A",
      "aio_write -P 11 0x12000 0x2000",
      "aio_write -P 12 0x1c000 0x2000",
      "resume A",
      "aio_flush",
      "break write_aio B",
      "aio_write -P 20 0x28000 0x2000",
      "wait_break B",
      "aio_write -P 21 0x2a000 0x10000",
      "remove_break B",
      "aio_flush",
      "resume B",
      "remove_break B",
      "break no_such_event C",
      "",
    ].join("\n");
    const [o, t] = await Promise.all([run(process.execPath, [QIO, `blkdebug::${a}`], { input }), run("qemu-io", [`blkdebug::${b}`], { input })]);
    expect(filterTimings(prompts(o.stdout))).toBe(filterTimings(prompts(t.stdout)));
    expect(o.stdout).toContain("blkdebug: Suspended request 'A'\n");
    expect(o.code).toBe(t.code);
    expect((await qemuImg(["compare", a, b])).stdout).toBe("Images are identical.\n");
    await sameCheck(a, b, "check");
  });

  it("without a blkdebug node the commands are not supported", async () => {
    const dir = subDir(root, "break-none");
    const [a, b] = await twins(dir, "1M");
    // (wait_break is left out: QEMU's waits forever there.)
    const list = ["break write_aio A", "resume A", "remove_break A", "write 0 512"];
    const args = (img: string) => [...list.flatMap((c) => ["-c", c]), img];
    const [o, t] = await Promise.all([qio(args(a)), qemuIo(args(b))]);
    expectSame(o, t, a, b, "none");
  });
});
