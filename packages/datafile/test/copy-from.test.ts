import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { open, truncate } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { isQcow2Error, type ByteStore } from "@qcowkit/spec";
import { MemoryStore } from "../src/index";
import { FaultInjectingStore, seededRandom } from "../src/testing";
import { FileStore } from "../src/node";
import { markZeroSectors } from "../src/store-copy";
import { expectBytes, pattern, readBytes } from "./contract";
import { nativeTurnedOff, requireNative, scratchDirectory } from "./native-helpers";

/** ByteStore.copyFrom and ByteStore.zeroSectors: FileStore (native addon and JavaScript), MemoryStore. */

const KiB = 1024;
const MiB = 1024 * KiB;
/** A descriptor number no process has open: system calls on it fail with EBADF. */
const unusedFd = 2 ** 31 - 1;
const directory = scratchDirectory("copy-from");
let counter = 0;

function newPath(): string {
  return join(directory(), `c${++counter}.raw`);
}

async function fileStore(bytes: Uint8Array, native: boolean, name?: string): Promise<FileStore> {
  const path = newPath();
  writeFileSync(path, bytes);
  return FileStore.open(path, { native, ...(name !== undefined && { name }) });
}

/** `bytes` grown with zeros to at least `size` (a copy). */
function padded(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(Math.max(bytes.byteLength, size));
  out.set(bytes);
  return out;
}

/** What copyFrom must leave: the target's bytes with the source range written at `offset` (zeros past the source). */
function expectedCopy(target: Uint8Array, source: Uint8Array, sourceOffset: number, offset: number, length: number): Uint8Array {
  const out = padded(target, offset + length);
  out.set(padded(source, sourceOffset + length).subarray(sourceOffset, sourceOffset + length), offset);
  return out;
}

async function expectContents(store: ByteStore, expected: Uint8Array): Promise<void> {
  expect(await store.size()).toBe(expected.byteLength);
  expectBytes(await readBytes(store, 0, expected.byteLength), expected);
}

async function rejection(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  const caught = await promise.then(
    () => undefined,
    (error: unknown) => error,
  );
  expect(isQcow2Error(caught), `expected a Qcow2Error, got ${String(caught)}`).toBe(true);
  expect((caught as Error).message).not.toContain("\n");
  return caught as Error & { code?: string };
}

/** The obvious answer: one flag per 512 bytes of `bytes[offset, offset + length)`, zeros past the end. */
function referenceZeroSectors(bytes: Uint8Array, offset: number, length: number): Uint8Array {
  const flags = new Uint8Array(Math.ceil(length / 512));
  for (let i = 0; i < flags.length; i++) {
    let zero = 1;
    for (let b = offset + i * 512; b < Math.min(offset + (i + 1) * 512, offset + length); b++) {
      if (b < bytes.byteLength && bytes[b] !== 0) {
        zero = 0;
        break;
      }
    }
    flags[i] = zero;
  }
  return flags;
}

/** Sectors (of the file) that are either zero or hold a few non-zero bytes at a seeded place: first, last, any. */
function sectorLayout(seed: number, size: number): Uint8Array {
  const random = seededRandom(seed);
  const bytes = new Uint8Array(size);
  for (let sector = 0; sector * 512 < size; sector++) {
    const start = sector * 512;
    const end = Math.min(start + 512, size);
    const kind = random();
    if (kind < 0.5) continue; // zero sector
    if (kind < 0.65) bytes[start] = 1 + Math.floor(random() * 255);
    else if (kind < 0.8) bytes[end - 1] = 0x80;
    else if (kind < 0.9) bytes[start + Math.floor(random() * (end - start))] = 1 + Math.floor(random() * 255);
    else bytes.set(pattern(end - start, seed + sector), start);
  }
  return bytes;
}

const modes = nativeTurnedOff ? [false] : [true, false];

