import { spawn, type ChildProcess } from "node:child_process";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  blockPermission,
  FileStore,
  imagePermissions,
  lockConflictHint,
  lockImage,
  lockPermissions,
  probeImageLocks,
  setNativeEnabled,
  type ImageLock,
} from "../src/node";
import { nativeTurnedOff, requireNative, runQemu, scratchDirectory } from "./native-helpers";

/** QEMU-compatible image locking, checked against qemu-io and qemu-img holding and probing locks. */

const directory = scratchDirectory("native-lock");
let counter = 0;
const { consistentRead, write, writeUnchanged, resize } = blockPermission;

/** A fresh qcow2 image made by qemu-img, named relative to nothing (absolute path). */
function newImage(): string {
  const path = join(directory(), `i${++counter}.qcow2`);
  const created = runQemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
  expect(created.status, created.stderr).toBe(0);
  return path;
}

/** What other open files hold on `path`, seen through a fresh open of our own. */
async function locksOn(path: string): Promise<{ permissions: number; unsharedPermissions: number } | undefined> {
  const handle = await open(path, "r");
  try {
    return probeImageLocks(handle.fd);
  } finally {
    await handle.close();
  }
}

/** The error message and hint QEMU prints, split out of "tool: prefix: MESSAGE\nHINT\n". */
function qemuLockFailure(stderr: string, prefix: string): { message: string; hint: string } {
  const [first = "", hint = ""] = stderr.trimEnd().split("\n");
  expect(first.startsWith(prefix), first).toBe(true);
  return { message: first.slice(prefix.length), hint };
}

async function failure(promise: Promise<unknown>): Promise<{ code?: string; errno?: string; message: string; hint?: string }> {
  const outcome = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(outcome, "expected a rejection").toBeInstanceOf(Error);
  return outcome as { code?: string; errno?: string; message: string; hint?: string };
}

/** qemu-io with the image open, reading commands from a pipe we keep open. */
class QemuIoHolder {
  private constructor(private readonly child: ChildProcess) {}

