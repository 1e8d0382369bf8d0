/**
 * Flow control of the core stream API: AbortSignal cancellation and progress callbacks on both imageToStream
 * and streamToImage, consumer cancellation, and backpressure into a slow target (the input is pulled only as
 * fast as the target takes it, so memory stays bounded whatever the speeds). In-memory images, fast.
 */
import { describe, expect, it } from "vitest";
import type { BlockImage } from "../src/block-image";
import { imageToStream, streamToImage } from "../src/index";
import { collect, newImage } from "./browser/stream-consumer";
import { randomData } from "./helpers";

const MIB = 1024 * 1024;

/** A 16 MiB qcow2 image in memory with `dataMiB` MiB of random data at its start. */
async function sourceImage(dataMiB: number, seed: number): Promise<BlockImage> {
  const img = await newImage(16 * MIB);
  await img.write(0, randomData(dataMiB * MIB, seed));
  return img;
}

/** A stream of `bytes` in `piece`-sized chunks, made only when pulled; it records how far it got. */
function pulledStream(bytes: Uint8Array, piece = 65536, stallAt = Infinity) {
  const state = { produced: 0, cancelled: false as unknown };
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(c) {
        if (state.produced >= stallAt) return new Promise<void>(() => undefined); // never answers
        if (state.produced >= bytes.byteLength) return c.close();
        c.enqueue(bytes.slice(state.produced, state.produced + piece));
        state.produced += Math.min(piece, bytes.byteLength - state.produced);
      },
      cancel(reason) {
        state.cancelled = reason ?? true;
      },
    },
    { highWaterMark: 0 },
  );
  return { stream, state };
}

