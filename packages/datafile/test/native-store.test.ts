import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, open, rm, stat, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { allocationExtents, FileStore, maxExtentsPerCall, type AllocationExtent } from "../src/node";
import { describeByteStoreContract, pattern } from "./contract";
import { allocatedBytes, nativeTurnedOff, qemuMap, requireNative, runQemu, scratchDirectory, shmRoot } from "./native-helpers";

/** FileStore on the native addon: holes, fallocate, allocation maps; QEMU as the oracle. */

const KiB = 1024;
const MiB = 1024 * KiB;
const directory = scratchDirectory("native-store");
let counter = 0;

function newPath(dir = directory()): string {
  return join(dir, `s${++counter}.raw`);
}

async function storeWith(bytes: Uint8Array, native = true, dir?: string): Promise<{ path: string; store: FileStore }> {
  const path = newPath(dir);
  writeFileSync(path, bytes);
  return { path, store: await FileStore.open(path, { native }) };
}

/** Our allocation map in qemu-img map's shape (holes of a raw file are zero, data is not). */
function asQemuMap(extents: AllocationExtent[]): { start: number; length: number; data: boolean; zero: boolean }[] {
  return extents.map(({ offset, length, data }) => ({ start: offset, length, data, zero: !data }));
}

describeByteStoreContract("FileStore on tmpfs with the native addon", async ({ bytes, readOnly }) => {
  const path = newPath();
  writeFileSync(path, bytes ?? new Uint8Array(0));
  return FileStore.open(path, { readOnly });
});

describeByteStoreContract("FileStore with the native addon turned off", async ({ bytes, readOnly }) => {
  const path = newPath();
  writeFileSync(path, bytes ?? new Uint8Array(0));
  return FileStore.open(path, { readOnly, native: false });
});

