/**
 * Cancelling long operations through their AbortSignal (convert, check, commit, rebase), their progress
 * callbacks, and who closes a store: qemu-img check judges the images an abort leaves behind.
 */
import { writeFileSync } from "node:fs";
import { MemoryStore } from "@qcowkit/datafile";
import { isQcow2Error } from "@qcowkit/spec";
import { afterAll, describe, expect, it } from "vitest";
import { checkImage, commitLayers, convertImages, copyBackingDifferences, createQcow2, Qcow2Image, type BlockImage } from "../src/index";
import { createImage, openImage } from "../src/node";
import { qemu, qemuStatus, randomData, tempDir } from "./helpers";

const MiB = 1024 * 1024;
const dir = tempDir("qcowkit-abort-");
afterAll(() => dir.cleanup());

/** The rejection of `p` (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("the operation was not cancelled");
}

function expectAborted(e: unknown, message: string): void {
  expect(isQcow2Error(e)).toBe(true);
  expect(e).toMatchObject({ code: "ABORTED", errno: "ECANCELED", message });
}

/** qemu-img check finds nothing wrong: no corruption, no leak (exit status 0). */
function expectClean(path: string): void {
  const r = qemuStatus("qemu-img", ["check", path]);
  expect(r.stdout + r.stderr).toContain("No errors were found on the image.");
  expect(r.status).toBe(0);
}

async function readAll(image: BlockImage, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  await image.read(offset, out);
  return out;
}

describe("convert cancelled through its AbortSignal", () => {
  const size = 16 * MiB;
  const data = randomData(size, 7);
  const source = dir.path("source.raw");
  writeFileSync(source, data);

  for (const [name, options] of [
    ["store to store, 2 MiB batches", { batchBytes: 2 * MiB }],
    ["through memory (compressed target)", { compressed: true }],
  ] as const) {
    it(`${name}: rejects with ABORTED and leaves a clean target holding a prefix of the copy`, async () => {
      const target = dir.path(`${name.replace(/\W+/g, "-")}.qcow2`);
      await createImage(target, { size });
      const input = await openImage(source, { format: "raw", readOnly: true });
      const output = await openImage(target);
      const controller = new AbortController();
      let doneAtAbort = 0;
      let calls = 0;
      const error = await rejection(
        convertImages([input], output, {
          ...options,
          targetZeroInit: true,
          signal: controller.signal,
          onProgress: (done, total) => {
            calls++;
            expect(total).toBe(size);
            if (done >= 4 * MiB && !controller.signal.aborted) {
              doneAtAbort = done;
              controller.abort(new Error("stop the copy"));
            }
          },
        }),
      );
      expectAborted(error, "stop the copy");
      expect(doneAtAbort).toBeGreaterThanOrEqual(4 * MiB);
      expect(calls).toBeGreaterThan(1);
      // The images stay open after an abort: closing them is the caller's part.
      expect((await readAll(output, 0, doneAtAbort)).every((b, i) => b === data[i])).toBe(true);
      await output.close();
      await input.close();
      expectClean(target);
      // What was copied is the source's; the end was never written (the copy stopped).
      const reopened = await openImage(target, { readOnly: true });
      expect(Buffer.from(await readAll(reopened, 0, doneAtAbort)).equals(Buffer.from(data.subarray(0, doneAtAbort)))).toBe(true);
      expect((await readAll(reopened, size - MiB, MiB)).every((b) => b === 0)).toBe(true);
      await reopened.close();
    });
  }

  it("an already aborted signal writes nothing", async () => {
    const target = dir.path("never.qcow2");
    await createImage(target, { size });
    const input = await openImage(source, { format: "raw", readOnly: true });
    const output = await openImage(target);
    const error = await rejection(convertImages([input], output, { targetZeroInit: true, signal: AbortSignal.abort() }));
    expectAborted(error, "This operation was aborted");
    await output.close();
    await input.close();
    expectClean(target);
    const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", target])) as { data: boolean }[];
    expect(map.some((extent) => extent.data)).toBe(false);
  });

  it("reports bytes copied of the bytes to copy, ending at the total, when not cancelled", async () => {
    const target = dir.path("whole.qcow2");
    await createImage(target, { size });
    const input = await openImage(source, { format: "raw", readOnly: true });
    const output = await openImage(target);
    const seen: [number, number][] = [];
    await convertImages([input], output, { targetZeroInit: true, onProgress: (done, total) => seen.push([done, total]) });
    await output.close();
    await input.close();
    expect(seen.length).toBeGreaterThan(1);
    expect(seen.at(-1)).toEqual([size, size]);
    expect(seen.every(([done], i) => i === 0 || done > seen[i - 1]![0])).toBe(true);
    expect(qemu("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", source, target])).toBe("Images are identical.\n");
  });
});

