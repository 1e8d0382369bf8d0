import { describe, expect, it } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import { BlobStore } from "../src/index";
import { expectBytes, pattern, readBytes } from "./contract";

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(isQcow2Error(e) && e.code, String(e)).toBe(code);
}

describe("BlobStore", () => {
  const bytes = pattern(70_000, 5);
  const make = () => new BlobStore(new Blob([bytes]), "disk.qcow2");

  it("reads ranges, zeros past the end, and reports the size", async () => {
    const store = make();
    expect(store.readOnly).toBe(true);
    expect(store.name).toBe("disk.qcow2");
    expect(await store.size()).toBe(70_000);
    expectBytes(await readBytes(store, 0, 70_000), bytes);
    expectBytes(await readBytes(store, 12_345, 3000), bytes.subarray(12_345, 15_345));
    const tail = await readBytes(store, 69_990, 30);
    expectBytes(tail.subarray(0, 10), bytes.subarray(69_990));
    expectBytes(tail.subarray(10), new Uint8Array(20));
    expectBytes(await readBytes(store, 100_000, 8), new Uint8Array(8));
  });

  it("brings only the requested range into memory", async () => {
    const sliced: [number, number][] = [];
    const blob = new Blob([bytes]);
    const store = new BlobStore({ size: blob.size, slice: (a, b) => (sliced.push([a!, b!]), blob.slice(a, b)) }, "x");
    await readBytes(store, 5000, 100);
    expect(sliced).toEqual([[5000, 5100]]);
  });

  it("refuses changes with READ_ONLY, bad positions with INTERNAL, and calls after close", async () => {
    const store = make();
    await expectCode(store.write(0, new Uint8Array(1)), "READ_ONLY");
    await expectCode(store.resize(10), "READ_ONLY");
    await expectCode(store.discard(0, 512), "READ_ONLY");
    await expectCode(store.writeZeroes(0, 512), "READ_ONLY");
    await expectCode(store.read(-1, new Uint8Array(1)), "INTERNAL");
    await expectCode(store.read(2 ** 53, new Uint8Array(1)), "INTERNAL");
    expectBytes(await readBytes(store, 0, 16), bytes.subarray(0, 16));
    await store.close();
    await expectCode(store.read(0, new Uint8Array(1)), "INTERNAL");
  });
});
