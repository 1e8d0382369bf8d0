import { afterEach, describe, expect, it } from "vitest";
import { isQcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";

/** What a test asks of a contract factory. */
export interface ContractStoreInit {
  /** Initial contents (the store's size is their length); none by default. */
  bytes?: Uint8Array;
  /** False by default. */
  readOnly?: boolean;
}

/** What a contract factory must be able to build: the request with its defaults filled in. */
export type ContractStoreFactory = (init: Required<ContractStoreInit>) => Promise<ByteStore>;

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

/** Deterministic non-zero test pattern: byte i of the pattern with `seed`. */
export function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[i] = (state & 0xff) || 1;
  }
  return bytes;
}

/** Read `length` bytes into a garbage-filled buffer (the store must overwrite every byte). */
export async function readBytes(store: ByteStore, offset: number, length: number): Promise<Uint8Array> {
  const into = new Uint8Array(length).fill(0xee); // garbage first: the store must overwrite every byte
  await store.read(offset, into);
  return into;
}

/** Byte-array equality that reports the first difference (vitest's deep equality is slow on MiBs). */
export function expectBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.byteLength, "byte length").toBe(expected.byteLength);
  let index = 0;
  while (index < actual.byteLength && actual[index] === expected[index]) index++;
  if (index < actual.byteLength) {
    expect.fail(`bytes differ at index ${index}: got ${actual[index]}, expected ${expected[index]}`);
  }
}

function zeros(length: number): Uint8Array {
  return new Uint8Array(length);
}

async function expectQcow2Error(promise: Promise<unknown>, code: string): Promise<void> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  expect(isQcow2Error(caught), `expected a Qcow2Error ${code}, got ${String(caught)}`).toBe(true);
  expect((caught as { code: string }).code).toBe(code);
  expect((caught as Error).message).not.toContain("\n");
}

/**
 * The behaviour every ByteStore must have. Call once per implementation; `create` builds a fresh
 * store for each test (it is closed afterwards).
 */
