import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, open, rm, stat, type FileHandle } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it, vi } from "vitest";
import { allocatedBytes, nativeTurnedOff, requireNative, scratchDirectory } from "./native-helpers";

/** The addon's own functions, called directly on sparse files in /dev/shm. */

const KiB = 1024;
const MiB = 1024 * KiB;
/** A descriptor number no process has open: system calls on it fail with EBADF. */
const unusedFd = 2 ** 31 - 1;
const directory = scratchDirectory("native");
let counter = 0;

async function sparseFile(size: number, dataRanges: [number, number][] = []): Promise<{ path: string; handle: FileHandle }> {
  const path = join(directory(), `f${++counter}.raw`);
  const handle = await open(path, "w+");
  await handle.truncate(size);
  for (const [offset, length] of dataRanges) await handle.write(new Uint8Array(length).fill(0x5a), 0, length, offset);
  return { path, handle };
}

describe.skipIf(nativeTurnedOff)("native addon", () => {
  describe("seekData / seekHole", () => {
    it("walks data and holes of a sparse file; -1 (ENXIO) after the last data and at end of file", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(4 * MiB, [
        [1 * MiB, 8 * KiB],
        [3 * MiB, 4 * KiB],
      ]);
      try {
        const fd = handle.fd;
        expect(native.seekData(fd, 0)).toBe(1 * MiB);
        expect(native.seekHole(fd, 1 * MiB)).toBe(1 * MiB + 8 * KiB);
        expect(native.seekData(fd, 1 * MiB + 8 * KiB)).toBe(3 * MiB);
        expect(native.seekHole(fd, 3 * MiB)).toBe(3 * MiB + 4 * KiB);
        expect(native.seekData(fd, 3 * MiB + 4 * KiB)).toBe(-1);
        expect(native.seekHole(fd, 0)).toBe(0);
        expect(native.seekHole(fd, 4 * MiB - 1)).toBe(4 * MiB - 1);
        expect(native.seekHole(fd, 4 * MiB)).toBe(-1);
        expect(native.seekData(fd, 4 * MiB)).toBe(-1);
        expect(native.seekData(fd, 2 ** 53 - 1)).toBe(-1);
      } finally {
        await handle.close();
      }
    });

    it("refuses bad descriptors and offsets before making a system call", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(4096);
      try {
        for (const offset of [-1, 1.5, 2 ** 53, Number.NaN, Number.POSITIVE_INFINITY]) {
          expect(() => native.seekData(handle.fd, offset), String(offset)).toThrow(RangeError);
          expect(() => native.seekHole(handle.fd, offset), String(offset)).toThrow(/safe non-negative integer/);
        }
        for (const offset of ["0", 0n, null, undefined]) {
          expect(() => native.seekData(handle.fd, offset as unknown as number), String(offset)).toThrow(TypeError);
        }
        expect(() => native.seekData(-1, 0)).toThrow(RangeError);
        expect(() => native.seekData(2 ** 31, 0)).toThrow(RangeError);
        expect(() => (native.seekData as (fd: number) => number)(handle.fd)).toThrow(/missing arguments/);
      } finally {
        await handle.close();
      }
    });

    it("reports a failed lseek as an Error with the errno name and strerror text", () => {
      const native = requireNative();
      let caught: unknown;
      try {
        native.seekData(unusedFd, 0);
      } catch (error) {
        caught = error;
      }
      expect(caught).toMatchObject({ code: "EBADF", errno: 9, syscall: "lseek", message: "Bad file descriptor" });
    });
  });

  describe("fallocate", () => {
    it("allocate grows the file and allocates its blocks", async () => {
      const native = requireNative();
      const { path, handle } = await sparseFile(0);
      try {
        await native.fallocate(handle.fd, "allocate", 0, 1 * MiB);
        expect((await stat(path)).size).toBe(1 * MiB);
        expect(await allocatedBytes(path)).toBeGreaterThanOrEqual(1 * MiB);
      } finally {
        await handle.close();
      }
    });

    it("keep-size allocates blocks without changing the size", async () => {
      const native = requireNative();
      const { path, handle } = await sparseFile(64 * KiB);
      try {
        expect(await allocatedBytes(path)).toBe(0);
        await native.fallocate(handle.fd, "keep-size", 0, 1 * MiB);
        expect((await stat(path)).size).toBe(64 * KiB);
        expect(await allocatedBytes(path)).toBeGreaterThanOrEqual(1 * MiB);
      } finally {
        await handle.close();
      }
    });

    it("punch-hole frees the range, which then reads zeros; size and neighbours stay", async () => {
      const native = requireNative();
      const { path, handle } = await sparseFile(1 * MiB, [[0, 1 * MiB]]);
      try {
        const before = await allocatedBytes(path);
        await native.fallocate(handle.fd, "punch-hole", 256 * KiB, 256 * KiB);
        expect(before - (await allocatedBytes(path))).toBe(256 * KiB);
        expect((await stat(path)).size).toBe(1 * MiB);
        const bytes = readFileSync(path);
        expect(bytes.subarray(256 * KiB, 512 * KiB).every((b) => b === 0)).toBe(true);
        expect(bytes[256 * KiB - 1]).toBe(0x5a);
        expect(bytes[512 * KiB]).toBe(0x5a);
        expect(native.seekData(handle.fd, 256 * KiB)).toBe(512 * KiB);
      } finally {
        await handle.close();
      }
    });

    it("zero-range is refused by tmpfs with EOPNOTSUPP (the case FileStore falls back on)", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(1 * MiB, [[0, 1 * MiB]]);
      try {
        await expect(native.fallocate(handle.fd, "zero-range", 0, 4096)).rejects.toMatchObject({
          code: "EOPNOTSUPP",
          syscall: "fallocate",
          message: "Operation not supported",
        });
      } finally {
        await handle.close();
      }
    });

    it("zero-range on the temporary directory's file system zeroes in place, or is refused with EOPNOTSUPP", async () => {
      const native = requireNative();
      const dir = await mkdtemp(join(tmpdir(), "qcowkit-native-zr-"));
      const path = join(dir, "z.raw");
      writeFileSync(path, new Uint8Array(1 * MiB).fill(0x5a));
      const handle = await open(path, "r+");
      try {
        const before = await allocatedBytes(path);
        const outcome = await native.fallocate(handle.fd, "zero-range", 128 * KiB, 128 * KiB).then(
          () => "done",
          (error: unknown) => error,
        );
        if (outcome === "done") {
          const bytes = readFileSync(path);
          expect(bytes.subarray(128 * KiB, 256 * KiB).every((b) => b === 0)).toBe(true);
          expect(bytes[256 * KiB]).toBe(0x5a);
          expect(await allocatedBytes(path)).toBe(before);
        } else {
          expect(outcome).toMatchObject({ code: "EOPNOTSUPP" });
        }
      } finally {
        await handle.close();
        await rm(dir, { recursive: true, force: true });
      }
    });

    it("rejects with ENOSPC when tmpfs cannot hold the allocation, leaving the file as it was", async () => {
      const native = requireNative();
      const { path, handle } = await sparseFile(4096);
      try {
        await expect(native.fallocate(handle.fd, "allocate", 0, 2 ** 50)).rejects.toMatchObject({
          code: "ENOSPC",
          message: "No space left on device",
        });
        expect((await stat(path)).size).toBe(4096);
      } finally {
        await handle.close();
      }
    });

    it("rejects a bad descriptor with EBADF", async () => {
      const native = requireNative();
      await expect(native.fallocate(unusedFd, "allocate", 0, 4096)).rejects.toMatchObject({
        code: "EBADF",
        message: "Bad file descriptor",
      });
    });

    it("checks its arguments synchronously: length >= 1, known mode, end below 2^53", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(4096);
      try {
        expect(() => native.fallocate(handle.fd, "allocate", 0, 0)).toThrow(/length must be at least 1/);
        expect(() => native.fallocate(handle.fd, "collapse" as "allocate", 0, 1)).toThrow(/unknown fallocate mode/);
        expect(() => native.fallocate(handle.fd, "allocate", 2 ** 53 - 1, 1)).toThrow(/below 2\^53/);
        expect(() => native.fallocate(handle.fd, "allocate", -4096, 4096)).toThrow(RangeError);
        expect(() => native.fallocate(handle.fd, 7 as unknown as "allocate", 0, 1)).toThrow(TypeError);
      } finally {
        await handle.close();
      }
    });
  });

  describe("OFD locks", () => {
    it("a lock through one open file conflicts with another open of the same file, never with itself", async () => {
      const native = requireNative();
      const { path, handle: first } = await sparseFile(4096);
      const second = await open(path, "r");
      try {
        expect(native.setLock(first.fd, "read", 100, 1)).toBe(true);
        expect(native.getLock(first.fd, "write", 100, 1)).toBeNull();
        expect(native.getLock(second.fd, "write", 100, 1)).toEqual({ type: "read", start: 100, length: 1, pid: -1 });
        expect(native.getLock(second.fd, "read", 100, 1)).toBeNull();
        expect(native.getLock(second.fd, "write", 101, 1)).toBeNull();
        expect(native.setLock(second.fd, "read", 100, 1)).toBe(true);
        expect(native.setLock(first.fd, "write", 200, 1)).toBe(true);
        expect(native.setLock(second.fd, "read", 200, 1)).toBe(false);
        expect(native.setLock(first.fd, "unlock", 100, 1)).toBe(true);
        expect(native.setLock(first.fd, "unlock", 200, 1)).toBe(true);
        expect(native.setLock(second.fd, "unlock", 100, 1)).toBe(true);
        expect(native.getLock(second.fd, "write", 0, 1000)).toBeNull();
      } finally {
        await second.close();
        await first.close();
      }
    });

    it("closing the file releases its locks", async () => {
      const native = requireNative();
      const { path, handle: first } = await sparseFile(4096);
      const second = await open(path, "r");
      try {
        expect(native.setLock(first.fd, "read", 101, 1)).toBe(true);
        expect(native.getLock(second.fd, "write", 101, 1)).not.toBeNull();
        await first.close();
        expect(native.getLock(second.fd, "write", 101, 1)).toBeNull();
      } finally {
        await second.close();
      }
    });

    it("checks lock types and ranges", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(4096);
      try {
        expect(() => native.getLock(handle.fd, "unlock" as "read", 100, 1)).toThrow(RangeError);
        expect(() => native.setLock(handle.fd, "exclusive" as "read", 100, 1)).toThrow(/lock type/);
        expect(() => native.setLock(handle.fd, "read", 100, 0)).toThrow(/at least 1/);
        expect(() => native.setLock(handle.fd, "read", -100, 1)).toThrow(RangeError);
        expect(() => native.setLock(unusedFd, "read", 100, 1)).toThrow(/Bad file descriptor/);
      } finally {
        await handle.close();
      }
    });
  });

  it("fsBlockSize gives statfs's f_bsize and f_frsize, as stat -f reports them", async () => {
    const native = requireNative();
    const { path, handle } = await sparseFile(4096);
    try {
      const [blockSize, fragmentSize] = execFileSync("stat", ["-f", "-c", "%s %S", path], { encoding: "utf8" })
        .trim()
        .split(" ")
        .map(Number);
      expect(native.fsBlockSize(handle.fd)).toEqual({ blockSize, fragmentSize });
      expect(() => native.fsBlockSize(unusedFd)).toThrow(/Bad file descriptor/);
    } finally {
      await handle.close();
    }
  });

  describe("readCached", () => {
    const onDisk = scratchDirectory("native-cached", tmpdir());

    /** Drops a file's clean pages from the page cache (posix_fadvise DONTNEED, through dd). */
    function evict(path: string): void {
      execFileSync("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
    }

    it("reads cached bytes on the calling thread, -1 for bytes not in the page cache, 0 at end of file", async () => {
      const native = requireNative();
      const path = join(onDisk(), "cached.raw");
      const data = new Uint8Array(64 * KiB).map((_, i) => (i * 7 + 3) & 0xff);
      writeFileSync(path, data);
      const handle = await open(path, "r+");
      try {
        await handle.sync();
        const into = new Uint8Array(8 * KiB).fill(0xee);
        const first = native.readCached(handle.fd, into, 100, 4 * KiB, 5000);
        if (first === -2) return; // this file system cannot tell (tmpfs as the temporary folder)
        expect(first).toBe(4 * KiB);
        expect(into.subarray(100, 100 + 4 * KiB)).toEqual(data.subarray(5000, 5000 + 4 * KiB));
        expect(into[99]).toBe(0xee);
        expect(into[100 + 4 * KiB]).toBe(0xee);
        expect(native.readCached(handle.fd, into, 0, 4 * KiB, 64 * KiB)).toBe(0);
        expect(native.readCached(handle.fd, into, 0, 4 * KiB, 64 * KiB - 10)).toBe(10);
        evict(path);
        expect(native.readCached(handle.fd, into, 0, 4 * KiB, 32 * KiB)).toBe(-1);
        await handle.read(new Uint8Array(4 * KiB), 0, 4 * KiB, 32 * KiB); // brings the page back
        expect(native.readCached(handle.fd, into, 0, 4 * KiB, 32 * KiB)).toBe(4 * KiB);
        expect(into.subarray(0, 4 * KiB)).toEqual(data.subarray(32 * KiB, 36 * KiB));
      } finally {
        await handle.close();
      }
    });

    it("says -2 where the file system cannot tell, or else reads correctly (tmpfs)", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(16 * KiB, [[4096, 4096]]);
      try {
        const into = new Uint8Array(4096);
        const n = native.readCached(handle.fd, into, 0, 4096, 4096);
        expect([-2, 4096]).toContain(n);
        if (n === 4096) expect(into.every((b) => b === 0x5a)).toBe(true);
      } finally {
        await handle.close();
      }
    });

    it("checks its arguments", async () => {
      const native = requireNative();
      const { handle } = await sparseFile(4096);
      try {
        const into = new Uint8Array(4096);
        expect(() => native.readCached(handle.fd, into, 1, 4096, 0)).toThrow(/inside the buffer/);
        expect(() => native.readCached(handle.fd, into, 0, 0, 0)).toThrow(/at least 1/);
        expect(() => native.readCached(handle.fd, into, 0, 10, -1)).toThrow(RangeError);
        expect(() => native.readCached(handle.fd, new DataView(into.buffer) as unknown as Uint8Array, 0, 10, 0)).toThrow(TypeError);
        expect(() => native.readCached(handle.fd, new Uint16Array(8) as unknown as Uint8Array, 0, 10, 0)).toThrow(TypeError);
        expect(() => native.readCached(unusedFd, into, 0, 10, 0)).toThrow(/Bad file descriptor/);
      } finally {
        await handle.close();
      }
    });
  });

  it("declares its ABI version and the features of this platform", () => {
    const native = requireNative();
    expect(native.abiVersion).toBe(4);
    expect(native.features).toEqual({ seekHole: true, fallocate: true, ofdLocks: true, statfs: true, cachedRead: true });
    expect(Object.isFrozen(native.features)).toBe(true);
  });
});