for (const native of modes) {
  const label = native ? "native addon" : "JavaScript fallback";

  describe(`FileStore.copyFrom (${label})`, () => {
    it(`${native ? "uses" : "does not use"} the addon`, async () => {
      const store = await fileStore(new Uint8Array(0), native);
      expect(store.usesNative).toBe(native);
      if (native) requireNative();
      await store.close();
    });

    it("copies unaligned ranges of several MiB into an existing file", async () => {
      const sourceBytes = pattern(5 * MiB + 333, 1);
      const targetBytes = pattern(1 * MiB, 2);
      const source = await fileStore(sourceBytes, native, "src.raw");
      const target = await fileStore(targetBytes, native, "dst.raw");
      const length = 3 * MiB + 7;
      await target.copyFrom(source, 1000, 4097, length);
      await expectContents(target, expectedCopy(targetBytes, sourceBytes, 1000, 4097, length));
      // Inside the target, not growing it, and a short copy.
      await target.copyFrom(source, 5 * MiB, 10, 300);
      await expectContents(
        target,
        expectedCopy(expectedCopy(targetBytes, sourceBytes, 1000, 4097, length), sourceBytes, 5 * MiB, 10, 300),
      );
      await expectContents(source, sourceBytes);
      await source.close();
      await target.close();
    });

    it("writes zeros for the part past the source's end, over existing data, and grows the target", async () => {
      const sourceBytes = pattern(1 * MiB + 5, 3);
      const targetBytes = pattern(4 * MiB, 4);
      const source = await fileStore(sourceBytes, native);
      const target = await fileStore(targetBytes, native);
      await target.copyFrom(source, 1 * MiB - 100, 511, 3 * MiB);
      const first = expectedCopy(targetBytes, sourceBytes, 1 * MiB - 100, 511, 3 * MiB);
      expect(first.subarray(511 + 105, 511 + 3 * MiB).every((b) => b === 0)).toBe(true);
      await expectContents(target, first);
      // Entirely past the source's end, ending past the target's end: zeros, and the target grows.
      await target.copyFrom(source, 2 * MiB, 4 * MiB - 10, 2 * MiB + 1);
      await expectContents(target, expectedCopy(first, sourceBytes, 2 * MiB, 4 * MiB - 10, 2 * MiB + 1));
      // Many pieces past the source's end: buffers that held data before must be written as zeros.
      const whole = await fileStore(pattern(12 * MiB, 26), native);
      await whole.copyFrom(source, 0, 1, 11 * MiB);
      await expectContents(whole, expectedCopy(pattern(12 * MiB, 26), sourceBytes, 0, 1, 11 * MiB));
      await whole.close();
      expect(await source.size()).toBe(1 * MiB + 5);
      await source.close();
      await target.close();
    });

    it("grows an empty target, leaving the gap before the copied range reading zeros", async () => {
      const sourceBytes = pattern(2 * MiB + 1, 5);
      const source = await fileStore(sourceBytes, native);
      const target = await fileStore(new Uint8Array(0), native);
      await target.copyFrom(source, 1, 10 * MiB + 3, 2 * MiB);
      await expectContents(target, expectedCopy(new Uint8Array(0), sourceBytes, 1, 10 * MiB + 3, 2 * MiB));
      await source.close();
      await target.close();
    });

    it("copies within one file: apart, and overlapping either way as memmove does", async () => {
      let bytes = pattern(6 * MiB, 6);
      const store = await fileStore(bytes, native);
      const copies: [number, number, number][] = [
        [0, 6 * MiB - 2 * MiB, 2 * MiB], // apart
        [100, 100 + 1 * MiB + 17, 5 * MiB + 3], // overlapping, target after the source: copied backwards
        [2 * MiB + 9, 5, 4 * MiB + 1], // overlapping, target before the source
        [3 * MiB, 4 * MiB + 9, 4 * MiB], // overlapping and reading past the end, growing the file
        // Overlapping, target before the source, reading past the end: one thread in order, so the pieces past
        // the end reuse a buffer that held data and must still be written as zeros.
        [5 * MiB, 2 * MiB, 4 * MiB + 1],
        [777, 777, 3 * MiB], // onto itself
      ];
      for (const [from, to, length] of copies) {
        await store.copyFrom(store, from, to, length);
        const grown = padded(bytes, Math.max(from, to) + length);
        grown.copyWithin(to, from, from + length);
        bytes = grown.subarray(0, Math.max(bytes.byteLength, to + length));
        await expectContents(store, bytes);
      }
      await store.close();
    });

    it("copies from a MemoryStore, and a MemoryStore copies from a FileStore", async () => {
      const memoryBytes = pattern(3 * MiB, 7);
      const memory = new MemoryStore({ bytes: memoryBytes, chunkSize: 4096 });
      const file = await fileStore(pattern(100, 8), native);
      await file.copyFrom(memory, 3, 50, 3 * MiB);
      const fileBytes = expectedCopy(pattern(100, 8), memoryBytes, 3, 50, 3 * MiB);
      await expectContents(file, fileBytes);
      const other = new MemoryStore();
      await other.copyFrom(file, 4096, 1, 2 * MiB + 3);
      await expectContents(other, expectedCopy(new Uint8Array(0), fileBytes, 4096, 1, 2 * MiB + 3));
      await file.close();
    });

    it("copies nothing for length 0, even past the end", async () => {
      const source = await fileStore(pattern(10, 9), native);
      const target = await fileStore(pattern(10, 10), native);
      await target.copyFrom(source, 1 * MiB, 5 * MiB, 0);
      await expectContents(target, pattern(10, 10));
      await source.close();
      await target.close();
    });

    it("refuses a read-only target, a closed target or source, and bad ranges, without writing", async () => {
      const sourceBytes = pattern(4096, 11);
      const source = await fileStore(sourceBytes, native, "src.raw");
      const readOnlyPath = newPath();
      writeFileSync(readOnlyPath, pattern(100, 12));
      const readOnly = await FileStore.open(readOnlyPath, { readOnly: true, native });
      expect((await rejection(readOnly.copyFrom(source, 0, 0, 4096))).code).toBe("READ_ONLY");
      expectBytes(readFileSync(readOnlyPath), pattern(100, 12));
      await readOnly.close();

      const target = await fileStore(pattern(100, 13), native, "dst.raw");
      for (const [from, to, length] of [
        [-1, 0, 10],
        [0, 1.5, 10],
        [0, 0, -1],
        [2 ** 53 - 5, 0, 10],
        [0, 2 ** 53 - 5, 10],
      ] as const) {
        const error = await rejection(target.copyFrom(source, from, to, length));
        expect(error.code, `${from} ${to} ${length}`).toBe("INTERNAL");
      }
      await source.close();
      const closedSource = await rejection(target.copyFrom(source, 0, 0, 10));
      expect(closedSource.code).toBe("INTERNAL");
      expect(closedSource.message).toBe("src.raw: store is closed");
      await expectContents(target, pattern(100, 13));
      await target.close();
      const other = await fileStore(sourceBytes, native);
      const closedTarget = await rejection(target.copyFrom(other, 0, 0, 10));
      expect(closedTarget.message).toBe("dst.raw: store is closed");
      await other.close();
    });

    it("reports a failed read of the source in the read path's words, naming the source", async () => {
      // pread on a directory fails with EISDIR.
      const dirPath = join(directory(), `dir${++counter}`);
      mkdirSync(dirPath);
      const handle = await open(dirPath, "r");
      const source = FileStore.fromHandle(handle, { name: "dir-source", readOnly: true, native });
      const target = await fileStore(pattern(10, 14), native, "dst.raw");
      const error = await rejection(target.copyFrom(source, 1000, 4097, 1 * MiB));
      expect(error.message).toBe("Could not read 'dir-source' at byte 1000: Is a directory");
      await expectContents(target, pattern(10, 14));
      await source.close();
      await target.close();
    });

    it("reports a failed write of the target in the write path's words, naming the target", async () => {
      const source = await fileStore(pattern(2 * MiB, 15), native, "src.raw");
      const path = newPath();
      writeFileSync(path, pattern(10, 16));
      // Opened read-only underneath while the store believes it may write: pwrite fails with EBADF.
      const target = FileStore.fromHandle(await open(path, "r"), { name: "ro-target", native });
      const error = await rejection(target.copyFrom(source, 0, 4097, 1 * MiB));
      expect(error.message).toBe("Could not write 'ro-target' at byte 4097: Bad file descriptor");
      expect(error.code).toBe("IO_ERROR");
      expectBytes(readFileSync(path), pattern(10, 16));
      await source.close();
      await target.close();
    });

    it.skipIf(!existsSync("/dev/full"))("reports a full device as NO_SPACE at the byte written", async () => {
      const source = await fileStore(pattern(1 * MiB, 17), native, "src.raw");
      const target = FileStore.fromHandle(await open("/dev/full", "r+"), { name: "full", native });
      const error = await rejection(target.copyFrom(source, 10, 4097, 1 * MiB));
      expect(error.message).toBe("Could not write 'full' at byte 4097: No space left on device");
      expect(error.code).toBe("NO_SPACE");
      await source.close();
      await target.close();
    });
  });

  describe(`FileStore.copyFrom with a scan (${label})`, () => {
    for (const seed of [11, 12, 13]) {
      it(`copies and marks the zero sectors of what it copied (seed ${seed})`, async () => {
        const random = seededRandom(seed);
        // Several pieces (over 2 MiB), an unaligned source offset, a partial last sector and a tail past EOF.
        const size = 512 * (5000 + Math.floor(random() * 3000)) + 300;
        const bytes = sectorLayout(seed, size);
        const source = await fileStore(bytes, native);
        const target = await fileStore(pattern(64 * KiB, seed), native);
        const sourceOffset = Math.floor(random() * 4000);
        const length = size - sourceOffset + 1000;
        const scan = new Uint8Array(Math.ceil(length / 512)).fill(7);
        await target.copyFrom(source, sourceOffset, 4096, length, scan);
        expectBytes(scan, referenceZeroSectors(bytes, sourceOffset, length));
        await expectContents(target, expectedCopy(pattern(64 * KiB, seed), bytes, sourceOffset, 4096, length));
        await source.close();
        await target.close();
      });
    }

    it("refuses a scan array of the wrong size before copying anything", async () => {
      const source = await fileStore(pattern(8 * KiB, 3), native);
      const target = await fileStore(new Uint8Array(0), native);
      const error = await rejection(target.copyFrom(source, 0, 0, 4096, new Uint8Array(9)));
      expect(error.message).toMatch(/one byte per 512-byte sector/);
      expect(await target.size()).toBe(0);
      await source.close();
      await target.close();
    });
  });

  describe(`FileStore.zeroSectors (${label})`, () => {
    it("finds zero sectors: non-zero first or last byte, partial last sector, holes, past the end", async () => {
      const size = 8 * 512 + 100;
      const bytes = new Uint8Array(size);
      bytes[512] = 1; // first byte of sector 1
      bytes[3 * 512 - 1] = 0x80; // last byte of sector 2
      bytes[5 * 512 + 511] = 0xff; // last byte of sector 5
      bytes[8 * 512 + 99] = 7; // last byte of the partial sector 8
      const store = await fileStore(bytes, native);
      expect([...(await store.zeroSectors(0, size))]).toEqual([1, 0, 0, 1, 1, 0, 1, 1, 0]);
      // Unaligned: sector i is [1 + 512 i, 513 + 512 i); the last one is 98 bytes ending just before the 7.
      expect([...(await store.zeroSectors(1, 8 * 512 + 98))]).toEqual([0, 1, 0, 1, 1, 0, 1, 1, 1]);
      expect([...(await store.zeroSectors(1, 8 * 512 + 99))]).toEqual([0, 1, 0, 1, 1, 0, 1, 1, 0]);
      expect([...(await store.zeroSectors(512, 1))]).toEqual([0]);
      expect([...(await store.zeroSectors(513, 1023))]).toEqual([1, 0]);
      // Straddling the end of the file, and wholly past it.
      expect([...(await store.zeroSectors(8 * 512, 1024))]).toEqual([0, 1]);
      expect([...(await store.zeroSectors(8 * 512 + 100, 1024))]).toEqual([1, 1]);
      expect([...(await store.zeroSectors(1 * MiB, 3 * MiB + 1))]).toEqual(new Array(6145).fill(1));
      expect(await store.zeroSectors(5, 0)).toEqual(new Uint8Array(0));
      await store.close();
    });

    it("reads holes of a sparse file as zero sectors", async () => {
      const path = newPath();
      writeFileSync(path, new Uint8Array(0));
      await truncate(path, 4 * MiB);
      const store = await FileStore.open(path, { native });
      await store.write(2 * MiB + 1024, pattern(1, 18));
      const flags = await store.zeroSectors(0, 4 * MiB);
      const expected = new Uint8Array(8192).fill(1);
      expected[4096 + 2] = 0;
      expectBytes(flags, expected);
      await store.close();
    });

    for (const seed of [1, 2, 3, 4]) {
      it(`matches a byte-by-byte reference on a seeded random layout (seed ${seed})`, async () => {
        const random = seededRandom(seed * 1000);
        const size = 512 * (1000 + Math.floor(random() * 3000)) + Math.floor(random() * 512);
        const bytes = sectorLayout(seed, size);
        const store = await fileStore(bytes, native);
        const ranges: [number, number][] = [[0, size]];
        for (let i = 0; i < 12; i++) {
          const offset = Math.floor(random() * (size + 2000));
          ranges.push([offset, Math.floor(random() * (size + 4000 - Math.min(offset, size)))]);
        }
        for (const [offset, length] of ranges) {
          expectBytes(await store.zeroSectors(offset, length), referenceZeroSectors(bytes, offset, length));
        }
        await store.close();
      });
    }

    it("refuses bad ranges and a closed store", async () => {
      const store = await fileStore(pattern(1024, 19), native, "z.raw");
      for (const [offset, length] of [
        [-1, 10],
        [0, 0.5],
        [2 ** 53 - 5, 10],
      ] as const) {
        expect((await rejection(store.zeroSectors(offset, length))).code).toBe("INTERNAL");
      }
      await store.close();
      expect((await rejection(store.zeroSectors(0, 512))).message).toBe("z.raw: store is closed");
    });

    it("reports a failed read in the read path's words", async () => {
      const dirPath = join(directory(), `dir${++counter}`);
      mkdirSync(dirPath);
      const store = FileStore.fromHandle(await open(dirPath, "r"), { name: "dir-store", readOnly: true, native });
      const error = await rejection(store.zeroSectors(4096, 10_000));
      expect(error.message).toBe("Could not read 'dir-store' at byte 4096: Is a directory");
      await store.close();
    });
  });
}