export function describeByteStoreContract(name: string, create: ContractStoreFactory): void {
  describe(`ByteStore contract: ${name}`, () => {
    const opened: ByteStore[] = [];
    const make = async (init: ContractStoreInit = {}) => {
      const store = await create({ bytes: init.bytes ?? new Uint8Array(0), readOnly: init.readOnly ?? false });
      opened.push(store);
      return store;
    };
    afterEach(async () => {
      for (const store of opened.splice(0)) await store.close().catch(() => undefined);
    });

    it("starts with the initial bytes and size", async () => {
      const initial = pattern(5000, 1);
      const store = await make({ bytes: initial });
      expect(await store.size()).toBe(5000);
      expectBytes(await readBytes(store, 0, 5000), initial);
      expect(store.readOnly).toBe(false);
      expect(typeof store.name).toBe("string");
    });

    it("reads back writes at unaligned offsets, across chunk boundaries, and overlapping", async () => {
      const store = await make({ bytes: zeros(200 * KiB) });
      const a = pattern(70_000, 2);
      const b = pattern(1000, 3);
      await store.write(12_345, a); // crosses the 64 KiB boundary
      await store.write(65_000, b); // overlaps a
      const expected = zeros(200 * KiB);
      expected.set(a, 12_345);
      expected.set(b, 65_000);
      expectBytes(await readBytes(store, 0, 200 * KiB), expected);
      expectBytes(await readBytes(store, 64_999, 1002), expected.subarray(64_999, 66_001));
    });

    it("copies written data (later changes to the caller's buffer do not leak in)", async () => {
      const store = await make();
      const data = pattern(4096, 4);
      const copy = data.slice();
      await store.write(100, data);
      data.fill(0x55);
      expectBytes(await readBytes(store, 100, 4096), copy);
    });

    it("reads into a view with a non-zero byteOffset without touching bytes around it", async () => {
      const store = await make({ bytes: pattern(1000, 5) });
      const backing = new Uint8Array(1200).fill(0x77);
      const view = backing.subarray(100, 1100);
      await store.read(0, view);
      expectBytes(view, pattern(1000, 5));
      expect(backing.subarray(0, 100).every((v) => v === 0x77)).toBe(true);
      expect(backing.subarray(1100).every((v) => v === 0x77)).toBe(true);
    });

    it("zero-fills reads past the end without growing", async () => {
      const initial = pattern(10, 6);
      const store = await make({ bytes: initial });
      const straddling = await readBytes(store, 5, 100);
      expectBytes(straddling.subarray(0, 5), initial.subarray(5));
      expectBytes(straddling.subarray(5), zeros(95));
      expectBytes(await readBytes(store, 1 * MiB, 4096), zeros(4096));
      expect(await store.size()).toBe(10);
    });

    it("grows on a write past the end, leaving the gap reading zeros", async () => {
      const store = await make({ bytes: pattern(100, 7) });
      const data = pattern(300, 8);
      await store.write(1 * MiB + 3, data);
      expect(await store.size()).toBe(1 * MiB + 303);
      expectBytes(await readBytes(store, 100, 1 * MiB - 97), zeros(1 * MiB - 97));
      expectBytes(await readBytes(store, 1 * MiB + 3, 300), data);
      expectBytes(await readBytes(store, 0, 100), pattern(100, 7));
    });

    it("does not grow on an empty write or read past the end", async () => {
      const store = await make({ bytes: pattern(10, 9) });
      await store.write(5000, new Uint8Array(0));
      await store.read(9000, new Uint8Array(0));
      expect(await store.size()).toBe(10);
    });

    it("handles a large multi-MiB write and piecewise reads", async () => {
      const store = await make();
      const data = pattern(3 * MiB + 17, 10);
      await store.write(511, data);
      expectBytes(await readBytes(store, 511, data.byteLength), data);
      expectBytes(await readBytes(store, 511 + 1 * MiB - 3, 10), data.subarray(1 * MiB - 3, 1 * MiB + 7));
    });

    it("keeps concurrent writes to different ranges", async () => {
      const store = await make();
      const pieces = Array.from({ length: 16 }, (_, i) => pattern(10_000, 100 + i));
      await Promise.all(pieces.map((piece, i) => store.write(i * 10_000, piece)));
      const all = await readBytes(store, 0, 160_000);
      pieces.forEach((piece, i) => expectBytes(all.subarray(i * 10_000, (i + 1) * 10_000), piece));
    });

    it("holds a few writes in a 4 TiB sparse store", async () => {
      const store = await make();
      const data = pattern(512, 11);
      await store.write(4 * TiB - 512, data);
      await store.write(1 * TiB + 7, data);
      expect(await store.size()).toBe(4 * TiB);
      expectBytes(await readBytes(store, 4 * TiB - 512, 512), data);
      expectBytes(await readBytes(store, 1 * TiB + 7, 512), data);
      expectBytes(await readBytes(store, 2 * TiB, 4096), zeros(4096));
      const allocated = store.allocatedSize ? await store.allocatedSize() : undefined;
      if (typeof allocated === "number") expect(allocated).toBeLessThan(16 * MiB);
    });

    describe("resize", () => {
      it("grows with preallocation off: zeros, old data intact, nothing allocated for the tail", async () => {
        const initial = pattern(4096, 12);
        const store = await make({ bytes: initial });
        await store.resize(64 * MiB);
        expect(await store.size()).toBe(64 * MiB);
        expectBytes(await readBytes(store, 0, 4096), initial);
        expectBytes(await readBytes(store, 32 * MiB, 1 * MiB), zeros(1 * MiB));
        const allocated = store.allocatedSize ? await store.allocatedSize() : undefined;
        if (typeof allocated === "number") expect(allocated).toBeLessThan(8 * MiB);
      });

      for (const mode of ["falloc", "full"] as const) {
        it(`grows with preallocation ${mode}: zeros, old data intact, tail allocated`, async () => {
          const initial = pattern(4096, 13);
          const store = await make({ bytes: initial });
          await store.resize(8 * MiB + 100, mode);
          expect(await store.size()).toBe(8 * MiB + 100);
          expectBytes(await readBytes(store, 0, 4096), initial);
          expectBytes(await readBytes(store, 4096, 8 * MiB - 3996), zeros(8 * MiB - 3996));
          const allocated = store.allocatedSize ? await store.allocatedSize() : undefined;
          if (typeof allocated === "number") expect(allocated).toBeGreaterThanOrEqual(8 * MiB);
        });

        it(`refuses to shrink with preallocation ${mode} and keeps the size`, async () => {
          const store = await make({ bytes: pattern(8192, 14) });
          await expectQcow2Error(store.resize(4096, mode), "NOT_SUPPORTED");
          expect(await store.size()).toBe(8192);
          expectBytes(await readBytes(store, 0, 8192), pattern(8192, 14));
        });
      }

      it("accepts the current size with any preallocation", async () => {
        const store = await make({ bytes: pattern(8192, 15) });
        for (const mode of ["off", "falloc", "full"] as StorePreallocation[]) await store.resize(8192, mode);
        expect(await store.size()).toBe(8192);
        expectBytes(await readBytes(store, 0, 8192), pattern(8192, 15));
      });

      it("shrinks, and data beyond the new end does not come back after growing again", async () => {
        const initial = pattern(300 * KiB, 16);
        const store = await make({ bytes: initial });
        await store.resize(100 * KiB + 5);
        expect(await store.size()).toBe(100 * KiB + 5);
        expectBytes(await readBytes(store, 0, 100 * KiB + 5), initial.subarray(0, 100 * KiB + 5));
        expectBytes(await readBytes(store, 100 * KiB + 5, 10), zeros(10));
        await store.resize(300 * KiB);
        expectBytes(await readBytes(store, 0, 100 * KiB + 5), initial.subarray(0, 100 * KiB + 5));
        expectBytes(await readBytes(store, 100 * KiB + 5, 200 * KiB - 5), zeros(200 * KiB - 5));
        await store.resize(0);
        expect(await store.size()).toBe(0);
        await store.resize(10);
        expectBytes(await readBytes(store, 0, 10), zeros(10));
      });

      it("refuses an unknown preallocation mode", async () => {
        const store = await make({ bytes: pattern(10, 17) });
        await expectQcow2Error(store.resize(20, "metadata" as StorePreallocation), "INVALID_ARGUMENT");
        expect(await store.size()).toBe(10);
      });
    });

    describe("discard and writeZeroes", () => {
      const length = 3 * MiB;
      const setup = async () => {
        const initial = pattern(length, 18);
        return { initial, store: await make({ bytes: initial }) };
      };

      it("discard in the middle reads zeros and keeps the neighbours and size", async () => {
        const { initial, store } = await setup();
        await store.discard(100_001, 1 * MiB + 77);
        const expected = initial.slice();
        expected.fill(0, 100_001, 100_001 + 1 * MiB + 77);
        expectBytes(await readBytes(store, 0, length), expected);
        expect(await store.size()).toBe(length);
      });

      it("discard reaching or passing the end reads zeros and does not change the size", async () => {
        const { initial, store } = await setup();
        await store.discard(2 * MiB + 3, 10 * MiB);
        const expected = initial.slice();
        expected.fill(0, 2 * MiB + 3);
        expectBytes(await readBytes(store, 0, length), expected);
        expect(await store.size()).toBe(length);
        await store.discard(5 * MiB, 1 * MiB);
        expect(await store.size()).toBe(length);
        await store.discard(0, 0);
        expectBytes(await readBytes(store, 0, 10), initial.subarray(0, 10));
      });

      for (const unmap of [false, true]) {
        it(`writeZeroes (unmap ${unmap}) in the middle and at the end reads zeros`, async () => {
          const { initial, store } = await setup();
          await store.writeZeroes(65_535, 70_000, unmap);
          await store.writeZeroes(length - 1000, 1000, unmap);
          const expected = initial.slice();
          expected.fill(0, 65_535, 65_535 + 70_000);
          expected.fill(0, length - 1000);
          expectBytes(await readBytes(store, 0, length), expected);
          expect(await store.size()).toBe(length);
        });

        it(`writeZeroes (unmap ${unmap}) past the end grows like a write`, async () => {
          const { initial, store } = await setup();
          await store.writeZeroes(length - 10, 5 * MiB, unmap);
          expect(await store.size()).toBe(length - 10 + 5 * MiB);
          const expected = initial.slice();
          expected.fill(0, length - 10);
          expectBytes(await readBytes(store, 0, length), expected);
          expectBytes(await readBytes(store, length, 1 * MiB), zeros(1 * MiB));
          await store.writeZeroes(20 * MiB, 0, unmap);
          expect(await store.size()).toBe(length - 10 + 5 * MiB);
        });
      }

      it("writes after a discard land normally", async () => {
        const { store } = await setup();
        await store.discard(0, length);
        const data = pattern(1000, 19);
        await store.write(1 * MiB - 500, data);
        expectBytes(await readBytes(store, 1 * MiB - 500, 1000), data);
        expectBytes(await readBytes(store, 0, 1 * MiB - 500), zeros(1 * MiB - 500));
      });
    });

    it("flushes and keeps the data readable", async () => {
      const store = await make();
      const data = pattern(9999, 20);
      await store.write(123, data);
      await store.flush();
      expectBytes(await readBytes(store, 123, 9999), data);
    });

    it("refuses every call after close, and a second close is harmless", async () => {
      const store = await make({ bytes: pattern(100, 21) });
      await store.close();
      await store.close();
      await expectQcow2Error(store.read(0, new Uint8Array(10)), "INTERNAL");
      await expectQcow2Error(store.write(0, new Uint8Array(10)), "INTERNAL");
      await expectQcow2Error(store.size(), "INTERNAL");
      await expectQcow2Error(store.flush(), "INTERNAL");
    });

    it("read-only: refuses changes with READ_ONLY and keeps the contents", async () => {
      const initial = pattern(70_000, 22);
      const store = await make({ bytes: initial, readOnly: true });
      expect(store.readOnly).toBe(true);
      await expectQcow2Error(store.write(0, pattern(10, 23)), "READ_ONLY");
      await expectQcow2Error(store.write(80_000, pattern(10, 23)), "READ_ONLY");
      await expectQcow2Error(store.resize(10), "READ_ONLY");
      await expectQcow2Error(store.resize(1 * MiB, "full"), "READ_ONLY");
      await expectQcow2Error(store.discard(0, 70_000), "READ_ONLY");
      await expectQcow2Error(store.writeZeroes(0, 100, true), "READ_ONLY");
      await store.flush();
      expect(await store.size()).toBe(70_000);
      expectBytes(await readBytes(store, 0, 70_000), initial);
    });

    describe("bad positions are refused without touching the store", () => {
      const bad: [string, number][] = [
        ["negative", -1],
        ["fractional", 1.5],
        ["2^53", 2 ** 53],
        ["above 2^53", 2 ** 53 + 2],
        ["NaN", Number.NaN],
        ["Infinity", Number.POSITIVE_INFINITY],
        ["a bigint", 4n as unknown as number],
        ["a string", "4" as unknown as number],
      ];
      for (const [label, value] of bad) {
        it(`offset ${label}`, async () => {
          const initial = pattern(4096, 24);
          const store = await make({ bytes: initial });
          await expectQcow2Error(store.write(value, pattern(16, 25)), "INTERNAL");
          await expectQcow2Error(store.read(value, new Uint8Array(16)), "INTERNAL");
          await expectQcow2Error(store.discard(value, 16), "INTERNAL");
          await expectQcow2Error(store.writeZeroes(value, 16), "INTERNAL");
          await expectQcow2Error(store.discard(0, value), "INTERNAL");
          await expectQcow2Error(store.writeZeroes(0, value, true), "INTERNAL");
          await expectQcow2Error(store.resize(value), "INTERNAL");
          expect(await store.size()).toBe(4096);
          expectBytes(await readBytes(store, 0, 4096), initial);
        });
      }

      it("a range whose end passes 2^53", async () => {
        const store = await make({ bytes: pattern(100, 26) });
        await expectQcow2Error(store.write(2 ** 53 - 2, pattern(4, 27)), "INTERNAL");
        await expectQcow2Error(store.read(2 ** 53 - 2, new Uint8Array(4)), "INTERNAL");
        await expectQcow2Error(store.writeZeroes(2 ** 53 - 2, 4), "INTERNAL");
        expect(await store.size()).toBe(100);
        expectBytes(await readBytes(store, 0, 100), pattern(100, 26));
      });
    });
  });
}
