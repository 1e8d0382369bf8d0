/**
 * imageToStream with a scratch store reads every byte of a seekable source at most once, also when the data is
 * larger than the planning cache (`bufferBytes`), with and without compression; memory stays bounded on a
 * 1 TiB sparse source. Every stream is checked with qemu-img check and compared with the source.
 */
import { randomFillSync } from "node:crypto";
import { closeSync, openSync, statSync, writeFileSync, writeSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, describe, expect, it } from "vitest";
import { MemoryStore } from "@qcowkit/datafile";
import { FileStore } from "@qcowkit/datafile/node";
import type { ByteStore } from "@qcowkit/spec";
import { Qcow2Image, RawImage, imageToStream, type BlockImage, type ImageToStreamOptions } from "../src/node";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

const t = tempDir("qcowkit-stream-once-");
afterAll(() => t.cleanup());
let n = 0;
const name = (ext: string) => t.path(`o${n++}.${ext}`);
const MIB = 1024 * 1024;

/** Counts how often each byte of the wrapped store is read (up to `size` bytes tracked). */
function countingStore(inner: ByteStore, size: number, onRead?: () => void): { store: ByteStore; timesRead: Uint8Array } {
  const timesRead = new Uint8Array(size);
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "read") {
        return async (offset: number, into: Uint8Array) => {
          const end = Math.min(size, offset + into.byteLength);
          for (let i = offset; i < end; i++) timesRead[i] = Math.min(255, timesRead[i]! + 1);
          onRead?.();
          return target.read(offset, into);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store, timesRead };
}

/** The most times any byte was read, and how many bytes were read at all. */
function readStats(timesRead: Uint8Array): { most: number; bytesRead: number } {
  let most = 0;
  let bytesRead = 0;
  for (const c of timesRead) {
    if (c > most) most = c;
    if (c > 0) bytesRead++;
  }
  return { most, bytesRead };
}

/** 6 MiB raw: random data, a compressible run, written zeros, a hole at the end. */
function makeRaw(seed: number): string {
  const file = name("raw");
  const bytes = new Uint8Array(6 * MIB);
  const r = rng(seed);
  for (let i = 0; i < 4 * MIB; i++) bytes[i] = Math.floor(r() * 256);
  bytes.fill(0x41, 4 * MIB, 5 * MIB - 4096);
  writeFileSync(file, bytes);
  return file;
}

async function streamOut(image: BlockImage, opts: ImageToStreamOptions): Promise<{ file: string; scratchBytes: number }> {
  let scratch: MemoryStore | undefined;
  const file = name("qcow2");
  const parts: Uint8Array[] = [];
  const reader = imageToStream(image, { ...opts, ...(opts.scratch === undefined ? {} : { scratch: () => (scratch = new MemoryStore({ name: "scratch" })) }) }).getReader();
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    parts.push(r.value);
  }
  writeFileSync(file, Buffer.concat(parts));
  return { file, scratchBytes: scratch ? await scratch.size() : 0 };
}

function expectCheckClean(file: string): void {
  const r = qemuStatus("qemu-img", ["check", "--output=json", file]);
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
}

function expectSame(src: string, srcFmt: string, out: string): void {
  const r = qemuStatus("qemu-img", ["compare", "-f", srcFmt, "-F", "qcow2", src, out]);
  expect(r.stdout + r.stderr).toContain("Images are identical.");
}