  static async start(path: string, args: string[] = []): Promise<QemuIoHolder> {
    const child = spawn("qemu-io", [...args, path], { stdio: ["pipe", "pipe", "pipe"] });
    const holder = new QemuIoHolder(child);
    const exited = new Promise<never>((_, reject) => {
      child.once("error", reject);
      child.once("exit", (code) => reject(new Error(`qemu-io exited early with ${String(code)}`)));
    });
    // Wait until its lock bytes show up.
    const deadline = Date.now() + 15_000;
    for (;;) {
      const seen = await Promise.race([locksOn(path), exited]);
      if (seen && seen.permissions !== 0) return holder;
      if (Date.now() > deadline) {
        child.kill();
        throw new Error("qemu-io took no locks within 15 s");
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.stdin?.end("quit\n");
    await exited;
  }
}

const holders: QemuIoHolder[] = [];
const locks: ImageLock[] = [];
const stores: FileStore[] = [];
afterEach(async () => {
  for (const holder of holders.splice(0)) await holder.stop();
  for (const lock of locks.splice(0)) lock.unlock();
  for (const store of stores.splice(0)) await store.close();
});

async function openStore(path: string, options: Parameters<typeof FileStore.open>[1]): Promise<FileStore> {
  const store = await FileStore.open(path, options);
  stores.push(store);
  return store;
}

describe.skipIf(nativeTurnedOff)("image locking", () => {
  it("takes the permission sets QEMU's qcow2 driver takes", () => {
    expect(imagePermissions({ write: true })).toEqual({
      permissions: consistentRead | write | resize,
      sharedPermissions: consistentRead | writeUnchanged,
    });
    expect(imagePermissions({ write: false })).toEqual({
      permissions: consistentRead,
      sharedPermissions: consistentRead | writeUnchanged,
    });
    expect(imagePermissions({ write: false, shareWrite: true })).toEqual({
      permissions: consistentRead,
      sharedPermissions: 0x0f,
    });
  });

  it("holds exactly the bytes qemu-io holds, for a writer and for a reader", async () => {
    requireNative();
    for (const [qemuArgs, mode] of [
      [[], "write"],
      [["-r"], "read"],
      [["-r", "-U"], "shared"],
    ] as const) {
      const path = newImage();
      const holder = await QemuIoHolder.start(path, [...qemuArgs]);
      const theirs = await locksOn(path);
      await holder.stop();
      expect(await locksOn(path)).toEqual({ permissions: 0, unsharedPermissions: 0 });
      const store = await openStore(path, { readOnly: mode !== "write", lock: mode });
      expect(store.imageLock?.active).toBe(true);
      expect(await locksOn(path), mode).toEqual(theirs);
    }
  });

  it("between two opens in this process: writers exclude writers and readers, readers share", async () => {
    requireNative();
    const path = newImage();
    const writer = await openStore(path, { lock: "write" });
    expect(await failure(openStore(path, { lock: "write" }))).toMatchObject({
      name: "Qcow2Error",
      code: "LOCKED",
      errno: "EAGAIN",
      message: 'Failed to get "write" lock',
      hint: `Is another process using the image [${path}]?`,
    });
    expect(await failure(openStore(path, { readOnly: true, lock: "read" }))).toMatchObject({
      code: "LOCKED",
      message: 'Failed to get shared "write" lock',
    });
    const forced = await openStore(path, { readOnly: true, lock: "shared" });
    expect(forced.imageLock?.active).toBe(true);
    await openStore(path, { readOnly: true, lock: "none" });
    await writer.close();
    const reader = await openStore(path, { readOnly: true, lock: "read" });
    await openStore(path, { readOnly: true, lock: "read" });
    expect(await failure(openStore(path, { lock: "write" }))).toMatchObject({ message: 'Failed to get "write" lock' });
    await reader.close();
    await forced.close();
    for (const store of stores.splice(0)) await store.close();
    await openStore(path, { lock: "write" });
  });

  it("a failed attempt leaves no lock bytes behind", async () => {
    requireNative();
    const path = newImage();
    await openStore(path, { readOnly: true, lock: "read" });
    const before = await locksOn(path);
    expect(before).toEqual({ permissions: consistentRead, unsharedPermissions: write | resize });
    await failure(openStore(path, { lock: "write" }));
    expect(await locksOn(path)).toEqual(before);
  });

  it("lockImage on a descriptor, unlock is idempotent, and arbitrary permission sets follow QEMU's rules", async () => {
    requireNative();
    const path = newImage();
    const first = await open(path, "r+");
    const second = await open(path, "r");
    try {
      const lock = lockImage(first.fd, { write: true, name: "disk.qcow2" });
      locks.push(lock);
      expect(lock).toMatchObject({ active: true, permissions: 0x0b, sharedPermissions: 0x05 });
      // Taking consistent read while refusing to share it conflicts with the writer's read permission.
      const error = (() => {
        try {
          lockPermissions(second.fd, 0, 0x0f & ~consistentRead, "other.qcow2");
        } catch (caught) {
          return caught as { message: string; hint: string };
        }
        return undefined;
      })();
      expect(error).toMatchObject({
        message: 'Failed to get shared "consistent read" lock',
        hint: "Is another process using the image [other.qcow2]?",
      });
      lock.unlock();
      lock.unlock();
      expect(probeImageLocks(second.fd)).toEqual({ permissions: 0, unsharedPermissions: 0 });
      expect(() => lockPermissions(second.fd, 0x10, 0)).toThrow(/invalid block permission bits/);
    } finally {
      await second.close();
      await first.close();
    }
  });

  it("lockImage takes a FileStore too, naming it in the hint", async () => {
    requireNative();
    const path = newImage();
    const holder = await openStore(path, { readOnly: true });
    const lock = lockImage(holder, { write: false });
    expect(lock.active).toBe(true);
    expect(await locksOn(path)).toEqual({ permissions: consistentRead, unsharedPermissions: write | resize });
    const other = await openStore(path, {});
    expect(() => lockImage(other, { write: true })).toThrow(
      expect.objectContaining({ message: 'Failed to get "write" lock', hint: `Is another process using the image [${path}]?` }),
    );
    // Unlock before the descriptor closes: a closed number may be reused by another open.
    lock.unlock();
    expect(await locksOn(path)).toEqual({ permissions: 0, unsharedPermissions: 0 });
    await holder.close();
    expect(() => lockImage(holder, { write: false })).toThrow(/no file descriptor to lock/);
  });

  it("checks the lock option against the open mode", async () => {
    const path = newImage();
    await expect(FileStore.open(path, { readOnly: true, lock: "write" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await expect(FileStore.open(path, { lock: "shared" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: "force-share=on can only be used with read-only images",
    });
    await expect(FileStore.open(path, { lock: "exclusive" as "write" })).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    expect(lockConflictHint("a\nb")).toBe("Is another process using the image [a\\x0ab]?");
  });

  describe("while qemu-io has the image open for writing", () => {
    it("our writer fails with the message qemu-io prints, our reader with qemu-img info's, force-share works", async () => {
      requireNative();
      const path = newImage();
      holders.push(await QemuIoHolder.start(path));

      const qemuWriter = runQemu("qemu-io", ["-c", "write 0 512", path]);
      expect(qemuWriter.status).toBe(1);
      const expectedWrite = qemuLockFailure(qemuWriter.stderr, `qemu-io: can't open device ${path}: `);
      const ourWrite = await failure(openStore(path, { lock: "write" }));
      expect({ message: ourWrite.message, hint: ourWrite.hint }).toEqual(expectedWrite);
      expect(expectedWrite.message).toBe('Failed to get "write" lock');

      const qemuInfo = runQemu("qemu-img", ["info", path]);
      expect(qemuInfo.status).toBe(1);
      const expectedRead = qemuLockFailure(qemuInfo.stderr, `qemu-img: Could not open '${path}': `);
      const ourRead = await failure(openStore(path, { readOnly: true, lock: "read" }));
      expect({ message: ourRead.message, hint: ourRead.hint }).toEqual(expectedRead);
      expect(expectedRead.message).toBe('Failed to get shared "write" lock');

      for (const lock of ["shared", "none"] as const) {
        const store = await openStore(path, { readOnly: true, lock });
        const magic = new Uint8Array(4);
        await store.read(0, magic);
        expect(Array.from(magic)).toEqual([0x51, 0x46, 0x49, 0xfb]);
      }
    });

    it("after qemu-io quits, our writer gets the lock", async () => {
      requireNative();
      const path = newImage();
      const holder = await QemuIoHolder.start(path);
      await failure(openStore(path, { lock: "write" }));
      await holder.stop();
      const store = await openStore(path, { lock: "write" });
      expect(store.imageLock?.active).toBe(true);
    });
  });

  describe("while we hold a write lock", () => {
    it("qemu-img info and qemu-io fail with QEMU's lock errors; qemu-img info -U and qemu-io -r -U work", async () => {
      requireNative();
      const path = newImage();
      await openStore(path, { lock: "write" });

      const info = runQemu("qemu-img", ["info", path]);
      expect(info.status).toBe(1);
      expect(info.stderr).toBe(
        `qemu-img: Could not open '${path}': Failed to get shared "write" lock\nIs another process using the image [${path}]?\n`,
      );
      const writer = runQemu("qemu-io", ["-c", "write 0 512", path]);
      expect(writer.status).toBe(1);
      expect(writer.stderr).toBe(
        `qemu-io: can't open device ${path}: Failed to get "write" lock\nIs another process using the image [${path}]?\n`,
      );
      const reader = runQemu("qemu-io", ["-r", "-c", "read 0 512", path]);
      expect(reader.status).toBe(1);
      expect(reader.stderr).toMatch(/Failed to get shared "write" lock/);

      const forcedInfo = runQemu("qemu-img", ["info", "-U", path]);
      expect(forcedInfo.status, forcedInfo.stderr).toBe(0);
      expect(forcedInfo.stdout).toMatch(/^file format: qcow2$/m);
      const forcedRead = runQemu("qemu-io", ["-r", "-U", "-c", "read 0 512", path]);
      expect(forcedRead.status, forcedRead.stderr).toBe(0);
    });

    it("closing the store releases the lock for QEMU", async () => {
      requireNative();
      const path = newImage();
      const store = await openStore(path, { lock: "write" });
      expect(runQemu("qemu-img", ["info", path]).status).toBe(1);
      await store.close();
      const info = runQemu("qemu-img", ["info", path]);
      expect(info.status, info.stderr).toBe(0);
      const writer = runQemu("qemu-io", ["-c", "write 0 512", path]);
      expect(writer.status, writer.stderr).toBe(0);
    });
  });

  it("while we hold a read lock, QEMU readers work and QEMU writers fail", async () => {
    requireNative();
    const path = newImage();
    await openStore(path, { readOnly: true, lock: "read" });
    const info = runQemu("qemu-img", ["info", path]);
    expect(info.status, info.stderr).toBe(0);
    const check = runQemu("qemu-img", ["check", path]);
    expect(check.status, check.stderr).toBe(0);
    const writer = runQemu("qemu-io", ["-c", "write 0 512", path]);
    expect(writer.status).toBe(1);
    expect(writer.stderr).toMatch(/^qemu-io: can't open device .*: Failed to get "write" lock\n/);
    const resize = runQemu("qemu-img", ["resize", path, "2M"]);
    expect(resize.status).toBe(1);
    expect(resize.stderr).toMatch(/Failed to get "write" lock/);
  });
});

describe("image locking without the native addon", () => {
  it("refuses a write lock naming the opt-out; readers get an inactive lock and QEMU writers are not stopped", async () => {
    setNativeEnabled(false);
    try {
      const path = newImage();
      await expect(openStore(path, { lock: "write" })).rejects.toMatchObject({
        code: "NOT_SUPPORTED",
        message: expect.stringMatching(/^Cannot lock '.*' for writing \(the native addon is not loaded: disabled by setNativeEnabled\(false\)\); to open it without a lock, turn locking off: locking: "off" in the API, file\.locking=off on the command line$/),
      });
      const first = await openStore(path, { lock: "read", readOnly: true });
      const second = await openStore(path, { lock: "none" });
      expect(first.imageLock).toMatchObject({ active: false, permissions: consistentRead });
      expect(second.imageLock).toBeUndefined();
      expect(second.usesNative).toBe(false);
      const handle = await open(path, "r");
      try {
        const lock = lockImage(handle.fd, { write: false });
        expect(lock).toMatchObject({ active: false, permissions: consistentRead });
        lock.unlock();
        expect(probeImageLocks(handle.fd)).toBeUndefined();
      } finally {
        await handle.close();
      }
      const writer = runQemu("qemu-io", ["-c", "write 0 512", path]);
      expect(writer.status, writer.stderr).toBe(0);
    } finally {
      setNativeEnabled(true);
    }
  });
});