describe.skipIf(nativeTurnedOff)("native and JavaScript agree", () => {
  it("zeroSectors gives the same flags on large seeded layouts, with more pieces than threads", async () => {
    for (const seed of [11, 12]) {
      const random = seededRandom(seed);
      const size = 3 * MiB + Math.floor(random() * MiB);
      const bytes = sectorLayout(seed, size);
      const path = newPath();
      writeFileSync(path, bytes);
      const native = await FileStore.open(path, { readOnly: true });
      const plain = await FileStore.open(path, { readOnly: true, native: false });
      expect(native.usesNative && !plain.usesNative).toBe(true);
      for (const [offset, length] of [
        [0, size + 5000],
        [Math.floor(random() * 1000), size - 2000],
        [Math.floor(random() * size), Math.floor(random() * size)],
      ] as const) {
        const fromNative = await native.zeroSectors(offset, length);
        expectBytes(fromNative, await plain.zeroSectors(offset, length));
        expectBytes(fromNative, referenceZeroSectors(bytes, offset, length));
      }
      await native.close();
      await plain.close();
    }
  });

  it("copyFrom leaves byte-identical files either way", async () => {
    const sourceBytes = pattern(7 * MiB + 11, 20);
    const results: Uint8Array[] = [];
    for (const native of [true, false]) {
      const source = await fileStore(sourceBytes, native);
      const path = newPath();
      writeFileSync(path, pattern(3 * MiB, 21));
      const target = await FileStore.open(path, { native });
      await target.copyFrom(source, 12_345, 1 * MiB + 3, 8 * MiB);
      await source.close();
      await target.close();
      results.push(readFileSync(path));
    }
    expect(results).toHaveLength(2);
    expectBytes(results[0]!, results[1]!);
    expectBytes(results[0]!, expectedCopy(pattern(3 * MiB, 21), sourceBytes, 12_345, 1 * MiB + 3, 8 * MiB));
  });
});

