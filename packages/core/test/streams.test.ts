/**
 * Core stream API: images to Web Streams (raw, qcow2 laid out for one forward write) and back, checked with
 * QEMU: qemu-img check on every qcow2 stream written to a file, qemu-img compare against the source.
 */
import { writeFileSync, readFileSync, statSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { encodeImageHeader } from "@qcowkit/spec";
import { newImageHeader, validateCreateOptions } from "../src/create";
import { createImage, imageToStream, openImage, streamToImage, type BlockImage, type ImageToStreamOptions } from "../src/node";
import { collect } from "./browser/stream-consumer";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

const t = tempDir("qcowkit-streams-");
afterAll(() => t.cleanup());
let n = 0;
const name = (ext: string) => t.path(`f${n++}.${ext}`);

function streamOf(bytes: Uint8Array, piece = 65536): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.byteLength) return c.close();
      c.enqueue(bytes.slice(at, at + piece));
      at += piece;
    },
  });
}

/** A qcow2 source made by qemu-io: random data, a zero run, a compressible run, holes. */
function makeSource(size: string, seed: number, opts = "cluster_size=65536"): string {
  const file = name("qcow2");
  const bytes = Number.parseInt(size, 10) * 1024 * 1024;
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", opts, file, size]);
  const r = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < 12; i++) {
    const len = 512 * (1 + Math.floor(r() * 300));
    const off = Math.min(bytes - len, Math.floor(r() * (bytes / 524288 - 1)) * 524288 + Math.floor(r() * 64) * 512);
    cmds.push(`-c`, `write -P ${1 + Math.floor(r() * 250)} ${off} ${len}`);
  }
  cmds.push("-c", `write -z ${bytes / 2} 131072`);
  qemu("qemu-io", ["-f", "qcow2", ...cmds, file]);
  return file;
}

async function streamToFile(src: string, opts: ImageToStreamOptions, fmt?: string): Promise<string> {
  const img = await openImage(src, { readOnly: true, ...(fmt ? { format: fmt } : {}) });
  try {
    const out = name(opts.format === "raw" ? "raw" : "qcow2");
    writeFileSync(out, await collect(imageToStream(img, opts)));
    return out;
  } finally {
    await img.close();
  }
}

function expectCheckClean(file: string): void {
  const r = qemuStatus("qemu-img", ["check", "--output=json", file]);
  expect(r.stderr).toBe("");
  expect(r.status).toBe(0);
  const j = JSON.parse(r.stdout);
  expect(j.corruptions ?? 0).toBe(0);
  expect(j.leaks ?? 0).toBe(0);
}

function expectSame(a: string, b: string, fa = "qcow2", fb = "qcow2"): void {
  const r = qemuStatus("qemu-img", ["compare", "-f", fa, "-F", fb, a, b]);
  expect(r.stdout + r.stderr).toContain("Images are identical.");
  expect(r.status).toBe(0);
}

/** Stream `bytes` into a new image of `format` and return its file name. */
async function intoNewImage(bytes: Uint8Array, size: number, format: "qcow2" | "raw" = "qcow2"): Promise<string> {
  const out = name(format);
  await createImage(out, { format, size });
  const target = await openImage(out, { format });
  try {
    await streamToImage(streamOf(bytes, 10_000), target, { targetZeroInit: true });
  } finally {
    await target.close();
  }
  return out;
}

/**
 * `raw` as a qcow2 laid out as QEMU's scripts/qcow2-to-stdout.py lays out its streams: header, refcount
 * table, refcount blocks (16-bit, every cluster counted once), L1 table, every L2 table, then the data clusters
 * in guest order; clusters of zeros are left out.
 */
