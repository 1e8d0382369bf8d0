import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import { MemoryStore } from "../src/index";
import { FaultInjectingStore } from "../src/testing";
import { FileStore } from "../src/node";
import { expectBytes, pattern, readBytes } from "./contract";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to fail");
}

let directory = "";
beforeAll(async () => {
  directory = await mkdtemp(join(tmpdir(), "qcowkit-fault-"));
});
afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

describe("failAfter", () => {
  it("lets N counted operations through, then fails every counted one with IO_ERROR", async () => {
    const store = new FaultInjectingStore(new MemoryStore(), { failAfter: 3 });
    await store.write(0, pattern(10, 1)); // 1
    await store.flush(); // 2
    await store.writeZeroes(0, 2); // 3
    for (const call of [
      () => store.write(100, pattern(10, 2)),
      () => store.flush(),
      () => store.discard(0, 10),
      () => store.writeZeroes(0, 10),
      () => store.resize(5),
    ]) {
      const error = await errorOf(call());
      expect(isQcow2Error(error) && error.code).toBe("IO_ERROR");
      expect(isQcow2Error(error) && error.errno).toBe("EIO");
    }
    expect(store.operationCount).toBe(8);
    // Reads and size are not counted and still work; the failed write left nothing.
    const expected = pattern(10, 1);
    expected.fill(0, 0, 2);
    expectBytes(await readBytes(store, 0, 10), expected);
    expect(await store.size()).toBe(10);
  });

  it("a failed flush does not make the pending writes durable", async () => {
    const inner = new MemoryStore({ size: 4096 });
    const store = new FaultInjectingStore(inner, { failAfter: 1 });
    await store.write(0, pattern(4096, 3));
    await expect(store.flush()).rejects.toThrow(/injected I\/O error on operation 2 \(flush\)/);
    expectBytes(await readBytes(inner, 0, 4096), new Uint8Array(4096));
    expectBytes(await readBytes(store, 0, 4096), pattern(4096, 3));
  });
});

describe("crashAfter", () => {
  it("drops writes not followed by a flush and blocks every later call", async () => {
    const inner = new MemoryStore({ bytes: pattern(64 * KiB, 4) });
    const store = new FaultInjectingStore(inner, { crashAfter: 4 });
    await store.write(0, pattern(100, 5)); // 1
    await store.flush(); // 2
    await store.write(200, pattern(100, 6)); // 3
    await store.resize(1 * MiB); // 4: crash after this one
    expect(store.crashed).toBe(true);
    for (const call of [() => store.write(0, pattern(1, 7)), () => store.read(0, new Uint8Array(1)), () => store.size()]) {
      const error = await errorOf(call());
      expect(isQcow2Error(error) && error.code).toBe("IO_ERROR");
      expect((error as Error).message).toContain("simulated power loss");
    }
    const image = await store.durableImage();
    expect(await image.size()).toBe(64 * KiB);
    const expected = pattern(64 * KiB, 4);
    expected.set(pattern(100, 5), 0);
    expectBytes(await readBytes(image, 0, 64 * KiB), expected);
    // The inner store holds exactly the durable state too.
    expectBytes(await readBytes(inner, 0, 64 * KiB), expected);
    // Crash images are writable copies: writing them leaves the inner store alone.
    await image.write(0, pattern(10, 8));
    expectBytes(await readBytes(inner, 0, 100), pattern(100, 5));
  });

  it("crashAfter 0 fails the very first operation", async () => {
    const store = new FaultInjectingStore(new MemoryStore(), { crashAfter: 0 });
    expect(isQcow2Error(await errorOf(store.write(0, pattern(1, 9))))).toBe(true);
  });

  it("unflushed discards, write-zeroes and resizes are dropped as well", async () => {
    const initial = pattern(256 * KiB, 10);
    const store = new FaultInjectingStore(new MemoryStore({ bytes: initial }));
    await store.discard(0, 64 * KiB);
    await store.writeZeroes(100 * KiB, 10 * KiB, true);
    await store.resize(10);
    expect(await store.size()).toBe(10);
    expect(store.unflushedOperationCount).toBe(3);
    const image = await store.durableImage();
    expect(await image.size()).toBe(256 * KiB);
    expectBytes(await readBytes(image, 0, 256 * KiB), initial);
  });

  it("keeps everything flushed across several flushes", async () => {
    const store = new FaultInjectingStore(new MemoryStore());
    const expected = new Uint8Array(40 * KiB);
    for (let i = 0; i < 10; i++) {
      const data = pattern(4 * KiB, 20 + i);
      await store.write(i * 4 * KiB, data);
      expected.set(data, i * 4 * KiB);
      if (i % 3 === 2) await store.flush();
    }
    // Writes 0..8 were flushed (after i = 2, 5, 8); write 9 was not.
    expected.fill(0, 36 * KiB);
    const image = await store.durableImage();
    expect(await image.size()).toBe(36 * KiB);
    expectBytes(await readBytes(image, 0, 40 * KiB), expected);
  });
});