describe.skipIf(nativeTurnedOff)("native copyRange and scanZeroSectors", () => {
  it("copyRange copies between descriptors; length 0 resolves without touching anything", async () => {
    const native = requireNative();
    const sourcePath = newPath();
    const targetPath = newPath();
    const sourceBytes = pattern(5 * MiB + 1, 22);
    writeFileSync(sourcePath, sourceBytes);
    writeFileSync(targetPath, new Uint8Array(0));
    const source = await open(sourcePath, "r");
    const target = await open(targetPath, "r+");
    try {
      await native.copyRange(source.fd, 0, target.fd, 0, 0);
      await native.copyRange(unusedFd, 0, unusedFd, 0, 0);
      expect(readFileSync(targetPath).byteLength).toBe(0);
      await native.copyRange(source.fd, 7, target.fd, 3, 6 * MiB);
      expectBytes(readFileSync(targetPath), expectedCopy(new Uint8Array(0), sourceBytes, 7, 3, 6 * MiB));
    } finally {
      await source.close();
      await target.close();
    }
  });

  it("copyRange rejects with the failed call, its errno and the byte position", async () => {
    const native = requireNative();
    const path = newPath();
    writeFileSync(path, pattern(100, 23));
    const readable = await open(path, "r");
    try {
      await expect(native.copyRange(unusedFd, 5000, readable.fd, 0, 10)).rejects.toMatchObject({
        code: "EBADF",
        errno: 9,
        syscall: "pread",
        position: 5000,
        message: "Bad file descriptor",
      });
      await expect(native.copyRange(readable.fd, 0, readable.fd, 1 * MiB, 10)).rejects.toMatchObject({
        code: "EBADF",
        syscall: "pwrite",
        position: 1 * MiB,
      });
    } finally {
      await readable.close();
    }
  });

  it("scanZeroSectors fills the flags it is given and checks its arguments synchronously", async () => {
    const native = requireNative();
    const path = newPath();
    const bytes = new Uint8Array(2048);
    bytes[1023] = 1;
    writeFileSync(path, bytes);
    const handle = await open(path, "r");
    try {
      const backing = new Uint8Array(8).fill(0xee);
      const flags = backing.subarray(2, 7); // 5 sectors: 4 in the file, 1 past its end
      await native.scanZeroSectors(handle.fd, 0, 2048 + 10, flags);
      expect([...backing]).toEqual([0xee, 0xee, 1, 0, 1, 1, 1, 0xee]);
      await native.scanZeroSectors(handle.fd, 0, 0, new Uint8Array(0));
      expect(() => native.scanZeroSectors(handle.fd, 0, 513, new Uint8Array(1))).toThrow(RangeError);
      expect(() => native.scanZeroSectors(handle.fd, 0, 512, new Uint8Array(2))).toThrow(/one byte per 512-byte sector/);
      expect(() => native.scanZeroSectors(handle.fd, 0, 512, new Uint16Array(1) as unknown as Uint8Array)).toThrow(TypeError);
      expect(() => native.scanZeroSectors(handle.fd, -1, 512, new Uint8Array(1))).toThrow(RangeError);
      expect(() => native.scanZeroSectors(handle.fd, 2 ** 53 - 2, 512, new Uint8Array(1))).toThrow(/below 2\^53/);
      expect(() => native.copyRange(handle.fd, 0, handle.fd, 2 ** 53 - 2, 4)).toThrow(/dstPosition \+ length/);
      expect(() => native.copyRange(handle.fd, 1.5, handle.fd, 0, 4)).toThrow(/srcPosition must be a safe/);
      expect(() => native.copyRange(-1, 0, handle.fd, 0, 4)).toThrow(RangeError);
      expect(() => (native.copyRange as (fd: number) => Promise<void>)(handle.fd)).toThrow(/missing arguments/);
      await expect(native.scanZeroSectors(unusedFd, 700, 10, new Uint8Array(1))).rejects.toMatchObject({
        code: "EBADF",
        syscall: "pread",
        position: 700,
      });
    } finally {
      await handle.close();
    }
  });
});

