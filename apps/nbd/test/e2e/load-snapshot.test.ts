/**
 * qnbd -l/--load-snapshot against qemu-nbd: the internal snapshot is exported (read-only) in place of the
 * active image, chosen by id or name or by "snapshot.id=,snapshot.name="; a missing one fails as qemu-nbd does.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { QNBD_BIN, makeTempDir, run, runOk } from "../helpers";

const { dir, cleanup } = makeTempDir("qnbd-load-snapshot-");
afterAll(cleanup);

/** Serve `img` with `server` (--fork: returns once listening; it exits after its one client). */
async function readThroughNbd(server: "qnbd" | "qemu-nbd", img: string, snapshot: string, reads: string[]): Promise<string> {
  const sock = path.join(dir, `${server}.sock`);
  fs.rmSync(sock, { force: true });
  const cmd = server === "qnbd" ? [process.execPath, QNBD_BIN] : ["qemu-nbd"];
  await runOk(cmd[0]!, [...cmd.slice(1), "--fork", "-k", sock, "-f", "qcow2", "-l", snapshot, img]);
  const r = await run("qemu-io", ["-r", "-f", "raw", ...reads.flatMap((c) => ["-c", c]), `nbd:unix:${sock}`]);
  return r.stdout.replace(/ops; .*/g, "ops") + r.stderr;
}

describe("qnbd --load-snapshot", () => {
  it("exports the snapshot's data, as qemu-nbd does", async () => {
    const img = path.join(dir, "img.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    await runOk("qemu-io", ["-c", "write -P 0xa 0x1000 0x1000", img]);
    await runOk("qemu-img", ["snapshot", "-c", "sn1", img]);
    await runOk("qemu-io", ["-c", "write -P 0xc 0x1000 0x1000", img]);
    const reads = ["read -P 0xa 0x1000 0x1000", "read -P 0 0x2000 0x1000"];
    for (const sel of ["sn1", "1", "snapshot.name=sn1", "snapshot.id=1,snapshot.name=sn1"]) {
      const [ours, theirs] = [await readThroughNbd("qnbd", img, sel, reads), await readThroughNbd("qemu-nbd", img, sel, reads)];
      expect(ours, sel).toBe(theirs);
      expect(ours, sel).not.toContain("Pattern verification failed");
    }
  });

  it("a snapshot that does not exist: QEMU's message and exit code", async () => {
    const img = path.join(dir, "img2.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    const ours = await run(process.execPath, [QNBD_BIN, "-k", path.join(dir, "x.sock"), "-f", "qcow2", "-l", "nosuch", img]);
    const theirs = await run("qemu-nbd", ["-k", path.join(dir, "y.sock"), "-f", "qcow2", "-l", "nosuch", img]);
    expect(ours.stderr.replace(/^qnbd/, "qemu-nbd")).toBe(theirs.stderr);
    expect(ours.code).toBe(theirs.code);
  });
});
