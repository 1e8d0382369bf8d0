import { execFileSync, spawnSync } from "node:child_process";
import { createHook } from "node:async_hooks";
import { closeSync, existsSync, openSync, readFileSync, statfsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, stat, statfs, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import { FileStore, fromSystemError, nativeFs, removeFile, zeroBufferBytes, type FileHandleLike } from "../src/node";
import { expectBytes, pattern } from "./contract";

const KiB = 1024;
const MiB = 1024 * KiB;

let directory = "";
beforeAll(async () => {
  directory = await mkdtemp(join(tmpdir(), "qcowkit-filestore-"));
});
afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

async function errorOf(promise: Promise<unknown>): Promise<{ code: string; errno: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    if (!isQcow2Error(error)) throw error;
    expect(error.message).not.toContain("\n");
    return error;
  }
  throw new Error("expected the call to fail");
}

/** The message qemu-img prints after its own "Could not open 'x': " prefix. */
function qemuOpenError(args: string[]): string {
  const result = spawnSync("qemu-img", args, { encoding: "utf8" });
  expect(result.error).toBeUndefined(); // qemu-img must be installed
  expect(result.status).toBe(1);
  return result.stderr.trim();
}

describe("FileStore.open errors in QEMU's wording", () => {
  it("a missing file: NOT_FOUND 'Could not open …: No such file or directory'", async () => {
    const path = join(directory, "missing.raw");
    const error = await errorOf(FileStore.open(path));
    expect(error.code).toBe("NOT_FOUND");
    expect(error.errno).toBe("ENOENT");
    expect(error.message).toBe(`Could not open '${path}': No such file or directory`);
    expect(qemuOpenError(["info", "-f", "raw", path])).toBe(`qemu-img: Could not open '${path}': ${error.message}`);
  });

  it("a directory, read-only and read-write", async () => {
    const readOnly = await errorOf(FileStore.open(directory, { readOnly: true }));
    expect(readOnly.message).toBe(`'file' driver requires '${directory}' to be a regular file`);
    expect(qemuOpenError(["info", "-f", "raw", directory])).toBe(
      `qemu-img: Could not open '${directory}': ${readOnly.message}`,
    );
    const readWrite = await errorOf(FileStore.open(directory));
    expect(readWrite.message).toBe(`Could not open '${directory}': Is a directory`);
    const qemuIo = spawnSync("qemu-io", ["-f", "raw", "-c", "read 0 1", directory], { encoding: "utf8" });
    expect(qemuIo.stderr.trim()).toBe(`qemu-io: can't open device ${directory}: ${readWrite.message}`);
  });

  it("a path through a regular file: Not a directory", async () => {
    const file = join(directory, "plain.raw");
    await writeFile(file, "x");
    const path = `${file}/inner`;
    const error = await errorOf(FileStore.open(path, { readOnly: true }));
    expect(error.message).toBe(`Could not open '${path}': Not a directory`);
    expect(qemuOpenError(["info", "-f", "raw", path])).toBe(`qemu-img: Could not open '${path}': ${error.message}`);
  });

  it("creating in a missing directory says 'Could not create', as qemu-img create does", async () => {
    const path = join(directory, "nodir", "k.raw");
    const error = await errorOf(FileStore.open(path, { create: true }));
    expect(error.code).toBe("NOT_FOUND");
    expect(error.message).toBe(`Could not create '${path}': No such file or directory`);
    expect(qemuOpenError(["create", "-f", "raw", path, "1M"])).toContain(error.message);
  });

  it("a FIFO is refused at once instead of waiting for a writer", async () => {
    const path = join(directory, "fifo");
    execFileSync("mkfifo", [path]);
    const error = await errorOf(FileStore.open(path, { readOnly: true }));
    expect(error.message).toBe(`'file' driver requires '${path}' to be a regular file`);
  });

  it("read-only together with create or truncate is refused", async () => {
    const error = await errorOf(FileStore.open(join(directory, "x.raw"), { readOnly: true, create: true }));
    expect(error.code).toBe("INVALID_ARGUMENT");
  });

  it("maps permission and read-only file system errors to strerror wording", () => {
    const cases: [string, string, string, string][] = [
      ["EACCES", "IO_ERROR", "EPERM", "Permission denied"],
      ["EROFS", "READ_ONLY", "EROFS", "Read-only file system"],
      ["ENOSPC", "NO_SPACE", "ENOSPC", "No space left on device"],
      ["EFBIG", "NO_SPACE", "EFBIG", "File too large"],
      ["EIO", "IO_ERROR", "EIO", "Input/output error"],
      ["ENOTSUP", "NOT_SUPPORTED", "ENOTSUP", "Operation not supported"],
    ];
    for (const [systemCode, code, errno, text] of cases) {
      const error = fromSystemError(Object.assign(new Error("x"), { code: systemCode }), "Could not open 'a'");
      expect(isQcow2Error(error) && [error.code, error.errno, error.message]).toEqual([
        code,
        errno,
        `Could not open 'a': ${text}`,
      ]);
    }
    const unknown = fromSystemError(Object.assign(new Error("weird\nthing"), { code: "EWEIRD" }), "p");
    expect(unknown.message).toBe("p: system error EWEIRD");
    expect(fromSystemError(new Error("two\nlines"), "p").message).toBe("p: two\\x0alines");
  });
});

