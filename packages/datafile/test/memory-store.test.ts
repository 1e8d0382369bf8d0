import { describe, expect, it } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import { MemoryStore, isAllZero } from "../src/index";
import { seededRandom } from "../src/testing";
import { ExtentSet } from "../src/extent-set";
import { expectBytes, pattern, readBytes } from "./contract";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

describe("MemoryStore memory use", () => {
  it("a 4 TiB store with a few writes holds only the touched chunks", async () => {
    const store = new MemoryStore({ size: 4 * TiB });
    await store.write(0, pattern(100, 1));
    await store.write(3 * TiB + 65_530, pattern(20, 2)); // straddles two chunks
    expect(store.chunkCount).toBe(3);
    expect(await store.allocatedSize()).toBe(3 * 64 * KiB);
    expectBytes(await readBytes(store, 3 * TiB + 65_530, 20), pattern(20, 2));
  });

  it("writing zeros into unwritten chunks allocates nothing", async () => {
    const store = new MemoryStore();
    await store.write(10 * MiB, new Uint8Array(3 * MiB));
    expect(store.chunkCount).toBe(0);
    expect(await store.size()).toBe(13 * MiB);
  });

  it("initial bytes are stored sparsely and copied", async () => {
    const bytes = new Uint8Array(1 * MiB);
    bytes.set(pattern(10, 3), 512 * KiB);
    const store = new MemoryStore({ bytes });
    bytes.fill(1);
    expect(store.chunkCount).toBe(1);
    expectBytes(await readBytes(store, 512 * KiB, 10), pattern(10, 3));
  });

  it("discard with unmap frees whole chunks, writeZeroes without unmap keeps them", async () => {
    const store = new MemoryStore({ bytes: pattern(1 * MiB, 4) });
    expect(store.chunkCount).toBe(16);
    await store.writeZeroes(0, 256 * KiB, false);
    expect(store.chunkCount).toBe(16);
    await store.writeZeroes(0, 256 * KiB + 100, true);
    expect(store.chunkCount).toBe(12);
    await store.discard(512 * KiB - 1, 256 * KiB + 2);
    expect(store.chunkCount).toBe(8); // 4 whole chunks inside are dropped; the two partial ones stay
    expectBytes(await readBytes(store, 0, 256 * KiB + 100), new Uint8Array(256 * KiB + 100));
  });

  it("maxAllocatedBytes turns into NO_SPACE instead of unbounded memory", async () => {
    const store = new MemoryStore({ maxAllocatedBytes: 4 * 64 * KiB });
    await store.write(0, pattern(4 * 64 * KiB, 5));
    const error = await store.write(10 * MiB, pattern(10, 6)).catch((e: unknown) => e);
    expect(isQcow2Error(error) && error.code).toBe("NO_SPACE");
    expect(isQcow2Error(error) && error.errno).toBe("ENOSPC");
    const resizeError = await store.resize(100 * GiB, "full").catch((e: unknown) => e);
    expect(isQcow2Error(resizeError) && resizeError.code).toBe("NO_SPACE");
  });

  it("refuses a chunk size that is not a power of two in range", () => {
    for (const chunkSize of [0, 100, 511, 3000, 1 << 25, 1.5]) {
      expect(() => new MemoryStore({ chunkSize })).toThrow(/chunk size/);
    }
    expect(new MemoryStore({ chunkSize: 512 }).chunkSize).toBe(512);
  });
});

describe("MemoryStore over a copy-on-write base", () => {
  it("never changes the base, and copies only the chunks it writes", async () => {
    const baseBytes = pattern(1 * MiB, 7);
    const base = new MemoryStore({ bytes: baseBytes, readOnly: true });
    const overlay = new MemoryStore({ base, size: 1 * MiB });
    await overlay.write(100_000, pattern(10, 8));
    await overlay.discard(300 * KiB, 200 * KiB);
    await overlay.writeZeroes(0, 10);
    await overlay.resize(900 * KiB);
    expect(overlay.chunkCount).toBe(1); // only the chunk written with data; zeroing is remembered as extents
    expectBytes(await readBytes(base, 0, 1 * MiB), baseBytes);
    const expected = baseBytes.slice(0, 900 * KiB);
    expected.set(pattern(10, 8), 100_000);
    expected.fill(0, 300 * KiB, 500 * KiB);
    expected.fill(0, 0, 10);
    expectBytes(await readBytes(overlay, 0, 900 * KiB), expected);
  });

  it("a whole-chunk zero write over the base is remembered without allocating", async () => {
    const base = new MemoryStore({ bytes: pattern(256 * KiB, 9) });
    const overlay = new MemoryStore({ base, size: 256 * KiB });
    await overlay.write(64 * KiB, new Uint8Array(128 * KiB));
    expect(overlay.chunkCount).toBe(0);
    expectBytes(await readBytes(overlay, 64 * KiB, 128 * KiB), new Uint8Array(128 * KiB));
    expectBytes(await readBytes(overlay, 0, 64 * KiB), pattern(256 * KiB, 9).subarray(0, 64 * KiB));
  });

  it("base bytes beyond a shrink stay hidden after growing again", async () => {
    const base = new MemoryStore({ bytes: pattern(256 * KiB, 10) });
    const overlay = new MemoryStore({ base, size: 256 * KiB });
    await overlay.resize(1000);
    await overlay.resize(256 * KiB);
    await overlay.write(200 * KiB, pattern(5, 11)); // materialises a chunk past the shrink point
    const expected = new Uint8Array(256 * KiB);
    expected.set(pattern(256 * KiB, 10).subarray(0, 1000));
    expected.set(pattern(5, 11), 200 * KiB);
    expectBytes(await readBytes(overlay, 0, 256 * KiB), expected);
  });

  it("shows a base smaller than the given size as zero-padded", async () => {
    const base = new MemoryStore({ bytes: pattern(1000, 12) });
    const overlay = new MemoryStore({ base, size: 5000 });
    const bytes = await readBytes(overlay, 0, 5000);
    expectBytes(bytes.subarray(0, 1000), pattern(1000, 12));
    expect(isAllZero(bytes.subarray(1000))).toBe(true);
  });
});