function metadataFirstQcow2(raw: Uint8Array, cs: number): Uint8Array {
  const size = Math.ceil(raw.byteLength / 512) * 512;
  const perL2 = cs / 8;
  const guestClusters = Math.ceil(size / cs);
  const data: number[] = [];
  for (let g = 0; g < guestClusters; g++) if (raw.subarray(g * cs, (g + 1) * cs).some((b) => b !== 0)) data.push(g);
  const tables = [...new Set(data.map((g) => Math.floor(g / perL2)))];
  const l1Entries = Math.ceil(guestClusters / perL2);
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);
  const perBlock = (cs * 8) / 16;
  let rb = 1;
  let rt = 1;
  const total = () => 1 + rt + rb + l1Clusters + tables.length + data.length;
  while (rb < Math.ceil(total() / perBlock) || rt < Math.ceil((rb * 8) / cs)) {
    rb = Math.max(rb, Math.ceil(total() / perBlock));
    rt = Math.max(rt, Math.ceil((rb * 8) / cs));
  }
  const rtOff = cs;
  const rbOff = rtOff + rt * cs;
  const l1Off = rbOff + rb * cs;
  const l2Off = l1Off + l1Clusters * cs;
  const dataOff = l2Off + tables.length * cs;
  const out = new Uint8Array(total() * cs);
  const opts = validateCreateOptions({ size, clusterSize: cs });
  out.set(encodeImageHeader(newImageHeader(opts, { size, l1Size: l1Entries, l1TableOffset: l1Off, refcountTableOffset: rtOff, refcountTableClusters: rt })));
  const v = new DataView(out.buffer);
  const copied = 1n << 63n;
  for (let i = 0; i < rb; i++) v.setBigUint64(rtOff + 8 * i, BigInt(rbOff + i * cs));
  for (let c = 0; c < total(); c++) v.setUint16(rbOff + 2 * c, 1);
  tables.forEach((t, k) => v.setBigUint64(l1Off + 8 * t, BigInt(l2Off + k * cs) | copied));
  data.forEach((g, k) => {
    const table = tables.indexOf(Math.floor(g / perL2));
    v.setBigUint64(l2Off + table * cs + 8 * (g % perL2), BigInt(dataOff + k * cs) | copied);
    out.set(raw.subarray(g * cs, (g + 1) * cs), dataOff + k * cs);
  });
  return out;
}