describe("FileStore.open flags", () => {
  it("create makes a missing file; truncate empties an existing one; plain open keeps contents", async () => {
    const path = join(directory, "flags.raw");
    const created = await FileStore.open(path, { create: true });
    await created.write(0, pattern(100, 1));
    await created.close();
    const reopened = await FileStore.open(path);
    expect(await reopened.size()).toBe(100);
    await reopened.close();
    const truncated = await FileStore.open(path, { truncate: true });
    expect(await truncated.size()).toBe(0);
    await truncated.close();
  });
});

describe("FileStore on a real file", () => {
  it("QEMU reads what FileStore wrote", async () => {
    const path = join(directory, "oracle.raw");
    const store = await FileStore.open(path, { create: true });
    await store.resize(4 * MiB);
    await store.write(1 * MiB, new Uint8Array(64 * KiB).fill(0x5a));
    await store.flush();
    await store.close();
    const out = execFileSync(
      "qemu-io",
      ["-f", "raw", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0 0 1M", "-c", "read -P 0 1088k 2944k", path],
      { encoding: "utf8" },
    );
    expect(out).not.toContain("Pattern verification failed");
    expect(out.match(/^read /gm)?.length).toBe(3);
  });

  it("FileStore reads what QEMU wrote", async () => {
    const path = join(directory, "from-qemu.raw");
    execFileSync("qemu-img", ["create", "-f", "raw", path, "2M"]);
    execFileSync("qemu-io", ["-f", "raw", "-c", "write -P 0xa7 100k 50k", path]);
    const store = await FileStore.open(path, { readOnly: true });
    const bytes = new Uint8Array(2 * MiB);
    await store.read(0, bytes);
    await store.close();
    const expected = new Uint8Array(2 * MiB);
    expected.fill(0xa7, 100 * KiB, 150 * KiB);
    expectBytes(bytes, expected);
  });

  it("allocatedSize is st_blocks * 512, and writeZeroes with unmap at the end makes a hole", async () => {
    const path = join(directory, "holes.raw");
    const store = await FileStore.open(path, { create: true });
    await store.write(0, pattern(8 * MiB, 2));
    await store.flush();
    expect(await store.allocatedSize()).toBe((await stat(path)).blocks * 512);
    expect(await store.allocatedSize()).toBeGreaterThanOrEqual(8 * MiB);
    await store.writeZeroes(1 * MiB, 7 * MiB, true);
    expect(await store.size()).toBe(8 * MiB);
    expect(await store.allocatedSize()).toBeLessThan(2 * MiB);
    await store.discard(0, 8 * MiB);
    expect(await store.allocatedSize()).toBeLessThan(64 * KiB);
    const bytes = new Uint8Array(await readFile(path));
    expect(bytes.byteLength).toBe(8 * MiB);
    expect(bytes.every((b) => b === 0)).toBe(true);
    await store.close();
  });

  it("removeFile deletes, and ignores a missing file", async () => {
    const path = join(directory, "gone.raw");
    await writeFile(path, "x");
    await removeFile(path);
    await expect(stat(path)).rejects.toThrow();
    await removeFile(path);
    await mkdir(join(directory, "adir"));
    const error = await errorOf(removeFile(join(directory, "adir")));
    expect(error.message).toMatch(/^Could not delete '.*adir': /);
  });
});

/** A FileHandleLike over an array that answers at most `maxPerCall` bytes per call and logs calls. */
class ShortHandle implements FileHandleLike {
  bytes: Uint8Array;
  calls: { op: string; position: number; length: number; buffer?: Uint8Array }[] = [];
  failWrite: ((position: number) => unknown) | undefined;
  constructor(size: number, readonly maxPerCall: number) {
    this.bytes = new Uint8Array(size);
  }
  async read(buffer: Uint8Array, offset: number, length: number, position: number) {
    this.calls.push({ op: "read", position, length });
    const count = Math.max(0, Math.min(length, this.maxPerCall, this.bytes.byteLength - position));
    buffer.set(this.bytes.subarray(position, position + count), offset);
    return { bytesRead: count };
  }
  async write(buffer: Uint8Array, offset: number, length: number, position: number) {
    this.calls.push({ op: "write", position, length, buffer });
    const failure = this.failWrite?.(position);
    if (failure) throw failure;
    const count = Math.min(length, this.maxPerCall);
    if (position + count > this.bytes.byteLength) this.grow(position + count);
    this.bytes.set(buffer.subarray(offset, offset + count), position);
    return { bytesWritten: count };
  }
  async stat() {
    return { size: this.bytes.byteLength, blocks: 0, isFile: () => true };
  }
  async truncate(length: number) {
    this.calls.push({ op: "truncate", position: length, length: 0 });
    this.grow(length);
  }
  async datasync() {
    this.calls.push({ op: "datasync", position: 0, length: 0 });
  }
  async close() {}
  private grow(length: number) {
    const next = new Uint8Array(length);
    next.set(this.bytes.subarray(0, Math.min(length, this.bytes.byteLength)));
    this.bytes = next;
  }
}

const TMPFS_MAGIC = 0x01021994;

/** Calls `start` and counts the fs requests (thread-pool work, callback or promise) it made before returning. */
function poolRequestsOf<T>(start: () => T): { result: T; requests: number } {
  let requests = 0;
  const hook = createHook({ init: (_id, type) => void ((type === "FSREQCALLBACK" || type === "FSREQPROMISE") && requests++) });
  hook.enable();
  try {
    return { result: start(), requests };
  } finally {
    hook.disable();
  }
}

describe("FileStore inMemorySyncIoBytes", () => {
  /**
   * Writes and reads `length` bytes and reports, for each, whether it went to the thread pool (an fs request
   * with a callback was made) or was done synchronously.
   */
  async function threadPoolUse(path: string, length: number, options: { inMemorySyncIoBytes?: number }) {
    await writeFile(path, new Uint8Array(length));
    const store = await FileStore.open(path, options);
    try {
      const data = pattern(length, 9);
      const writing = poolRequestsOf(() => store.write(0, data));
      const wroteOnPool = writing.requests > 0;
      await writing.result;
      expectBytes(readFileSync(path), data);
      const into = new Uint8Array(length);
      const reading = poolRequestsOf(() => store.read(0, into));
      const readOnPool = reading.requests > 0;
      if (!readOnPool) expectBytes(into, data); // done before the call returned
      await reading.result;
      expectBytes(into, data);
      return { wroteOnPool, readOnPool };
    } finally {
      await store.close();
    }
  }

  it.skipIf(process.platform !== "linux" || !existsSync("/dev/shm"))(
    "on tmpfs, reads and writes up to the limit are done synchronously, larger ones on the thread pool",
    async () => {
      const shm = await mkdtemp("/dev/shm/qcowkit-filestore-");
      try {
        expect((await statfs(shm)).type).toBe(TMPFS_MAGIC);
        const path = join(shm, "f.raw");
        expect(await threadPoolUse(path, 4 * KiB, { inMemorySyncIoBytes: 64 * KiB })).toEqual({ wroteOnPool: false, readOnPool: false });
        expect(await threadPoolUse(path, 128 * KiB, { inMemorySyncIoBytes: 64 * KiB })).toEqual({ wroteOnPool: true, readOnPool: true });
        expect(await threadPoolUse(path, 4 * KiB, {})).toEqual({ wroteOnPool: true, readOnPool: true });
        // A read-only store (a read-only export) is in memory too.
        const readOnly = await FileStore.open(path, { readOnly: true, inMemorySyncIoBytes: 64 * KiB });
        try {
          const into = new Uint8Array(4 * KiB);
          const reading = poolRequestsOf(() => readOnly.read(0, into));
          expect(reading.requests).toBe(0);
          await reading.result;
          expectBytes(into, pattern(4 * KiB, 9));
        } finally {
          await readOnly.close();
        }
      } finally {
        await rm(shm, { recursive: true, force: true });
      }
    },
  );

  it("on a file system on a device, reads and writes stay on the thread pool", async () => {
    const here = join(import.meta.dirname, `.filestore-${process.pid}.raw`);
    if ((await statfs(import.meta.dirname)).type === TMPFS_MAGIC) return; // the checkout itself is in memory
    try {
      expect(await threadPoolUse(here, 4 * KiB, { inMemorySyncIoBytes: 64 * KiB })).toEqual({ wroteOnPool: true, readOnPool: true });
    } finally {
      await rm(here, { force: true });
    }
  });
});

describe("FileStore flush", () => {
  /** Whether a flush of a fresh writable file at `path` went to the thread pool (callback or promise request). */
  async function flushOnPool(path: string): Promise<boolean> {
    await writeFile(path, new Uint8Array(4 * KiB));
    const store = await FileStore.open(path);
    try {
      const flushing = poolRequestsOf(() => store.flush());
      await flushing.result;
      return flushing.requests > 0;
    } finally {
      await store.close();
    }
  }

  it.skipIf(process.platform !== "linux" || !existsSync("/dev/shm"))("on tmpfs, fdatasync is done on the calling thread", async () => {
    const shm = await mkdtemp("/dev/shm/qcowkit-filestore-");
    try {
      expect(await flushOnPool(join(shm, "f.raw"))).toBe(false);
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });

  // Skipped only when the checkout itself is in memory (never in CI, whose clone is on disk).
  it.skipIf(statfsSync(import.meta.dirname).type === TMPFS_MAGIC)("on a file system on a device, fdatasync goes to the thread pool", async () => {
    const here = join(import.meta.dirname, `.filestore-flush-${process.pid}.raw`);
    try {
      expect(await flushOnPool(here)).toBe(true);
    } finally {
      await rm(here, { force: true });
    }
  });
});

describe.skipIf(process.env.QCOWKIT_NATIVE === "0" || process.platform !== "linux")("FileStore cachedReadBytes", () => {
  /** Reads `length` bytes at `position`; reports whether the read went to the thread pool. */
  async function readOnPool(store: FileStore, position: number, length: number, expected: Uint8Array): Promise<boolean> {
    const into = new Uint8Array(length);
    const reading = poolRequestsOf(() => store.read(position, into));
    if (reading.requests === 0) expectBytes(into, expected); // done before the call returned
    await reading.result;
    expectBytes(into, expected);
    return reading.requests > 0;
  }

  it("reads in the page cache are made on the calling thread, others and larger ones on the thread pool", async () => {
    const path = join(directory, "cached.raw");
    const data = pattern(256 * KiB, 12);
    await writeFile(path, data);
    const probe = openSync(path, "r");
    const canTell = nativeFs()!.readCached(probe, new Uint8Array(1), 0, 1, 0) !== -2;
    closeSync(probe);
    if (!canTell) return; // the temporary folder's file system cannot tell (tmpfs): see the next test
    const store = await FileStore.open(path, { cachedReadBytes: 64 * KiB });
    try {
      expect(store.usesNative).toBe(true);
      expect(await readOnPool(store, 4096, 4096, data.subarray(4096, 8192))).toBe(false);
      expect(await readOnPool(store, 0, 64 * KiB, data.subarray(0, 64 * KiB))).toBe(false);
      expect(await readOnPool(store, 0, 128 * KiB, data.subarray(0, 128 * KiB))).toBe(true);
      execFileSync("sync", [path]);
      execFileSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]); // evict the file's pages
      expect(await readOnPool(store, 192 * KiB, 4096, data.subarray(192 * KiB, 196 * KiB))).toBe(true);
      expect(await readOnPool(store, 192 * KiB, 4096, data.subarray(192 * KiB, 196 * KiB))).toBe(false);
    } finally {
      await store.close();
    }
    const plain = await FileStore.open(path);
    try {
      expect(await readOnPool(plain, 4096, 4096, data.subarray(4096, 8192))).toBe(true);
    } finally {
      await plain.close();
    }
  });

  it.skipIf(!existsSync("/dev/shm"))("on tmpfs, which cannot tell, reads go to the thread pool", async () => {
    const shm = await mkdtemp("/dev/shm/qcowkit-filestore-");
    try {
      const path = join(shm, "f.raw");
      const data = pattern(16 * KiB, 13);
      await writeFile(path, data);
      const store = await FileStore.open(path, { cachedReadBytes: 64 * KiB });
      try {
        // Either the kernel answers from tmpfs's pages (newer kernels may) or every read goes to the pool.
        const first = await readOnPool(store, 0, 4096, data.subarray(0, 4096));
        expect(await readOnPool(store, 4096, 4096, data.subarray(4096, 8192))).toBe(first);
      } finally {
        await store.close();
      }
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });
});

describe("FileStore short reads and writes", () => {
  it("continues short reads and writes until done, at the right positions", async () => {
    const handle = new ShortHandle(0, 7);
    const store = FileStore.fromHandle(handle, { name: "mock" });
    const data = pattern(1000, 3);
    await store.write(123, data);
    expectBytes(handle.bytes.subarray(123), data);
    const writes = handle.calls.filter((c) => c.op === "write");
    expect(writes.length).toBe(Math.ceil(1000 / 7));
    expect(writes.every((c, i) => c.position === 123 + i * 7)).toBe(true);
    const into = new Uint8Array(1100).fill(0xee);
    await store.read(100, into);
    const expected = new Uint8Array(1100);
    expected.set(data, 23);
    expectBytes(into, expected);
    const reads = handle.calls.filter((c) => c.op === "read");
    expect(reads.every((c) => Number.isSafeInteger(c.position) && c.position >= 0)).toBe(true);
  });

  it("zero-fills once a read hits end of file", async () => {
    const handle = new ShortHandle(10, 3);
    handle.bytes.set(pattern(10, 4));
    const store = FileStore.fromHandle(handle, { name: "mock" });
    const into = new Uint8Array(50).fill(0xee);
    await store.read(2, into);
    expectBytes(into.subarray(0, 8), pattern(10, 4).subarray(2));
    expectBytes(into.subarray(8), new Uint8Array(42));
  });

  it("a write that makes no progress fails instead of looping forever", async () => {
    const store = FileStore.fromHandle(new ShortHandle(0, 0), { name: "mock" });
    const error = await errorOf(store.write(0, pattern(10, 5)));
    expect(error.code).toBe("IO_ERROR");
  });

  it("a system error during a write becomes a one-line Qcow2Error", async () => {
    const handle = new ShortHandle(0, 1 << 20);
    handle.failWrite = () => Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    const store = FileStore.fromHandle(handle, { name: "mock" });
    const error = await errorOf(store.write(4096, pattern(10, 6)));
    expect([error.code, error.errno, error.message]).toEqual([
      "NO_SPACE",
      "ENOSPC",
      "Could not write 'mock' at byte 4096: No space left on device",
    ]);
  });

  it("zeroing a range in the middle writes bounded pieces of one shared buffer", async () => {
    const handle = new ShortHandle(64 * MiB, 1 << 30);
    handle.bytes.fill(0x11);
    const store = FileStore.fromHandle(handle, { name: "mock" });
    await store.discard(1 * MiB + 5, 40 * MiB);
    const writes = handle.calls.filter((c) => c.op === "write");
    expect(writes.length).toBe(Math.ceil((40 * MiB) / zeroBufferBytes));
    expect(Math.max(...writes.map((c) => c.length))).toBeLessThanOrEqual(1 * MiB);
    expect(new Set(writes.map((c) => c.buffer?.buffer)).size).toBe(1);
    expect(handle.calls.some((c) => c.op === "truncate")).toBe(false);
    expect(handle.bytes.subarray(1 * MiB + 5, 41 * MiB + 5).every((b) => b === 0)).toBe(true);
    expect(handle.bytes[1 * MiB + 4]).toBe(0x11);
    expect(handle.bytes[41 * MiB + 5]).toBe(0x11);
  });

  it("discard reaching the end truncates and extends instead of writing", async () => {
    const handle = new ShortHandle(8 * MiB, 1 << 30);
    handle.bytes.fill(0x22);
    const store = FileStore.fromHandle(handle, { name: "mock" });
    await store.discard(3 * MiB, 100 * MiB);
    expect(handle.calls.filter((c) => c.op === "write").length).toBe(0);
    expect(handle.calls.filter((c) => c.op === "truncate").map((c) => c.position)).toEqual([3 * MiB, 8 * MiB]);
    expect(handle.bytes.byteLength).toBe(8 * MiB);
    expect(handle.bytes.subarray(3 * MiB).every((b) => b === 0)).toBe(true);
  });

  it("writeZeroes without unmap writes zeros even at the end (keeps the range allocated)", async () => {
    const handle = new ShortHandle(4 * MiB, 1 << 30);
    const store = FileStore.fromHandle(handle, { name: "mock" });
    await store.writeZeroes(3 * MiB, 2 * MiB, false);
    expect(handle.calls.filter((c) => c.op === "truncate").length).toBe(0);
    expect(handle.calls.filter((c) => c.op === "write").length).toBe(2);
    expect(handle.bytes.byteLength).toBe(5 * MiB);
  });

  it("a failed full preallocation truncates back to the old size", async () => {
    const handle = new ShortHandle(1 * MiB, 1 << 30);
    handle.failWrite = (position) =>
      position >= 3 * MiB ? Object.assign(new Error("no space"), { code: "ENOSPC" }) : undefined;
    const store = FileStore.fromHandle(handle, { name: "mock" });
    const error = await errorOf(store.resize(8 * MiB, "full"));
    expect(error.code).toBe("NO_SPACE");
    expect(handle.bytes.byteLength).toBe(1 * MiB);
  });

  it("flush is fdatasync", async () => {
    const handle = new ShortHandle(0, 1);
    await FileStore.fromHandle(handle, { name: "mock" }).flush();
    expect(handle.calls.map((c) => c.op)).toEqual(["datasync"]);
  });

  it("never hands an unsafe position to the handle", async () => {
    const handle = new ShortHandle(0, 1 << 20);
    const store = FileStore.fromHandle(handle, { name: "mock" });
    for (const position of [-1, 0.5, 2 ** 53, 2 ** 60, 5n as unknown as number]) {
      await errorOf(store.write(position, pattern(4, 7)));
      await errorOf(store.read(position, new Uint8Array(4)));
    }
    expect(handle.calls.length).toBe(0);
  });
});