describe("seeded reordering", () => {
  const blocks = 40;
  const run = async (seed: number, keepProbability?: number) => {
    const store = new FaultInjectingStore(new MemoryStore({ size: blocks * 4096 }));
    for (let i = 0; i < blocks; i++) await store.write(i * 4096, pattern(4096, 100 + i));
    const image = await store.crashImage({ seed, ...(keepProbability !== undefined && { keepProbability }) });
    const kept: number[] = [];
    for (let i = 0; i < blocks; i++) {
      const bytes = await readBytes(image, i * 4096, 4096);
      if (bytes.every((b) => b === 0)) continue;
      expectBytes(bytes, pattern(4096, 100 + i)); // a kept write is whole
      kept.push(i);
    }
    return kept;
  };

  it("keeps a proper, deterministic subset of the unflushed writes", async () => {
    const kept = await run(7);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(blocks);
    expect(await run(7)).toEqual(kept);
    const others = await Promise.all([1, 2, 3, 4, 5].map((seed) => run(seed)));
    expect(others.some((other) => JSON.stringify(other) !== JSON.stringify(kept))).toBe(true);
  });

  it("keepProbability 1 keeps all, 0 keeps none", async () => {
    expect((await run(3, 1)).length).toBe(blocks);
    expect((await run(3, 0)).length).toBe(0);
  });

  it("applies kept operations in their original order", async () => {
    const store = new FaultInjectingStore(new MemoryStore({ size: 4096 }));
    for (let i = 0; i < 30; i++) await store.write(0, new Uint8Array(4096).fill(i + 1));
    const image = await store.crashImage({ seed: 11, keepProbability: 1 });
    expectBytes(await readBytes(image, 0, 4096), new Uint8Array(4096).fill(30));
  });

  it("the constructor's keepUnflushed is the default for crashImage()", async () => {
    const make = async (keep: boolean) => {
      const store = new FaultInjectingStore(new MemoryStore({ size: 4096 }), {
        ...(keep && { keepUnflushed: { seed: 1, keepProbability: 1 } }),
      });
      await store.write(0, pattern(4096, 12));
      return readBytes(await store.crashImage(), 0, 4096);
    };
    expectBytes(await make(true), pattern(4096, 12));
    expectBytes(await make(false), new Uint8Array(4096));
  });
});

describe("large sparse stores", () => {
  it("crash images of an 8 GiB sparse store copy nothing wholesale", async () => {
    const inner = new MemoryStore({ size: 8 * GiB });
    await inner.write(6 * GiB, pattern(4096, 13));
    const store = new FaultInjectingStore(inner, { crashAfter: 4 });
    await store.write(7 * GiB, pattern(1 * MiB, 14)); // 1
    await store.flush(); // 2
    await store.write(5 * GiB, pattern(1 * MiB, 15)); // 3
    await store.discard(6 * GiB, 4096); // 4
    const image = await store.crashImage({ seed: 5, keepProbability: 0 });
    expect(await image.size()).toBe(8 * GiB);
    expectBytes(await readBytes(image, 7 * GiB, 1 * MiB), pattern(1 * MiB, 14));
    expectBytes(await readBytes(image, 6 * GiB, 4096), pattern(4096, 13));
    expectBytes(await readBytes(image, 5 * GiB, 1 * MiB), new Uint8Array(1 * MiB));
    expect(await image.allocatedSize()).toBe(0);
    expect(await inner.allocatedSize()).toBeLessThanOrEqual(2 * MiB);
  });
});

describe("close", () => {
  it("without a crash hands unflushed writes to the inner store and closes it", async () => {
    const path = join(directory, "close.raw");
    const inner = await FileStore.open(path, { create: true });
    const store = new FaultInjectingStore(inner);
    await store.write(10, pattern(100, 16));
    await store.close();
    const bytes = new Uint8Array(await readFile(path));
    expect(bytes.byteLength).toBe(110);
    expectBytes(bytes.subarray(10), pattern(100, 16));
    expect(isQcow2Error(await errorOf(inner.size()))).toBe(true); // closed
  });

  it("after a crash leaves the inner store open for the crash images", async () => {
    const inner = new MemoryStore({ bytes: pattern(100, 17) });
    const store = new FaultInjectingStore(inner);
    await store.write(0, pattern(10, 18));
    const image = await store.crashImage();
    await store.close();
    expectBytes(await readBytes(image, 0, 100), pattern(100, 17));
  });
});

it("refuses bad fault options", () => {
  expect(() => new FaultInjectingStore(new MemoryStore(), { failAfter: -1 })).toThrow(/failAfter/);
  expect(() => new FaultInjectingStore(new MemoryStore(), { crashAfter: 1.5 })).toThrow(/crashAfter/);
});