describe("native/build.mjs", () => {
  const nativeDir = fileURLToPath(new URL("../native", import.meta.url));

  async function copyOfBuildDirectory(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), "qcowkit-native-build-"));
    copyFileSync(join(nativeDir, "build.mjs"), join(dir, "build.mjs"));
    copyFileSync(join(nativeDir, "qcowkit_fs.c"), join(dir, "qcowkit_fs.c"));
    return dir;
  }

  function build(dir: string, env: Record<string, string | undefined>): { status: number | null; stdout: string } {
    const result = spawnSync(process.execPath, [join(dir, "build.mjs")], {
      encoding: "utf8",
      env: { ...process.env, ...env },
      timeout: 120_000,
    });
    return { status: result.status, stdout: result.stdout + result.stderr };
  }

  it("builds a loadable addon with the system compiler, then reports it up to date", async () => {
    const dir = await copyOfBuildDirectory();
    try {
      const first = build(dir, { QCOWKIT_NATIVE: undefined, CC: undefined });
      expect(first.status).toBe(0);
      expect(first.stdout).toMatch(/built native\/build\/qcowkit_fs\.node/);
      const addon = createRequire(import.meta.url)(join(dir, "build", "qcowkit_fs.node")) as { abiVersion: number };
      expect(addon.abiVersion).toBe(4);
      expect(build(dir, { QCOWKIT_NATIVE: undefined, CC: undefined }).stdout).toMatch(/up to date/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("exits 0 without an addon when there is no compiler", async () => {
    const dir = await copyOfBuildDirectory();
    try {
      const result = build(dir, { QCOWKIT_NATIVE: undefined, CC: "/nonexistent/cc" });
      expect(result.status).toBe(0);
      expect(result.stdout).toMatch(/not built \(no C compiler found\); using the pure JavaScript fallback/);
      expect(existsSync(join(dir, "build", "qcowkit_fs.node"))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("exits 0 without an addon when the compile fails, naming the first error", async () => {
    const dir = await copyOfBuildDirectory();
    try {
      writeFileSync(join(dir, "qcowkit_fs.c"), "#error deliberately broken\n");
      const result = build(dir, { QCOWKIT_NATIVE: undefined, CC: undefined });
      expect(result.status).toBe(0);
      expect(result.stdout).toMatch(/not built \(\S+ failed: .*deliberately broken/);
      expect(existsSync(join(dir, "build", "qcowkit_fs.node"))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("skips the build when QCOWKIT_NATIVE=0", async () => {
    const dir = await copyOfBuildDirectory();
    try {
      const result = build(dir, { QCOWKIT_NATIVE: "0" });
      expect(result.status).toBe(0);
      expect(result.stdout).toMatch(/skipped \(QCOWKIT_NATIVE=0\)/);
      expect(existsSync(join(dir, "build"))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("loader", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.resetModules();
  });

  it("reports the addon unavailable, with the reason, when QCOWKIT_NATIVE=0", async () => {
    vi.resetModules();
    vi.stubEnv("QCOWKIT_NATIVE", "0");
    const loader = await import("../src/node/native");
    expect(loader.nativeAvailable).toBe(false);
    expect(loader.nativeFs()).toBeUndefined();
    expect(loader.nativeUnavailableReason).toBe("disabled by QCOWKIT_NATIVE=0");
  });

  it.skipIf(nativeTurnedOff)("setNativeEnabled turns the loaded addon off and on again", async () => {
    const loader = await import("../src/node/native");
    expect(loader.nativeAvailable).toBe(true);
    loader.setNativeEnabled(false);
    try {
      expect(loader.nativeAvailable).toBe(false);
      expect(loader.nativeFs()).toBeUndefined();
      expect(loader.nativeUnavailableReason).toMatch(/setNativeEnabled\(false\)/);
    } finally {
      loader.setNativeEnabled(true);
    }
    expect(loader.nativeAvailable).toBe(true);
    expect(loader.nativeFs()?.abiVersion).toBe(4);
    expect(loader.nativeUnavailableReason).toBeUndefined();
  });
});
