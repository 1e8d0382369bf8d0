/**
 * Image locking on open, against QEMU 7.2: a second writer is refused as QEMU refuses it, readers of an image
 * in use are refused unless they force-share, backing files are locked as readers, and QEMU sees our locks.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { open } from "node:fs/promises";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { probeImageLocks } from "@qcowkit/datafile/node";
import { openImage, type BlockImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

const t = tempDir("qcowkit-lock-");
afterAll(() => t.cleanup());
let n = 0;

function newImage(opts: string[] = []): string {
  const path = t.path(`i${++n}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, path, "1M"]);
  return path;
}

async function heldPermissions(path: string): Promise<number> {
  const handle = await open(path, "r");
  try {
    return probeImageLocks(handle.fd)?.permissions ?? 0;
  } finally {
    await handle.close();
  }
}

/** qemu-io holding the image open (commands from a pipe we keep open). */
async function qemuHolds(path: string, args: string[] = []): Promise<ChildProcess> {
  const child = spawn("qemu-io", [...args, path], { stdio: ["pipe", "ignore", "pipe"] });
  children.push(child);
  const deadline = Date.now() + 15_000;
  while ((await heldPermissions(path)) === 0) {
    if (child.exitCode !== null) throw new Error(`qemu-io exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error("qemu-io took no lock");
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

const children: ChildProcess[] = [];
const images: BlockImage[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.exitCode === null) {
      const exited = new Promise((r) => c.once("exit", r));
      c.stdin?.end("quit\n");
      await exited;
    }
  }
  for (const i of images.splice(0)) await i.close().catch(() => undefined);
});

async function failure(p: Promise<unknown>): Promise<{ message: string; code: string | undefined; hint: string | undefined; causeHint: string | undefined }> {
  try {
    const img = await p;
    images.push(img as BlockImage);
  } catch (e) {
    const err = e as { message: string; code?: string; hint?: string; cause?: { hint?: string } };
    return { message: err.message, code: err.code, hint: err.hint, causeHint: err.cause?.hint };
  }
  throw new Error("the open succeeded");
}

/** QEMU's message for opening `path` with qemu-io `args`, without its "can't open device" prefix. */
function qemuIoRefusal(path: string, args: string[]): string[] {
  const r = qemuStatus("qemu-io", [...args, "-c", "read 0 512", path]);
  expect(r.status).toBe(1);
  return r.stderr.trim().split("\n").map((l) => l.replace(`qemu-io: can't open device ${path}: `, ""));
}

describe("image locks on open", () => {
  it("a second writer is refused as QEMU refuses it; readers too, unless they force-share", async () => {
    const path = newImage();
    await qemuHolds(path);
    const [qemuMessage, qemuHint] = qemuIoRefusal(path, []);
    const w = await failure(openImage(path, { format: "qcow2" }));
    expect(w.code).toBe("LOCKED");
    expect([w.message, w.hint]).toEqual([qemuMessage, qemuHint]);
    expect(w.message).toBe('Failed to get "write" lock');
    const [qemuReadMessage] = qemuIoRefusal(path, ["-r"]);
    const r = await failure(openImage(path, { format: "qcow2", readOnly: true }));
    expect(r.message).toBe(qemuReadMessage);
    expect(r.message).toBe('Failed to get shared "write" lock');
    const shared = await openImage(path, { format: "qcow2", readOnly: true, shareRW: true });
    images.push(shared);
    expect(shared.virtualSize).toBe(1024 * 1024);
  });

  it("QEMU sees our writer and reader locks; closing releases them", async () => {
    const path = newImage();
    const writer = await openImage(path, { format: "qcow2" });
    expect(qemuIoRefusal(path, [])).toEqual(['Failed to get "write" lock', `Is another process using the image [${path}]?`]);
    expect(qemuIoRefusal(path, ["-r"])[0]).toBe('Failed to get shared "write" lock');
    expect(qemuStatus("qemu-io", ["-r", "-U", "-c", "read 0 512", path]).status).toBe(0);
    await writer.close();
    const reader = await openImage(path, { format: "qcow2", readOnly: true });
    images.push(reader);
    expect(qemuIoRefusal(path, [])[0]).toBe('Failed to get "write" lock');
    expect(qemuStatus("qemu-io", ["-r", "-c", "read 0 512", path]).status).toBe(0);
    await reader.close();
    expect(qemuStatus("qemu-io", ["-c", "read 0 512", path]).status).toBe(0);
  });

  it("two writers in one process conflict too; a failed open leaves no lock behind", async () => {
    const path = newImage();
    const first = await openImage(path, { format: "qcow2" });
    images.push(first);
    const second = await failure(openImage(path, { format: "qcow2" }));
    expect(second.message).toBe('Failed to get "write" lock');
    await first.close();
    const third = await openImage(path, { format: "qcow2" });
    images.push(third);
    expect(third.readOnly).toBe(false);
  });

  it("a backing file in use by a writer cannot be read through an overlay (QEMU's message)", async () => {
    const base = newImage();
    const top = newImage(["-b", base, "-F", "qcow2"]);
    await qemuHolds(base);
    const [qemuMessage, qemuHint] = qemuIoRefusal(top, ["-r"]);
    const f = await failure(openImage(top, { format: "qcow2", readOnly: true }));
    expect([f.message, f.causeHint]).toEqual([qemuMessage, qemuHint]);
  });

  it("force-share with a writable open is refused as QEMU refuses it", async () => {
    const path = newImage();
    const [qemuMessage] = qemuIoRefusal(path, ["-U"]);
    const f = await failure(openImage(path, { format: "qcow2", shareRW: true }));
    expect(f.message).toBe(qemuMessage);
  });

  it("QEMU holding a read-only open lets us read but not write", async () => {
    const path = newImage();
    await qemuHolds(path, ["-r"]);
    const reader = await openImage(path, { format: "qcow2", readOnly: true });
    images.push(reader);
    const w = await failure(openImage(path, { format: "qcow2" }));
    expect(w.message).toBe(qemuIoRefusal(path, [])[0]);
  });
});