describe("check, commit and rebase cancelled", () => {
  it("checkImage: one step per L1 entry, and an abort rejects instead of ending up in the report", async () => {
    const path = dir.path("check.qcow2");
    // 4 KiB clusters: one L1 entry maps 2 MiB, so 32 MiB is 16 entries.
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "32M"]);
    qemu("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 2 10M 3M", "-c", "write -P 3 30M 1M", path]);
    const image = (await openImage(path, { readOnly: true, checkMode: true })) as Qcow2Image;
    try {
      const steps: [number, number][] = [];
      const report = await checkImage(image, { onProgress: (done, total) => steps.push([done, total]) });
      expect(report.corruptions + report.leaks + report.checkErrors).toBe(0);
      expect(steps).toEqual(Array.from({ length: 16 }, (_, i) => [i + 1, 16]));

      const controller = new AbortController();
      const error = await rejection(
        checkImage(image, { signal: controller.signal, onProgress: (done) => done === 4 && controller.abort(new Error("enough")) }),
      );
      expectAborted(error, "enough");
    } finally {
      await image.close();
    }
    expectClean(path);
  });

  it("commitLayers: stops between chunks; the base stays clean", async () => {
    const base = dir.path("commit-base.qcow2");
    const top = dir.path("commit-top.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "16M"]);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    qemu("qemu-io", ["-c", "write -P 9 0 16M", top]);
    const layer = await openImage(top, { readOnly: true, backing: null });
    const target = await openImage(base);
    const controller = new AbortController();
    let last = 0;
    const error = await rejection(
      commitLayers([layer], target, {
        signal: controller.signal,
        onProgress: (done, total) => {
          expect(total).toBe(16 * MiB);
          last = done;
          if (done >= 4 * MiB) controller.abort(new Error("commit stopped"));
        },
      }),
    );
    expectAborted(error, "commit stopped");
    expect(last).toBe(4 * MiB);
    expect((await readAll(target, 0, 4 * MiB)).every((b) => b === 9)).toBe(true);
    expect((await readAll(target, 8 * MiB, MiB)).every((b) => b === 0)).toBe(true);
    await target.close();
    await layer.close();
    expectClean(base);
  });

  it("copyBackingDifferences (rebase): stops between compared pieces; the image stays clean", async () => {
    const old = dir.path("rebase-old.qcow2");
    const fresh = dir.path("rebase-new.qcow2");
    const path = dir.path("rebase-top.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", old, "16M"]);
    qemu("qemu-io", ["-c", "write -P 5 0 16M", old]);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", fresh, "16M"]);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", old, "-F", "qcow2", path]);
    const image = await openImage(path);
    const oldBacking = await openImage(old, { readOnly: true });
    const newBacking = await openImage(fresh, { readOnly: true });
    const controller = new AbortController();
    const progress: [number, number][] = [];
    const error = await rejection(
      copyBackingDifferences(image, oldBacking, newBacking, {
        signal: controller.signal,
        onProgress: (done, total) => {
          progress.push([done, total]);
          if (done >= 6 * MiB) controller.abort(new Error("rebase stopped"));
        },
      }),
    );
    expectAborted(error, "rebase stopped");
    expect(progress).toEqual([[2 * MiB, 16 * MiB], [4 * MiB, 16 * MiB], [6 * MiB, 16 * MiB]]);
    await image.close();
    await oldBacking.close();
    await newBacking.close();
    expectClean(path);
  });
});

describe("stores belong to whoever opened them", () => {
  it("createQcow2 leaves the caller's stores open; Qcow2Image.open takes its store over", async () => {
    const meta = new MemoryStore({ name: "made.qcow2" });
    const data = new MemoryStore({ name: "made.raw" });
    await createQcow2(meta, { size: MiB, dataFile: "made.raw" }, { dataStore: data });
    const magic = new Uint8Array(4);
    await meta.read(0, magic);
    expect([...magic]).toEqual([0x51, 0x46, 0x49, 0xfb]);
    expect(await data.size()).toBe(MiB);
    const image = await Qcow2Image.open(meta, { dataFile: data });
    await image.write(0, new Uint8Array(512).fill(4));
    await image.close();
    // The image closed both stores it was given.
    for (const store of [meta, data]) {
      const error = await rejection(store.read(0, new Uint8Array(1)));
      expect((error as Error).message).toContain("store is closed");
    }
  });

  it("createImage closes its files: the new image opens read-write at once, and closes cleanly", async () => {
    const path = dir.path("created.qcow2");
    await createImage(path, { size: MiB, dataFile: dir.path("created.raw") });
    const image = await openImage(path);
    await image.write(0, new Uint8Array(512).fill(1));
    await image.close();
    expectClean(path);
  });
});