/** `target`, its writes delayed by `ms` and watched: `lead` is the most stream bytes produced ahead of a write's end. */
function slowTarget(target: BlockImage, ms: number, produced: () => number) {
  const seen = { lead: 0, writes: 0 };
  const watch = async <T>(end: number, op: () => Promise<T>): Promise<T> => {
    await new Promise((r) => setTimeout(r, ms));
    seen.writes++;
    seen.lead = Math.max(seen.lead, produced() - end);
    return op();
  };
  const image = new Proxy(target, {
    get(t, prop, receiver) {
      if (prop === "write") return (off: number, data: Uint8Array) => watch(off + data.byteLength, () => t.write(off, data));
      if (prop === "writeZeroes") return (off: number, len: number, o?: unknown) => watch(off + len, () => (t.writeZeroes as (...a: unknown[]) => Promise<void>)(off, len, o));
      const v = Reflect.get(t, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  return { image, seen };
}

/** Settles with `p`'s outcome, or with "hung" after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | "hung"> {
  return Promise.race([p, new Promise<"hung">((r) => setTimeout(() => r("hung"), ms))]);
}

describe("streamToImage: AbortSignal and progress", () => {
  for (const format of ["raw", "qcow2"] as const) {
    it(`${format}: aborting while the input stalls rejects at once with the reason and cancels the input`, async () => {
      const src = await sourceImage(4, 1);
      const bytes = await collect(imageToStream(src, { format }));
      const { stream, state } = pulledStream(bytes, 65536, 2 * MIB);
      const target = await newImage(16 * MIB);
      const ac = new AbortController();
      let progressed = 0;
      const run = streamToImage(stream, target, { format, signal: ac.signal, onProgress: (d) => (progressed = d) }).then(
        () => "finished",
        (e: Error) => e.message,
      );
      for (let i = 0; i < 200 && state.produced < 2 * MIB; i++) await new Promise((r) => setTimeout(r, 5));
      expect(state.produced).toBe(2 * MIB);
      ac.abort(new Error("user stopped the import"));
      expect(await within(run, 2000)).toBe("user stopped the import");
      expect(String(state.cancelled)).toContain("user stopped the import");
      expect(progressed).toBeLessThan(16 * MIB);
    });
  }

  it("leaves no abort listener behind: one per pending read, removed when the read settles", async () => {
    const src = await sourceImage(4, 7);
    const bytes = await collect(imageToStream(src));
    const { stream } = pulledStream(bytes);
    const signal = new AbortController().signal;
    let live = 0;
    let most = 0;
    let added = 0;
    const add = signal.addEventListener.bind(signal);
    const remove = signal.removeEventListener.bind(signal);
    signal.addEventListener = ((...a: Parameters<AbortSignal["addEventListener"]>) => (added++, (most = Math.max(most, ++live)), add(...a))) as AbortSignal["addEventListener"];
    signal.removeEventListener = ((...a: Parameters<AbortSignal["removeEventListener"]>) => (live--, remove(...a))) as AbortSignal["removeEventListener"];
    await streamToImage(stream, await newImage(16 * MIB), { signal });
    expect(added).toBeGreaterThan(50); // a 64 KiB chunk per read
    expect(most).toBe(1);
    expect(live).toBe(0);
  });

  it("an already aborted signal reads nothing", async () => {
    const { stream, state } = pulledStream(new Uint8Array(MIB));
    const ac = new AbortController();
    ac.abort(new Error("too late"));
    await expect(streamToImage(stream, await newImage(MIB), { signal: ac.signal })).rejects.toThrow("too late");
    expect(state.produced).toBe(0);
  });

  it("progress: qcow2 counts guest bytes up to the virtual size, raw counts bytes read", async () => {
    const src = await sourceImage(3, 2);
    const seenQ: Array<[number, number]> = [];
    await streamToImage(imageToStream(src), await newImage(16 * MIB), { onProgress: (d, t) => seenQ.push([d, t]) });
    expect(seenQ.length).toBeGreaterThan(1);
    expect(seenQ.at(-1)).toEqual([16 * MIB, 16 * MIB]);
    expect(seenQ.every(([d, t], i) => t === 16 * MIB && (i === 0 || d >= seenQ[i - 1]![0]))).toBe(true);
    const seenR: number[] = [];
    const r = await streamToImage(imageToStream(src, { format: "raw" }), await newImage(16 * MIB), { onProgress: (d, t) => (expect(t).toBe(0), seenR.push(d)) });
    expect(r.virtualSize).toBe(16 * MIB);
    expect(seenR.at(-1)).toBe(16 * MIB);
    expect(seenR.every((d, i) => i === 0 || d > seenR[i - 1]!)).toBe(true);
  });
});

describe("streamToImage: backpressure into a slow target", () => {
  for (const format of ["raw", "qcow2"] as const) {
    it(`${format}: the input is pulled only a window ahead of what the target took`, async () => {
      const src = await sourceImage(12, 3);
      const bytes = await collect(imageToStream(src, { format }));
      const { stream, state } = pulledStream(bytes);
      const { image, seen } = slowTarget(await newImage(16 * MIB), 3, () => state.produced);
      await streamToImage(stream, image, { format, targetZeroInit: true });
      expect(state.produced).toBe(bytes.byteLength);
      expect(seen.writes).toBeGreaterThan(3);
      // Raw gathers 2 MiB per write; qcow2 writes each L2 range's data as it arrives. The stream's offset
      // runs ahead of the guest offset by the metadata in front (qcow2): a few clusters.
      expect(seen.lead).toBeLessThanOrEqual(4 * MIB);
      const a = new Uint8Array(16 * MIB);
      const b = new Uint8Array(16 * MIB);
      await src.read(0, a);
      await image.read(0, b);
      expect(Buffer.compare(a, b)).toBe(0);
    });
  }
});

describe("imageToStream: AbortSignal and cancellation stop the source reads (qcow2 planning included)", () => {
  /** `img` with its reads counted. */
  function counted(img: BlockImage) {
    const c = { reads: 0 };
    const image = new Proxy(img, {
      get(t, prop, receiver) {
        if (prop === "read") return (off: number, into: Uint8Array) => (c.reads++, t.read(off, into));
        const v = Reflect.get(t, prop, receiver) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    return { image, c };
  }

  it("abort during the qcow2 plan: the next read rejects with the reason and the source is read no further", async () => {
    const { image, c } = counted(await sourceImage(12, 4));
    const ac = new AbortController();
    const stream = imageToStream(image, { compress: true, signal: ac.signal, bufferBytes: MIB, onProgress: () => c.reads > 1 && ac.abort(new Error("cancelled by the page")) });
    const reader = stream.getReader();
    let err = "";
    try {
      for (let i = 0; i < 100; i++) if ((await reader.read()).done) break;
    } catch (e) {
      err = (e as Error).message;
    }
    expect(err).toBe("cancelled by the page");
    const after = c.reads;
    expect(after).toBeLessThan(6); // 12 MiB is six 2 MiB windows: it stopped before the end
    await new Promise((r) => setTimeout(r, 20));
    expect(c.reads).toBe(after);
  });

  it("the consumer's cancel() ends the stream: no more source reads", async () => {
    const { image, c } = counted(await sourceImage(12, 5));
    const reader = imageToStream(image, { format: "raw" }).getReader();
    await reader.read();
    await reader.cancel("enough");
    const after = c.reads;
    expect(after).toBeLessThanOrEqual(3);
    expect(await reader.closed).toBeUndefined();
    await new Promise((r) => setTimeout(r, 20));
    expect(c.reads).toBe(after);
  });

  it("progress of a qcow2 stream: planning and emitting, monotonic, ending at the total", async () => {
    const src = await sourceImage(5, 6);
    const seen: Array<[number, number]> = [];
    const out = await collect(imageToStream(src, { compress: true, onProgress: (d, t) => seen.push([d, t]) }));
    expect(out.byteLength).toBeGreaterThan(5 * MIB);
    expect(seen.length).toBeGreaterThan(2);
    const total = seen[0]![1];
    expect(seen.every(([d, t], i) => t === total && d <= t && (i === 0 || d >= seen[i - 1]![0]))).toBe(true);
    expect(seen.at(-1)![0]).toBe(total);
  });
});