/**
 * Random operations on a store compared with a flat array model, for plain stores, tiny chunks
 * and copy-on-write overlays. Seeded; the failing seed and step are in the message.
 */
describe("MemoryStore against a flat model", () => {
  const span = 300 * KiB;
  const variants: [string, () => Promise<{ store: MemoryStore; model: Uint8Array; size: number }>][] = [
    ["plain", async () => ({ store: new MemoryStore(), model: new Uint8Array(span * 2), size: 0 })],
    [
      "512-byte chunks",
      async () => ({ store: new MemoryStore({ chunkSize: 512 }), model: new Uint8Array(span * 2), size: 0 }),
    ],
    [
      "copy-on-write",
      async () => {
        const initial = pattern(span, 13);
        const base = new MemoryStore({ bytes: initial, chunkSize: 4096 });
        const model = new Uint8Array(span * 2);
        model.set(initial);
        return { store: new MemoryStore({ base, size: span, chunkSize: 8192 }), model, size: span };
      },
    ],
  ];
  for (const [label, setup] of variants) {
    for (const seed of [1, 2, 3]) {
      it(`${label}, seed ${seed}`, async () => {
        const random = seededRandom(seed);
        const pick = (limit: number) => Math.floor(random() * limit);
        const initial = await setup();
        const { store, model } = initial;
        let size = initial.size;
        for (let step = 0; step < 400; step++) {
          const offset = pick(span);
          const length = pick(random() < 0.8 ? 5000 : 100_000);
          const end = Math.min(offset + length, span * 2);
          const kind = pick(6);
          const where = `seed ${seed} step ${step} kind ${kind} offset ${offset} length ${length}`;
          if (kind === 0 || kind === 1) {
            const data = random() < 0.2 ? new Uint8Array(end - offset) : pattern(end - offset, seed * 1000 + step);
            await store.write(offset, data);
            model.set(data, offset);
            if (data.byteLength > 0) size = Math.max(size, end);
          } else if (kind === 2) {
            await store.discard(offset, end - offset);
            model.fill(0, offset, Math.min(end, size));
          } else if (kind === 3) {
            const unmap = random() < 0.5;
            await store.writeZeroes(offset, end - offset, unmap);
            model.fill(0, offset, end);
            if (end > offset) size = Math.max(size, end);
          } else if (kind === 4) {
            const newSize = pick(span);
            const mode = newSize >= size && random() < 0.3 ? "full" : "off";
            await store.resize(newSize, mode);
            if (newSize < size) model.fill(0, newSize);
            size = newSize;
          } else {
            expectBytes(await readBytes(store, offset, end - offset), model.subarray(offset, end));
          }
          expect(await store.size(), where).toBe(size);
        }
        expectBytes(await readBytes(store, 0, span * 2), model);
      });
    }
  }
});

describe("ExtentSet", () => {
  const list = (set: ExtentSet, start = 0, end = 1000) => {
    const out: [number, number][] = [];
    set.forEachOverlap(start, end, (a, b) => out.push([a, b]));
    return out;
  };

  it("merges overlapping and touching extents and keeps order", () => {
    const set = new ExtentSet();
    set.add(10, 20);
    set.add(40, 50);
    set.add(30, 35);
    expect(list(set)).toEqual([[10, 20], [30, 35], [40, 50]]);
    set.add(20, 30); // touches both neighbours
    expect(list(set)).toEqual([[10, 35], [40, 50]]);
    set.add(5, 45);
    expect(list(set)).toEqual([[5, 50]]);
    set.add(60, 60); // empty
    expect(set.extentCount).toBe(1);
  });

  it("clips overlaps to the query range", () => {
    const set = new ExtentSet();
    set.add(10, 20);
    set.add(30, 40);
    expect(list(set, 15, 35)).toEqual([[15, 20], [30, 35]]);
    expect(list(set, 20, 30)).toEqual([]);
    expect(list(set, 0, 10)).toEqual([]);
  });

  it("truncates at a limit", () => {
    const set = new ExtentSet();
    set.add(10, 20);
    set.add(30, 40);
    set.truncate(35);
    expect(list(set)).toEqual([[10, 20], [30, 35]]);
    set.truncate(30);
    expect(list(set)).toEqual([[10, 20]]);
    set.truncate(5);
    expect(set.extentCount).toBe(0);
  });
});

describe("isAllZero", () => {
  it("finds a single non-zero byte at any position and alignment", () => {
    const buffer = new Uint8Array(300);
    for (const start of [0, 1, 3, 4]) {
      const view = buffer.subarray(start, start + 200);
      expect(isAllZero(view)).toBe(true);
      for (const position of [0, 63, 64, 150, 199]) {
        view[position] = 9;
        expect(isAllZero(view)).toBe(false);
        view[position] = 0;
      }
    }
    buffer[250] = 1; // outside the view: ignored
    expect(isAllZero(buffer.subarray(0, 200))).toBe(true);
  });
});