describe("imageToStream: qcow2 laid out for one forward write", () => {
  const cases: Array<[string, ImageToStreamOptions]> = [
    ["512 B clusters", { clusterSize: 512 }],
    ["4 KiB clusters, refcount_bits=1", { clusterSize: 4096, refcountBits: 1 }],
    ["64 KiB clusters (defaults)", {}],
    ["2 MiB clusters", { clusterSize: 2 * 1024 * 1024 }],
    ["extended L2", { extendedL2: true, clusterSize: 32768 }],
    ["compat=0.10", { version: 2 }],
    ["zlib compressed", { compress: true }],
    ["zstd compressed, 4 KiB clusters, refcount_bits=2", { compress: true, compressionType: "zstd", clusterSize: 4096, refcountBits: 2 }],
    ["zlib compressed, 512 B clusters", { compress: true, clusterSize: 512 }],
    ["small buffer (emitting pass reads again)", { compress: true, bufferBytes: 100_000 }],
  ];
  for (const [label, opts] of cases) {
    it(`${label}: check clean, same content, and back through streamToImage`, async () => {
      const src = makeSource("4M", label.length);
      const out = await streamToFile(src, opts);
      expectCheckClean(out);
      expectSame(src, out);
      const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", out]));
      expect(info["cluster-size"]).toBe(opts.clusterSize ?? 65536);
      if (opts.compressionType) expect(info["format-specific"].data["compression-type"]).toBe(opts.compressionType);
      if (opts.extendedL2) expect(info["format-specific"].data["extended-l2"]).toBe(true);
      const back = await intoNewImage(readFileSync(out), 4 * 1024 * 1024);
      expectSame(src, back);
      expectCheckClean(back);
    });
  }

  it("is no larger than qemu-img convert's file plus one cluster per GiB (and at most a few clusters more)", async () => {
    const src = makeSource("8M", 5);
    const out = await streamToFile(src, {});
    const conv = name("qcow2");
    qemu("qemu-img", ["convert", "-O", "qcow2", src, conv]);
    expect(statSync(out).size).toBeLessThanOrEqual(statSync(conv).size + 65536);
  });

  it("leaves all-zero data clusters out (a raw file full of written zeros)", async () => {
    const raw = name("raw");
    const data = new Uint8Array(4 * 1024 * 1024);
    data.fill(7, 3 * 65536, 3 * 65536 + 100);
    writeFileSync(raw, data);
    const out = await streamToFile(raw, {}, "raw");
    expectCheckClean(out);
    expectSame(raw, out, "raw");
    const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", out]));
    const dataBytes = map.filter((e: { data: boolean }) => e.data).reduce((s: number, e: { length: number }) => s + e.length, 0);
    expect(dataBytes).toBe(65536);
  });

  it("a 1 TiB sparse image with a few MiB used gives a small stream", async () => {
    const src = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", src, "1T"]);
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 9 0 1M", "-c", "write -P 10 512G 2M", "-c", "write -P 11 1023G 1M", src]);
    const out = await streamToFile(src, {});
    // 4 MiB of data + header, L1 (16 KiB), refcount structures and 3 L2 tables.
    expect(statSync(out).size).toBeLessThan(5 * 1024 * 1024);
    expectCheckClean(out);
    expectSame(src, out);
  });

  it("flattens a backing chain", async () => {
    const base = makeSource("4M", 11);
    const top = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 77 65536 200000", "-c", "write -z 3M 65536", top]);
    const out = await streamToFile(top, {});
    const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", out]));
    expect(info["backing-filename"]).toBeUndefined();
    expectCheckClean(out);
    expectSame(top, out);
  });

  it("incremental: only changed clusters, named base, reads as the new disk through it", async () => {
    const base = name("raw");
    const r = rng(3);
    const old = new Uint8Array(8 * 1024 * 1024).map(() => Math.floor(r() * 256));
    writeFileSync(base, old);
    const now = old.slice();
    now.fill(1, 65536 * 5, 65536 * 5 + 10); // one cluster changed
    now.fill(0, 65536 * 9, 65536 * 11); // two clusters zeroed
    now.fill(2, 65536 * 100, 65536 * 102); // two clusters changed
    const today = name("raw");
    writeFileSync(today, now);
    const srcImg = await openImage(today, { readOnly: true, format: "raw" });
    const baseImg = await openImage(base, { readOnly: true, format: "raw" });
    const out = name("qcow2");
    try {
      writeFileSync(out, await collect(imageToStream(srcImg, { base: baseImg, backingFile: base, backingFormat: "raw" })));
    } finally {
      await srcImg.close();
      await baseImg.close();
    }
    expectCheckClean(out);
    const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", out]));
    const local = map.filter((e: { depth: number }) => e.depth === 0);
    const dataBytes = local.filter((e: { data: boolean }) => e.data).reduce((s: number, e: { length: number }) => s + e.length, 0);
    const zeroBytes = local.filter((e: { data: boolean; zero: boolean }) => !e.data && e.zero).reduce((s: number, e: { length: number }) => s + e.length, 0);
    expect(dataBytes).toBe(3 * 65536);
    expect(zeroBytes).toBe(2 * 65536);
    // Header, L1, refcount table and block, one L2 table, three data clusters.
    expect(statSync(out).size).toBe(8 * 65536);
    expectSame(out, today, "qcow2", "raw");
  });

  it("raw: every byte in order, byte-exact", async () => {
    const src = makeSource("3M", 9);
    const out = await streamToFile(src, { format: "raw" });
    const conv = name("raw");
    qemu("qemu-img", ["convert", "-O", "raw", src, conv]);
    expect(Buffer.compare(readFileSync(out), readFileSync(conv))).toBe(0);
    const back = await intoNewImage(readFileSync(out), 3 * 1024 * 1024, "raw");
    expect(Buffer.compare(readFileSync(back), readFileSync(conv))).toBe(0);
  });
});

