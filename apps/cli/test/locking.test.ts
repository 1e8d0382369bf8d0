/**
 * Image locking without the native addon (QCOWKIT_NATIVE=0 stands in for a machine where none loads): a
 * read-write open is refused naming the opt-out, never done silently; file.locking=off opts out; read-only
 * opens go ahead with a warning. With the addon, file.locking=off really takes no lock.
 */
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { QIMG, QIO, qemuImg, qemuIo, run, tempDir } from "./helpers";
import { rmSync } from "node:fs";

const dir = tempDir("qimg-locking-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const noAddon = { QCOWKIT_NATIVE: "0" };

describe("without the native addon", () => {
  it("qio refuses to open read-write, and file.locking=off opens it", async () => {
    const img = path.join(dir, "a.qcow2");
    expect((await qemuImg(["create", "-q", "-f", "qcow2", img, "1M"])).code).toBe(0);
    const refused = await run(process.execPath, [QIO, "-c", "write -P 0x33 0 4k", img], { env: noAddon });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /^qio: can't open device .*a\.qcow2: Cannot lock '.*a\.qcow2' for writing \(the native addon is not loaded: disabled by QCOWKIT_NATIVE=0\); to open it without a lock, turn locking off: locking: "off" in the API, file\.locking=off on the command line\n$/,
    );
    const opened = await run(process.execPath, [QIO, "--image-opts", "-c", "write -P 0x33 0 4k", `driver=qcow2,file.filename=${img},file.locking=off`], { env: noAddon });
    expect(opened.code, opened.stderr).toBe(0);
    expect((await qemuIo(["-r", "-c", "read -P 0x33 0 4k", img])).stdout).toMatch(/read 4096\/4096/);
  });

  it("qimg info opens read-only with a warning", async () => {
    const img = path.join(dir, "b.qcow2");
    expect((await qemuImg(["create", "-q", "-f", "qcow2", img, "1M"])).code).toBe(0);
    const info = await run(process.execPath, [QIMG, "info", img], { env: noAddon });
    expect(info.code).toBe(0);
    expect(info.stderr).toMatch(/^qimg: warning: '.*b\.qcow2' is opened read-only without a lock \(the native addon is not loaded: disabled by QCOWKIT_NATIVE=0\); a writer elsewhere is not stopped\n$/);
    expect(info.stdout).toMatch(/file format: qcow2/);
  });
});

describe("with the native addon", () => {
  it("file.locking=off takes no lock: QEMU can write meanwhile; the default is refused by QEMU's lock", async () => {
    const img = path.join(dir, "c.qcow2");
    expect((await qemuImg(["create", "-q", "-f", "qcow2", img, "1M"])).code).toBe(0);
    // qio holds the image open (sleep) while qemu-io tries to write it.
    const holder = (opts: string) =>
      run(process.execPath, [QIO, "--image-opts", "-c", "sleep 1500", opts]);
    const locked = holder(`driver=qcow2,file.filename=${img}`);
    await new Promise((r) => setTimeout(r, 700));
    const blocked = await qemuIo(["-c", "write 0 512", img]);
    expect((await locked).code).toBe(0);
    expect(blocked.stderr).toMatch(/Failed to get "write" lock/);
    const unlocked = holder(`driver=qcow2,file.filename=${img},file.locking=off`);
    await new Promise((r) => setTimeout(r, 700));
    const written = await qemuIo(["-c", "write 0 512", img]);
    expect((await unlocked).code).toBe(0);
    expect(written.code, written.stderr).toBe(0);
  });

  it("file.locking takes on, off and auto only", async () => {
    const img = path.join(dir, "d.qcow2");
    expect((await qemuImg(["create", "-q", "-f", "qcow2", img, "1M"])).code).toBe(0);
    const bad = await run(process.execPath, [QIMG, "info", "--image-opts", `driver=qcow2,file.filename=${img},file.locking=maybe`]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/Parameter 'file.locking' expects 'on' or 'off'/);
    const auto = await run(process.execPath, [QIMG, "info", "--image-opts", `driver=qcow2,file.filename=${img},file.locking=auto`]);
    expect(auto.code, auto.stderr).toBe(0);
  });
});