describe.skipIf(nativeTurnedOff)("FileStore with the native addon", () => {
  it("uses the addon for real files and not for substituted handles without a descriptor", async () => {
    requireNative();
    const { store } = await storeWith(new Uint8Array(0));
    expect(store.usesNative).toBe(true);
    expect(typeof store.fd).toBe("number");
    await store.close();
    expect(store.fd).toBeUndefined();
    const { store: plain } = await storeWith(new Uint8Array(0), false);
    expect(plain.usesNative).toBe(false);
    await plain.close();
  });

  /** The same discard and zero writes done by qemu-io on one raw file and by FileStore on another. */
  async function twinFiles(dir: string): Promise<{ ours: string; theirs: string }> {
    const theirs = join(dir, "qemu.raw");
    const ours = join(dir, "ours.raw");
    for (const path of [theirs, ours]) {
      writeFileSync(path, "");
      await truncate(path, 4 * MiB);
    }
    const qemu = runQemu("qemu-io", [
      "-f", "raw",
      "-c", "write -P 0x5a 0 2M",
      "-c", "discard 256k 256k",
      "-c", "write -z 768k 256k",
      "-c", "write -z -u 1280k 256k",
      "-c", "write -z 3M 64k",
      theirs,
    ]);
    expect(qemu.stderr).toBe("");
    expect(qemu.status).toBe(0);
    const store = await FileStore.open(ours);
    await store.write(0, new Uint8Array(2 * MiB).fill(0x5a));
    await store.discard(256 * KiB, 256 * KiB);
    await store.writeZeroes(768 * KiB, 256 * KiB, false);
    await store.writeZeroes(1280 * KiB, 256 * KiB, true);
    await store.writeZeroes(3 * MiB, 64 * KiB, false);
    await store.close();
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
    expect(runQemu("qemu-img", ["compare", "-f", "raw", "-F", "raw", ours, theirs]).status).toBe(0);
    return { ours, theirs };
  }

  it("leaves the same file as qemu-io after discard and zero writes: same holes, same blocks (tmpfs)", async () => {
    requireNative();
    const dir = await mkdtemp(join(shmRoot, "qcowkit-native-oracle-"));
    try {
      const { ours, theirs } = await twinFiles(dir);
      const store = await FileStore.open(ours, { readOnly: true });
      const ourMap = await store.allocationStatus(0, 4 * MiB);
      await store.close();
      expect(asQemuMap(ourMap)).toEqual(qemuMap(theirs));
      expect(qemuMap(ours)).toEqual(qemuMap(theirs));
      // Holes punched where QEMU punched them, blocks kept (zero writes without unmap) where it kept them.
      expect(await allocatedBytes(ours)).toBe(await allocatedBytes(theirs));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("punches the holes qemu-io punches on the temporary directory's file system", async () => {
    // Unwritten extents from zero-range may show as data or hole depending on the page cache, so
    // only the punched ranges (discard, unmapping zero write) are compared here.
    requireNative();
    const dir = await mkdtemp(join(tmpdir(), "qcowkit-native-oracle-"));
    try {
      const { ours, theirs } = await twinFiles(dir);
      for (const path of [ours, theirs]) {
        const store = await FileStore.open(path, { readOnly: true });
        expect(await store.allocationStatus(256 * KiB, 256 * KiB), path).toEqual([
          { offset: 256 * KiB, length: 256 * KiB, data: false },
        ]);
        expect(await store.allocationStatus(1280 * KiB, 256 * KiB), path).toEqual([
          { offset: 1280 * KiB, length: 256 * KiB, data: false },
        ]);
        expect(await store.allocationStatus(1536 * KiB, 512 * KiB), path).toEqual([
          { offset: 1536 * KiB, length: 512 * KiB, data: true },
        ]);
        await store.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("discard frees the range's blocks; without the addon the same discard only writes zeros", async () => {
    requireNative();
    const data = pattern(1 * MiB, 7);
    const runs: number[] = [];
    for (const native of [true, false]) {
      const { path, store } = await storeWith(data, native);
      const before = await allocatedBytes(path);
      await store.discard(256 * KiB, 256 * KiB);
      runs.push(before - (await allocatedBytes(path)));
      const back = new Uint8Array(1 * MiB);
      await store.read(0, back);
      expect(back.subarray(256 * KiB, 512 * KiB).every((b) => b === 0)).toBe(true);
      expect(back.subarray(0, 256 * KiB)).toEqual(data.subarray(0, 256 * KiB));
      expect(back.subarray(512 * KiB)).toEqual(data.subarray(512 * KiB));
      expect(await store.size()).toBe(1 * MiB);
      await store.close();
    }
    expect(runs).toEqual([256 * KiB, 0]);
  });

  it("writeZeroes with unmap past the end punches the file part and grows with a hole", async () => {
    requireNative();
    const { path, store } = await storeWith(pattern(64 * KiB, 3));
    await store.writeZeroes(32 * KiB, 96 * KiB, true);
    expect(await store.size()).toBe(128 * KiB);
    expect(await allocatedBytes(path)).toBe(32 * KiB);
    expect(await store.allocationStatus(0, 256 * KiB)).toEqual([
      { offset: 0, length: 32 * KiB, data: true },
      { offset: 32 * KiB, length: 224 * KiB, data: false },
    ]);
    await store.close();
  });

  it("writeZeroes without unmap past the end grows the file with allocated zeros", async () => {
    requireNative();
    const { path, store } = await storeWith(pattern(64 * KiB, 4));
    expect(store.efficientZeroes).toBe(true);
    await store.writeZeroes(32 * KiB, 96 * KiB, false);
    // tmpfs refused zero-range; punch + allocate still make zero writes cheap.
    expect(store.efficientZeroes).toBe(true);
    expect(await store.size()).toBe(128 * KiB);
    expect(await allocatedBytes(path)).toBe(128 * KiB);
    const back = new Uint8Array(128 * KiB);
    await store.read(0, back);
    expect(back.subarray(32 * KiB).every((b) => b === 0)).toBe(true);
    await store.close();
  });

  it('resize with "falloc" reserves the tail like qemu-img resize --preallocation=falloc', async () => {
    requireNative();
    const ours = newPath();
    const theirs = newPath();
    for (const path of [ours, theirs]) writeFileSync(path, pattern(64 * KiB, 5));
    const qemu = runQemu("qemu-img", ["resize", "-f", "raw", "--preallocation=falloc", theirs, "8M"]);
    expect(qemu.status).toBe(0);
    const store = await FileStore.open(ours);
    await store.resize(8 * MiB, "falloc");
    await store.close();
    expect((await stat(ours)).size).toBe(8 * MiB);
    expect(await allocatedBytes(ours)).toBe(await allocatedBytes(theirs));
    expect(await allocatedBytes(ours)).toBeGreaterThanOrEqual(8 * MiB);
    expect(qemuMap(ours)).toEqual(qemuMap(theirs));
  });

  it('resize with "falloc" beyond the free space fails as QEMU does and keeps the old size', async () => {
    requireNative();
    const theirs = newPath();
    writeFileSync(theirs, pattern(4096, 6));
    const qemu = runQemu("qemu-img", ["resize", "-f", "raw", "--preallocation=falloc", theirs, "1P"]);
    expect(qemu.status).toBe(1);
    const { path, store } = await storeWith(pattern(4096, 6));
    const failure = await store.resize(2 ** 50, "falloc").catch((error: unknown) => error);
    expect(failure).toMatchObject({ name: "Qcow2Error", code: "NO_SPACE", errno: "ENOSPC" });
    expect(`qemu-img: ${(failure as Error).message}\n`).toBe(qemu.stderr);
    expect(await store.size()).toBe(4096);
    expect((await stat(path)).size).toBe(4096);
    await store.close();
  });

  it("allocationStatus matches qemu-img map on a sparse raw file, and past its end is a hole", async () => {
    requireNative();
    const path = newPath();
    writeFileSync(path, "");
    await truncate(path, 8 * MiB);
    const handle = await open(path, "r+");
    for (const [offset, length] of [
      [1 * MiB, 64 * KiB],
      [3 * MiB + 4 * KiB, 8 * KiB],
      [7 * MiB, 1 * MiB],
    ] as const) {
      await handle.write(pattern(length, offset), 0, length, offset);
    }
    await handle.close();
    const store = await FileStore.open(path, { readOnly: true });
    expect(asQemuMap(await store.allocationStatus(0, 8 * MiB))).toEqual(qemuMap(path));
    expect(await store.allocationStatus(3 * MiB, 8 * KiB)).toEqual([
      { offset: 3 * MiB, length: 4 * KiB, data: false },
      { offset: 3 * MiB + 4 * KiB, length: 4 * KiB, data: true },
    ]);
    expect(await store.allocationStatus(7 * MiB + 5, 2 * MiB)).toEqual([
      { offset: 7 * MiB + 5, length: 1 * MiB - 5, data: true },
      { offset: 8 * MiB, length: 1 * MiB + 5, data: false },
    ]);
    expect(await store.allocationStatus(100 * MiB, 4096)).toEqual([{ offset: 100 * MiB, length: 4096, data: false }]);
    expect(await store.allocationStatus(0, 0)).toEqual([]);
    await expect(store.allocationStatus(-1, 4096)).rejects.toMatchObject({ code: "INTERNAL" });
    await expect(store.allocationStatus(2 ** 53 - 1, 2)).rejects.toMatchObject({ code: "INTERNAL" });
    await store.close();
    await expect(store.allocationStatus(0, 1)).rejects.toMatchObject({ code: "INTERNAL" });
  });

  it("allocationStatus answers at most maxExtentsPerCall extents; continuing covers the rest", async () => {
    requireNative();
    const path = newPath();
    const blocks = maxExtentsPerCall / 2 + 10;
    const handle = await open(path, "w+");
    await handle.truncate(blocks * 8 * KiB);
    const block = new Uint8Array(4 * KiB).fill(1);
    for (let i = 0; i < blocks; i++) await handle.write(block, 0, block.byteLength, i * 8 * KiB + 4 * KiB);
    await handle.close();
    const store = await FileStore.open(path, { readOnly: true });
    const size = await store.size();
    const first = await store.allocationStatus(0, size);
    expect(first).toHaveLength(maxExtentsPerCall);
    const firstEnd = first[first.length - 1]!.offset + first[first.length - 1]!.length;
    const rest = await store.allocationStatus(firstEnd, size - firstEnd);
    const all = [...first, ...rest];
    expect(all).toHaveLength(blocks * 2);
    let position = 0;
    for (const [index, extent] of all.entries()) {
      expect(extent).toEqual({ offset: position, length: 4 * KiB, data: index % 2 === 1 });
      position += extent.length;
    }
    await store.close();
  });

  it("allocationExtents stops at the extent limit it is given", async () => {
    const native = requireNative();
    const path = newPath();
    writeFileSync(path, "");
    await truncate(path, 64 * KiB);
    const handle = await open(path, "r+");
    for (const offset of [8 * KiB, 24 * KiB, 40 * KiB]) await handle.write(new Uint8Array(4096).fill(9), 0, 4096, offset);
    expect(allocationExtents(native, handle.fd, path, 0, 64 * KiB, 64 * KiB, 3)).toEqual([
      { offset: 0, length: 8 * KiB, data: false },
      { offset: 8 * KiB, length: 4 * KiB, data: true },
      { offset: 12 * KiB, length: 12 * KiB, data: false },
    ]);
    expect(allocationExtents(native, handle.fd, path, 40 * KiB, 4 * KiB, 64 * KiB)).toEqual([
      { offset: 40 * KiB, length: 4 * KiB, data: true },
    ]);
    await handle.close();
  });
});

describe("FileStore with the native addon turned off", () => {
  it("reports the file part as data and the rest as a hole", async () => {
    const { store } = await storeWith(new Uint8Array(0), false);
    expect(store.efficientZeroes).toBe(false);
    await store.resize(1 * MiB); // sparse, but without the addon nobody can tell
    expect(await store.allocationStatus(512 * KiB, 1 * MiB)).toEqual([
      { offset: 512 * KiB, length: 512 * KiB, data: true },
      { offset: 1 * MiB, length: 512 * KiB, data: false },
    ]);
    expect(await store.allocationStatus(2 * MiB, 10)).toEqual([{ offset: 2 * MiB, length: 10, data: false }]);
    await store.close();
  });

  it('resize "falloc" writes zeros instead (the tail is allocated either way)', async () => {
    const { path, store } = await storeWith(new Uint8Array(0), false);
    await store.resize(1 * MiB, "falloc");
    expect(await allocatedBytes(path)).toBeGreaterThanOrEqual(1 * MiB);
    await store.close();
  });

  it.skipIf(nativeTurnedOff)("falls back to the JavaScript discard when the file system refuses to punch holes, and remembers", async () => {
    requireNative();
    // The addon as seen by a FileStore on a file system that refuses fallocate.
    let fallocateCalls = 0;
    vi.resetModules();
    vi.doMock("../src/node/native", async (importOriginal) => {
      const real = await importOriginal<typeof import("../src/node/native")>();
      const addon = real.nativeFs()!;
      const refusing = {
        ...addon,
        fallocate: (): Promise<void> => {
          fallocateCalls++;
          return Promise.reject(Object.assign(new Error("Operation not supported"), { code: "EOPNOTSUPP", errno: 95 }));
        },
        fallocateSync: (): void => {
          fallocateCalls++;
          throw Object.assign(new Error("Operation not supported"), { code: "EOPNOTSUPP", errno: 95 });
        },
      };
      return { ...real, nativeFs: () => refusing };
    });
    try {
      const { FileStore: RefusedStore } = await import("../src/node/file-store");
      const path = newPath();
      const data = pattern(64 * KiB, 8);
      writeFileSync(path, data);
      const store = await RefusedStore.open(path);
      expect(store.usesNative).toBe(true);
      await store.discard(4 * KiB, 8 * KiB);
      await store.discard(20 * KiB, 8 * KiB);
      await store.writeZeroes(40 * KiB, 4 * KiB, true);
      const back = new Uint8Array(64 * KiB);
      await store.read(0, back);
      for (const [start, end] of [[4, 12], [20, 28], [40, 44]] as const) {
        expect(back.subarray(start * KiB, end * KiB).every((b) => b === 0)).toBe(true);
      }
      expect(back.subarray(12 * KiB, 20 * KiB)).toEqual(data.subarray(12 * KiB, 20 * KiB));
      expect(await allocatedBytes(path)).toBe(64 * KiB);
      // Punch hole was refused once and not tried again.
      expect(fallocateCalls).toBe(1);
      // Zero-range is still untried, so zero writes may yet be cheap; once refused, they are not.
      expect(store.efficientZeroes).toBe(true);
      await store.writeZeroes(48 * KiB, 4 * KiB, false);
      expect(fallocateCalls).toBe(2);
      expect(store.efficientZeroes).toBe(false);
      await store.read(0, back);
      expect(back.subarray(48 * KiB, 52 * KiB).every((b) => b === 0)).toBe(true);
      await store.close();
    } finally {
      vi.doUnmock("../src/node/native");
      vi.resetModules();
    }
  });
});

