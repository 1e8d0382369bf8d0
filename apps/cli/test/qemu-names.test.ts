/**
 * Started through links named `qemu-img` and `qemu-io`, qimg and qio name themselves as QEMU's tools do: the
 * same stderr as QEMU's for the same bad input, the `qemu-io> ` prompt, `--version`. Under their own names they
 * keep their own.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { QIMG, QIO, filterTimings, qemuImg, qemuIo, qimg, run, tempDir } from "./helpers";

const dir = tempDir("qemu-names-");
const links = path.join(dir, "bin");
fs.mkdirSync(links);
fs.symlinkSync(QIMG, path.join(links, "qemu-img"));
fs.symlinkSync(QIO, path.join(links, "qemu-io"));
const asQemuImg = (args: string[], input?: string) => run(process.execPath, [path.join(links, "qemu-img"), ...args], { cwd: dir, input });
const asQemuIo = (args: string[], input?: string) => run(process.execPath, [path.join(links, "qemu-io"), ...args], { cwd: dir, input });

describe("answering to QEMU's names", () => {
  it("qemu-img: the same error lines as QEMU's qemu-img", async () => {
    await qemuImg(["create", "-f", "qcow2", path.join(dir, "a.qcow2"), "1M"]);
    const cases: string[][] = [
      ["info", path.join(dir, "missing.qcow2")],
      ["resize", path.join(dir, "a.qcow2"), "512K"],
      ["nosuchcommand"],
      ["create", "-f", "qcow2", path.join(dir, "b.qcow2")],
    ];
    for (const args of cases) {
      const [ours, theirs] = await Promise.all([asQemuImg(args), qemuImg(args)]);
      expect(ours.stderr, args.join(" ")).toBe(theirs.stderr);
      expect(ours.code, args.join(" ")).toBe(theirs.code);
    }
  });

  it("qemu-io: error lines and the qemu-io> prompt as QEMU's qemu-io", async () => {
    const img = path.join(dir, "p.qcow2");
    await qemuImg(["create", "-f", "qcow2", img, "1M"]);
    const missing = ["-c", "read 0 512", path.join(dir, "missing.qcow2")];
    const [a, b] = await Promise.all([asQemuIo(missing), qemuIo(missing)]);
    expect(a.stderr).toBe(b.stderr);
    const input = "write 0 512\nread -P 0 0 512\n";
    const [c, d] = await Promise.all([asQemuIo(["-f", "qcow2", img], input), run("qemu-io", ["-f", "qcow2", img], { input })]);
    expect(filterTimings(c.stdout)).toBe(filterTimings(d.stdout));
    expect(c.stdout).toContain("qemu-io> ");
  });

  it("--version names QEMU's tool and version, and qcowkit", async () => {
    const img = await asQemuImg(["--version"]);
    expect(img.stdout).toMatch(/^qemu-img version 7\.2\.\d+ \(qcowkit [\d.]+\)\n$/);
    const io = await asQemuIo(["--version"]);
    expect(io.stdout).toMatch(/^qemu-io version 7\.2\.\d+ \(qcowkit [\d.]+\)\n$/);
  });

  it("under its own name qimg keeps its own", async () => {
    const r = await qimg(["info", path.join(dir, "missing.qcow2")]);
    expect(r.stderr).toMatch(/^qimg: /);
    expect((await qimg(["--version"])).stdout).toMatch(/^qimg version /);
  });
});
