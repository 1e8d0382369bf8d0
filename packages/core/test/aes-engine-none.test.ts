/**
 * Outside the Node entry no AES engine is installed (issue 18 item 6: the table-driven AES leaks key bits
 * through cache timing, so qcowkit does not install it anywhere): opening or creating an encrypted image fails
 * in one line with NOT_SUPPORTED until the embedder installs an engine, and works once it has. This file imports
 * only the runtime-agnostic entry, as a browser page would.
 */
import { readFileSync } from "node:fs";
import { MemoryStore } from "@qcowkit/datafile";
import { isQcow2Error } from "@qcowkit/spec";
import { afterAll, describe, expect, it } from "vitest";
import { NO_AES_ENGINE, tableAesEngine } from "../src/crypto/aes-engine";
import { Qcow2Image, createQcow2, registerAesEngine } from "../src/index";
import { qemu, qemuCreatingLuks, tempDir } from "./helpers";

const tmp = tempDir("qcowkit-aes-none-");
afterAll(tmp.cleanup);
const secret = new TextEncoder().encode("hunter2");

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

describe("no AES engine outside the Node entry", () => {
  it("a QEMU-encrypted LUKS qcow2 refuses to open, creating one refuses, and both work once an engine is installed", async () => {
    const path = tmp.path("luks.qcow2");
    qemuCreatingLuks(["create", "-q", "--object", "secret,id=s0,data=hunter2", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", path, "1M"]);
    qemu("qemu-io", ["--object", "secret,id=s0,data=hunter2", "--image-opts", "-c", "write -P 0x5a 0 64k", `driver=qcow2,file.filename=${path},encrypt.key-secret=s0`]);
    const bytes = new Uint8Array(readFileSync(path));
    const open = () => Qcow2Image.open(new MemoryStore({ name: "luks.qcow2", bytes }), { readOnly: true, encrypt: { keySecret: secret } });

    const refused = await rejection(open());
    expect(isQcow2Error(refused) && refused.code).toBe("NOT_SUPPORTED");
    expect((refused as Error).message).toBe(NO_AES_ENGINE);
    expect((refused as Error).message).not.toContain("\n");

    const created = await rejection(
      createQcow2(new MemoryStore({ name: "new.qcow2" }), { size: 1 << 20, encrypt: { format: "luks", keySecret: secret, iterTimeMs: 10 } }),
    );
    expect(isQcow2Error(created) && created.code).toBe("NOT_SUPPORTED");

    // An embedder's engine (here the reference AES, for the test only) makes the same image readable.
    registerAesEngine(tableAesEngine);
    const img = await open();
    const got = new Uint8Array(65536);
    await img.read(0, got);
    expect(got.every((b) => b === 0x5a)).toBe(true);
    await img.close();
  });
});