describe("imageToStream: refusals", () => {
  it("checks the create options before the first read, with qemu-img's messages", async () => {
    const src = makeSource("1M", 71);
    const img = await openImage(src, { readOnly: true });
    try {
      expect(() => imageToStream(img, { clusterSize: 3000 })).toThrow("Cluster size must be a power of two between 512 and 2048k");
      expect(() => imageToStream(img, { extendedL2: true, version: 2 })).toThrow(/Extended L2 entries are only supported with compatibility level 1.1/);
      expect(() => imageToStream(img, { base: img })).toThrow("An incremental stream needs both 'base' (the image) and 'backingFile' (its name)");
      expect(() => imageToStream(img, { format: "raw", compress: true })).toThrow("Option 'compress' needs a qcow2 stream");
    } finally {
      await img.close();
    }
  });
});

describe("streamToImage", () => {
  it("converts a QEMU image whose L1 table moved behind the data (spilled to scratch)", async () => {
    const src = makeSource("4M", 21);
    qemu("qemu-img", ["resize", "-q", src, "5G"]); // the L1 table grows: QEMU moves it to the end
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 5 4G 100k", src]);
    let made = 0;
    const out = name("qcow2");
    await createImage(out, { size: 5 * 1024 ** 3 });
    const target = await openImage(out);
    let spilled = false;
    try {
      const r = await streamToImage(streamOf(readFileSync(src)), target, {
        targetZeroInit: true,
        scratch: async () => {
          made++;
          const { MemoryStore } = await import("@qcowkit/datafile");
          return new MemoryStore();
        },
      });
      spilled = r.spilled;
    } finally {
      await target.close();
    }
    expect(made).toBe(1);
    expect(spilled).toBe(true);
    expectSame(src, out);
  });

  it("a QEMU image whose metadata precedes its data (preallocation=metadata) goes in one pass, nothing spilled", async () => {
    // qemu-img lays it out header, refcount structures, L1, then each L2 table before the data clusters it
    // maps (L2 at 0x4000 and 0x205000 here): every reference points forward, as in the metadata-first
    // streams the issue names.
    const src = name("qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata,cluster_size=4096", src, "4M"]);
    qemu("qemu-io", ["-f", "qcow2", "-c", "write -P 12 0 300k", "-c", "write -P 13 3M 64k", src]);
    const out = name("qcow2");
    await createImage(out, { size: 4 * 1024 * 1024 });
    const target = await openImage(out);
    let made = 0;
    try {
      const r = await streamToImage(streamOf(readFileSync(src)), target, {
        targetZeroInit: true,
        scratch: () => {
          made++;
          throw new Error("no scratch store expected");
        },
      });
      expect(r.spilled).toBe(false);
      expect(r.bytesRead).toBe(statSync(src).size);
    } finally {
      await target.close();
    }
    expect(made).toBe(0);
    expectSame(src, out);
    expectCheckClean(out);
  });

  it("a stream in qcow2-to-stdout.py's layout (all metadata, then all data) goes in one pass, nothing spilled", async () => {
    const raw = new Uint8Array(10 * 1024 * 1024);
    const r = rng(77);
    for (let i = 0; i < 40; i++) raw.fill(1 + Math.floor(r() * 250), Math.floor(r() * 2500) * 4096, Math.floor(r() * 2500) * 4096 + 1 + Math.floor(r() * 9000));
    const file = name("qcow2");
    writeFileSync(file, metadataFirstQcow2(raw, 4096));
    expectCheckClean(file); // the layout is a valid image, holding `raw`
    const rawFile = name("raw");
    writeFileSync(rawFile, raw);
    expectSame(rawFile, file, "raw", "qcow2");
    const out = name("qcow2");
    await createImage(out, { size: raw.byteLength });
    const target = await openImage(out);
    try {
      const res = await streamToImage(streamOf(readFileSync(file)), target, { targetZeroInit: true, scratch: () => Promise.reject(new Error("no scratch store expected")) });
      expect(res.spilled).toBe(false);
      expect(res.bytesRead).toBe(statSync(file).size);
      const back = new Uint8Array(raw.byteLength);
      await target.read(0, back);
      expect(Buffer.compare(back, raw)).toBe(0);
    } finally {
      await target.close();
    }
  });

  it("reads QEMU's own compressed images (zstd) in one pass", async () => {
    const src = makeSource("4M", 31);
    const comp = name("qcow2");
    qemu("qemu-img", ["convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", src, comp]);
    const back = await intoNewImage(readFileSync(comp), 4 * 1024 * 1024);
    expectSame(src, back);
  });

  it("a truncated stream fails (mid-cluster and mid-table), naming where it ended", async () => {
    const src = makeSource("4M", 41);
    const bytes = readFileSync(await streamToFile(src, {}));
    for (const cut of [100, 65536 + 10, bytes.byteLength - 65536 - 1000, bytes.byteLength - 65536 * 3]) {
      const out = name("qcow2");
      await createImage(out, { size: 4 * 1024 * 1024 });
      const target = await openImage(out);
      await expect(streamToImage(streamOf(bytes.subarray(0, cut)), target, { format: "qcow2" })).rejects.toThrow(/Truncated stream: it ends at byte \d+/);
      await target.close();
    }
  });

  it("refuses a stream that is not qcow2 when qcow2 is asked for, and a malformed table", async () => {
    const out = name("qcow2");
    await createImage(out, { size: 1024 * 1024 });
    const target = await openImage(out);
    try {
      await expect(streamToImage(streamOf(new Uint8Array(100_000).fill(3)), target, { format: "qcow2" })).rejects.toThrow("The stream is not in qcow2 format");
      const src = makeSource("1M", 51);
      const bytes = new Uint8Array(readFileSync(await streamToFile(src, {})));
      const l1 = 65536;
      bytes[l1 + 7] = 0x55; // an L2 offset that is not cluster aligned
      await expect(streamToImage(streamOf(bytes), target)).rejects.toThrow(/Malformed qcow2 stream: L1 entry 0 has reserved bits set|L2 table offset/);
    } finally {
      await target.close();
    }
  });
});