/** The size qemu-img convert gives the same source as a file. */
function convertSize(src: string, srcFmt: string, extra: string[] = []): number {
  const out = name("qcow2");
  qemu("qemu-img", ["convert", "-f", srcFmt, "-O", "qcow2", ...extra, src, out]);
  return statSync(out).size;
}

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
function liveBytes(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const useScratch = () => new MemoryStore({ name: "unused" });

describe("imageToStream reads a seekable source once", () => {
  for (const compress of [false, true]) {
    it(`raw source larger than the planning cache${compress ? ", compressed" : ""}: no byte read twice`, async () => {
      const src = makeRaw(compress ? 2 : 1);
      const size = statSync(src).size;
      const { store, timesRead } = countingStore(await FileStore.open(src, { readOnly: true }), size);
      const image = await RawImage.open(store);
      try {
        const { file, scratchBytes } = await streamOut(image, { compress, bufferBytes: MIB, scratch: useScratch });
        const s = readStats(timesRead);
        expect(s.most).toBe(1);
        // Everything that is data was read (the hole at the end is not data on tmpfs or ext4 either way).
        expect(s.bytesRead).toBeGreaterThanOrEqual(5 * MIB - 4096);
        // The planning cache held 1 MiB: the rest of the carried payloads went through the scratch store.
        expect(scratchBytes).toBeGreaterThan(compress ? 2 * MIB : 3 * MIB);
        expectCheckClean(file);
        expectSame(src, "raw", file);
        expect(statSync(file).size).toBeLessThanOrEqual(convertSize(src, "raw", compress ? ["-c"] : []) + 65536);
      } finally {
        await image.close();
      }
    });
  }

  it("with the default 32 MiB planning cache, a 36 MiB source of random data: read once, the rest in scratch", async () => {
    const src = name("raw");
    const bytes = new Uint8Array(36 * MIB);
    randomFillSync(bytes);
    writeFileSync(src, bytes);
    const { store, timesRead } = countingStore(await FileStore.open(src, { readOnly: true }), bytes.byteLength);
    const image = await RawImage.open(store);
    try {
      const { file, scratchBytes } = await streamOut(image, { scratch: useScratch });
      expect(readStats(timesRead)).toEqual({ most: 1, bytesRead: 36 * MIB });
      expect(scratchBytes).toBe(4 * MIB);
      expectCheckClean(file);
      expectSame(src, "raw", file);
    } finally {
      await image.close();
    }
  });

  it("without a scratch store the emitting pass reads again (what the scratch store avoids)", async () => {
    const src = makeRaw(3);
    const { store, timesRead } = countingStore(await FileStore.open(src, { readOnly: true }), statSync(src).size);
    const image = await RawImage.open(store);
    try {
      const { file } = await streamOut(image, { bufferBytes: MIB });
      expect(readStats(timesRead).most).toBe(2);
      expectCheckClean(file);
      expectSame(src, "raw", file);
    } finally {
      await image.close();
    }
  });

  for (const compress of [false, true]) {
    it(`qcow2 source made by qemu-io, 4 KiB clusters${compress ? ", zstd compressed" : ""}: no byte read twice`, async () => {
      const src = name("qcow2");
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src, "16M"]);
      qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 5 0 3M", "-c", "write -P 6 5M 2M", "-c", "write -z 6M 64k", "-c", "write -P 7 15M 1M", src]);
      const size = statSync(src).size;
      const { store, timesRead } = countingStore(await FileStore.open(src, { readOnly: true }), size);
      const image = await Qcow2Image.open(store, { readOnly: true, backing: null });
      try {
        const opts: ImageToStreamOptions = { clusterSize: 4096, bufferBytes: compress ? 4096 : 512 * 1024, scratch: useScratch, ...(compress ? { compress, compressionType: "zstd" } : {}) };
        const { file, scratchBytes } = await streamOut(image, opts);
        // Opening the image reads its first sector twice (the probe, then the header): the rest once.
        expect(readStats(timesRead.subarray(4096)).most).toBe(1);
        expect(scratchBytes).toBeGreaterThan(0);
        expectCheckClean(file);
        expectSame(src, "qcow2", file);
      } finally {
        await image.close();
      }
    });
  }

  it("a 1 TiB sparse source: memory stays bounded, the scratch store holds only the carried data", async () => {
    const src = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", src, "1T"]);
    const writes = ["-c", "write -P 1 0 4M", "-c", "write -P 2 300G 4M", "-c", "write -P 3 700G 4M", "-c", "write -P 4 1023G 4M"];
    qemu("qemu-io", ["-f", "qcow2", ...writes, src]);
    // Live memory (after a full collection) sampled at every read of the source and every chunk out.
    let before = Infinity;
    let peak = 0;
    const sample = () => (peak = Math.max(peak, liveBytes() - before));
    const { store, timesRead } = countingStore(await FileStore.open(src, { readOnly: true }), statSync(src).size, sample);
    const image = await Qcow2Image.open(store, { readOnly: true, backing: null });
    try {
      before = liveBytes();
      const out = name("qcow2");
      const fd = openSync(out, "w");
      const scratchFile = name("scratch");
      let scratch: ByteStore | undefined;
      try {
        const reader = imageToStream(image, {
          bufferBytes: MIB,
          chunkBytes: MIB,
          scratch: async () => (scratch = await FileStore.open(scratchFile, { create: true, truncate: true })),
        }).getReader();
        for (;;) {
          const r = await reader.read();
          if (r.done) break;
          writeSync(fd, r.value);
          sample();
        }
      } finally {
        closeSync(fd);
        await scratch?.close();
      }
      expect(readStats(timesRead.subarray(65536)).most).toBe(1);
      // 16 MiB of data, 1 MiB of it kept in memory: the rest waited in the scratch file.
      const spilled = statSync(scratchFile).size;
      expect(spilled).toBeGreaterThanOrEqual(14 * MIB);
      expect(spilled).toBeLessThanOrEqual(15 * MIB);
      // In memory: the 1 MiB cache, a few 1 MiB windows, the 16 KiB L1 table and the plan of 4 L2 ranges.
      expect(peak).toBeLessThan(12 * MIB);
      expect(statSync(out).size).toBeLessThan(17 * MIB);
      expectCheckClean(out);
      expectSame(src, "qcow2", out);
    } finally {
      await image.close();
    }
  });
});