describe("MemoryStore copyFrom and zeroSectors", () => {
  it("copyFrom with a scan marks the zero sectors it copied", async () => {
    const bytes = sectorLayout(21, 512 * 3000 + 100);
    const source = new MemoryStore({ bytes });
    const target = new MemoryStore();
    const scan = new Uint8Array(Math.ceil((bytes.byteLength - 700) / 512));
    await target.copyFrom(source, 700, 0, bytes.byteLength - 700, scan);
    expectBytes(scan, referenceZeroSectors(bytes, 700, bytes.byteLength - 700));
    await expectContents(target, bytes.subarray(700));
  });

  it("copies from another store and within itself (memmove), growing like a write, zeros past the source", async () => {
    const sourceBytes = pattern(3 * MiB + 3, 24);
    const source = new MemoryStore({ bytes: sourceBytes });
    let bytes = pattern(1 * MiB, 25);
    const store = new MemoryStore({ bytes, chunkSize: 4096 });
    await store.copyFrom(source, 1000, 4097, 3 * MiB + 7);
    bytes = expectedCopy(bytes, sourceBytes, 1000, 4097, 3 * MiB + 7);
    await expectContents(store, bytes);
    for (const [from, to, length] of [
      [100, 100 + 1 * MiB + 17, 2 * MiB + 3],
      [1 * MiB, 5, 3 * MiB],
    ] as const) {
      await store.copyFrom(store, from, to, length);
      const grown = padded(bytes, Math.max(from, to) + length);
      grown.copyWithin(to, from, from + length);
      bytes = grown.subarray(0, Math.max(bytes.byteLength, to + length));
      await expectContents(store, bytes);
    }
    await expect(new MemoryStore({ readOnly: true }).copyFrom(source, 0, 0, 1)).rejects.toMatchObject({ code: "READ_ONLY" });
    await source.close();
    await expect(store.copyFrom(source, 0, 0, 1)).rejects.toThrow("memory: store is closed");
  });

  it("copying zeros allocates no chunks", async () => {
    const source = new MemoryStore({ size: 8 * MiB });
    const store = new MemoryStore();
    await store.copyFrom(source, 0, 1 * MiB, 8 * MiB);
    expect(store.chunkCount).toBe(0);
    expect(await store.size()).toBe(9 * MiB);
  });

  for (const chunkSize of [512, 4096, 64 * KiB]) {
    it(`zeroSectors matches the reference on seeded layouts (chunk size ${chunkSize}), with and without a base`, async () => {
      for (const seed of [31, 32, 33]) {
        const random = seededRandom(seed);
        const size = 512 * (2000 + Math.floor(random() * 4000)) + Math.floor(random() * 512);
        let bytes = sectorLayout(seed, size);
        const store = new MemoryStore({ bytes, chunkSize });
        // Zero a few chunk-aligned stretches so some chunks are dropped (holes the store skips).
        await store.discard(64 * KiB, 256 * KiB);
        bytes = bytes.slice();
        bytes.fill(0, 64 * KiB, 320 * KiB);
        const overlay = new MemoryStore({ base: store, size: size + 1000, chunkSize });
        const written = pattern(700, seed);
        await overlay.write(size - 300, written);
        const overlayBytes = padded(bytes, size + 1000);
        overlayBytes.set(written, size - 300);
        for (let i = 0; i < 8; i++) {
          const offset = i === 0 ? 0 : Math.floor(random() * (size + 2000));
          const length = i === 0 ? size + 3000 : Math.floor(random() * (size + 4000 - Math.min(offset, size)));
          expectBytes(await store.zeroSectors(offset, length), referenceZeroSectors(bytes, offset, length));
          expectBytes(await overlay.zeroSectors(offset, length), referenceZeroSectors(overlayBytes, offset, length));
        }
      }
    });
  }

  it("zeroSectors of a huge sparse store reads nothing it does not hold", async () => {
    const store = new MemoryStore({ size: 64 * 1024 * MiB });
    await store.write(32 * 1024 * MiB + 1, pattern(1, 34));
    let reads = 0;
    const read = store.read.bind(store);
    store.read = (offset, into) => {
      reads++;
      return read(offset, into);
    };
    const flags = await store.zeroSectors(32 * 1024 * MiB - 4 * MiB, 8 * MiB);
    expect(flags.indexOf(0)).toBe(8192);
    expect(flags.lastIndexOf(0)).toBe(8192);
    expect(reads).toBe(1);
    await store.close();
    await expect(store.zeroSectors(0, 1)).rejects.toThrow("memory: store is closed");
  });
});