describe("flow control", () => {
  it("produces only what the consumer pulls (backpressure) and stops on abort", async () => {
    const raw = name("raw");
    const r = rng(8);
    writeFileSync(raw, new Uint8Array(64 * 1024 * 1024).map(() => Math.floor(r() * 256)));
    const img: BlockImage = await openImage(raw, { readOnly: true, format: "raw" });
    try {
      let done = 0;
      const ac = new AbortController();
      const stream = imageToStream(img, { format: "raw", signal: ac.signal, onProgress: (d) => (done = d) });
      const reader = stream.getReader();
      await reader.read();
      await new Promise((res) => setTimeout(res, 50));
      // One chunk read, at most two more made ahead (highWaterMark 1): far from the 64 MiB.
      expect(done).toBeLessThanOrEqual(3 * 2 * 1024 * 1024);
      ac.abort(new Error("stop here"));
      let err: unknown;
      try {
        for (let i = 0; i < 10; i++) await reader.read();
      } catch (e) {
        err = e;
      }
      expect(String(err)).toContain("stop here");
      expect(done).toBeLessThan(64 * 1024 * 1024);
    } finally {
      await img.close();
    }
  });

  it("reports progress up to the whole image", async () => {
    const src = makeSource("2M", 61);
    const img = await openImage(src, { readOnly: true });
    const seen: number[] = [];
    try {
      await collect(imageToStream(img, { onProgress: (d, total) => seen.push(d / total) }));
    } finally {
      await img.close();
    }
    expect(seen.at(-1)).toBe(1);
    expect(seen.every((v, i) => i === 0 || v >= seen[i - 1]!)).toBe(true);
  });
});