describe("markZeroSectors", () => {
  it("gives the same answer on aligned and unaligned views, for every single non-zero byte position", () => {
    const backing = new Uint8Array(1 + 3 * 512 + 77);
    const view = backing.subarray(1); // byteOffset 1: no 32-bit words
    const aligned = new Uint8Array(view.byteLength);
    for (let at = 0; at < view.byteLength; at += 37) {
      view.fill(0);
      aligned.fill(0);
      view[at] = 1;
      aligned[at] = 1;
      const expected = referenceZeroSectors(aligned, 0, aligned.byteLength);
      const fromView = new Uint8Array(4).fill(9);
      const fromAligned = new Uint8Array(4).fill(9);
      markZeroSectors(view, fromView, 0);
      markZeroSectors(aligned, fromAligned, 0);
      expect([...fromView], String(at)).toEqual([...expected]);
      expect([...fromAligned], String(at)).toEqual([...expected]);
      expect(expected[Math.floor(at / 512)]).toBe(0);
    }
  });
});

describe("FaultInjectingStore", () => {
  it("does not offer copyFrom or zeroSectors (it could not inject faults into them), so callers read and write", () => {
    const store = new FaultInjectingStore(new MemoryStore()) as ByteStore;
    expect(store.copyFrom).toBeUndefined();
    expect(store.zeroSectors).toBeUndefined();
  });
});
