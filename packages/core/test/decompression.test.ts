/**
 * Hostile compressed clusters: decompression bombs stay bounded (one cluster of output, no allocation for a
 * frame's declared size), and damaged zlib and zstd payloads get QEMU 7.2's verdict and bytes, cluster by
 * cluster (the payloads are planted in a QEMU-made image and read by qemu-io and by us).
 */
import { spawnSync } from "node:child_process";
import { deflateRawSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { deflateZeros, deflateZerosFitting, plantCompressed, zstdRleFrame } from "../../../scripts/attack/images.mjs";
import { getCodec } from "../src/compression";
import { inflateRawInto } from "../src/inflate";
import { decompressZstdFrames } from "../src/zstd";
import { openImage } from "../src/node";
import { qemu, rng, tempDir } from "./helpers";

const CS = 4096;

/** Compressible but not trivial data. */
function data(r: () => number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; ) {
    const run = 1 + Math.floor(r() * 24);
    const b = r() < 0.5 ? -1 : Math.floor(r() * 256);
    for (let k = 0; k < run && i < size; k++) out[i++] = b < 0 ? Math.floor(r() * 256) : b;
  }
  return out;
}

/** An image of `payloads.length` clusters of `cs` bytes, cluster i compressed as payloads[i]. */
function plantedImage(path: string, type: "zlib" | "zstd", payloads: Uint8Array[], cs = CS): void {
  const size = payloads.length * cs;
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `cluster_size=${cs},compression_type=${type}`, path, String(size)]);
  qemu("qemu-io", ["-c", `write -P 1 0 ${size}`, path]);
  plantCompressed(path, payloads.map((p, i) => [i * cs, p] as [number, Uint8Array]));
}

/** QEMU's verdict on each cluster of `path`: "error" or the bytes read (qemu-io read -v, one command per cluster). */
function qemuClusters(path: string, count: number, cs = CS): Array<Uint8Array | "error"> {
  const args = ["-r", "-f", "qcow2", ...Array.from({ length: count }, (_, i) => ["-c", `read -v ${i * cs} ${cs}`]).flat(), path];
  // qemu-io exits 1 when a command failed; each read's own line tells.
  const r = spawnSync("qemu-io", args, { encoding: "utf8", maxBuffer: 256 * 2 ** 20 });
  expect(r.error).toBeUndefined();
  const results: Array<Uint8Array | "error"> = [];
  let bytes: number[] = [];
  for (const line of r.stdout.split("\n")) {
    // "00000000:  xx xx ... (16 bytes)  ascii"
    const hex = /^[0-9a-f]{8}: ((?: [0-9a-f]{2}){1,16})/.exec(line);
    if (hex) bytes.push(...hex[1]!.trim().split(" ").map((h) => parseInt(h, 16)));
    else if (/^read failed/.test(line)) {
      results.push("error");
      bytes = [];
    } else if (/^read \d+\/\d+ bytes/.test(line)) {
      results.push(new Uint8Array(bytes));
      bytes = [];
    }
  }
  expect(results.length).toBe(count);
  return results;
}

async function ourClusters(path: string, count: number, cs = CS): Promise<Array<Uint8Array | "error">> {
  const image = await openImage(path, { readOnly: true, format: "qcow2" });
  const results: Array<Uint8Array | "error"> = [];
  try {
    for (let i = 0; i < count; i++) {
      const buf = new Uint8Array(cs);
      try {
        await image.read(i * cs, buf);
        results.push(buf);
      } catch (e) {
        expect((e as { code?: string }).code).toBe("IO_ERROR");
        results.push("error");
      }
    }
  } finally {
    await image.close();
  }
  return results;
}

/** Plant `payloads` one per cluster, read each cluster with qemu-io and with us: the same verdicts and bytes. */
async function expectQemuVerdicts(type: "zlib" | "zstd", payloads: Uint8Array[], notes: string[]): Promise<void> {
  const t = tempDir();
  try {
    const path = t.path(`${type}.qcow2`);
    plantedImage(path, type, payloads);
    const q = qemuClusters(path, payloads.length);
    // Both verdicts must occur, or the comparison says little.
    expect(q.filter((v) => v === "error").length).toBeGreaterThan(20);
    expect(q.filter((v) => v !== "error").length).toBeGreaterThan(20);
    const diffs: string[] = [];
    const ours = await ourClusters(path, payloads.length);
    for (let i = 0; i < q.length; i++) {
      const a = q[i]!;
      const b = ours[i]!;
      const same = a === "error" || b === "error" ? a === b : Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
      if (!same) diffs.push(`cluster ${i} (${notes[i]}): qemu ${a === "error" ? "error" : "ok"}, ours ${b === "error" ? "error" : "ok"}`);
    }
    expect(diffs).toEqual([]);
  } finally {
    t.cleanup();
  }
}

const flipBits = (r: () => number, p: Uint8Array, n: number, within = p.byteLength): void => {
  for (let k = 0; k < n; k++) {
    const bit = Math.floor(r() * Math.min(within, p.byteLength) * 8);
    p[bit >> 3] = p[bit >> 3]! ^ (1 << (bit & 7));
  }
};

describe("bounded decompression", () => {
  it("inflate stops at the end of the cluster: a 135 MB deflate bomb fills the buffer with its first bytes", () => {
    const bomb = deflateZeros(deflateZerosFitting(2 * 65536));
    const out = new Uint8Array(65536).fill(0xff);
    expect(inflateRawInto(bomb, out)).toBe("full");
    expect(out.every((b) => b === 0)).toBe(true);
    // Shorter than the buffer: the stream ends first.
    expect(inflateRawInto(deflateZeros(1000), new Uint8Array(1001))).toBe("short");
    expect(inflateRawInto(deflateZeros(1000), new Uint8Array(1000))).toBe("full");
  });

  it("a zstd frame that declares more than the cluster is refused before it reaches the decoder", () => {
    const frames: number[] = [];
    const decode = (frame: Uint8Array, room: number) => {
      frames.push(room);
      return new Uint8Array(room);
    };
    for (const declared of [2 ** 30, 65537, 2 ** 32 + 65536, 2 ** 63]) {
      expect(() => decompressZstdFrames(zstdRleFrame(65536, { declared }), 65536, decode)).toThrow(/declares \d+ bytes, more than the cluster/);
    }
    // The reserved header bit (zstd refuses such a frame; its content size would read as an error value).
    const reserved = zstdRleFrame(65536);
    reserved[4] = reserved[4]! | 0x08;
    expect(() => decompressZstdFrames(reserved, 65536, decode)).toThrow(/corrupt zstd frame/);
    expect(frames).toEqual([]);
    // An undeclared size gets room for the cluster and no more.
    decompressZstdFrames(zstdRleFrame(65536, { declared: undefined }), 65536, decode);
    expect(frames).toEqual([65536]);
  });

  it("a zstd frame holding 1 GiB without declaring it fails after one cluster of output", async () => {
    const codec = await getCodec("zstd");
    const before = process.memoryUsage().rss;
    await expect(codec.decompress(zstdRleFrame(2 ** 30, { declared: undefined }), 65536)).rejects.toMatchObject({ code: "IO_ERROR" });
    await expect(codec.decompress(zstdRleFrame(2 ** 30), 65536)).rejects.toMatchObject({ code: "IO_ERROR" });
    expect(process.memoryUsage().rss - before).toBeLessThan(64 * 2 ** 20);
    // Two frames that make one cluster together are one cluster (QEMU decodes frame after frame).
    const two = new Uint8Array([...zstdRleFrame(1000, { byte: 7 }), ...zstdRleFrame(65536 - 1000, { byte: 9, declared: undefined })]);
    const out = await codec.decompress(two, 65536);
    expect(out[999]).toBe(7);
    expect(out[1000]).toBe(9);
  });

  it("bombs in images: zstd bombs fail as in QEMU with little memory, a zlib bomb reads as QEMU reads it", async () => {
    const t = tempDir();
    try {
      const z = t.path("zstd.qcow2");
      plantedImage(z, "zstd", [zstdRleFrame(2 ** 30), zstdRleFrame(2 ** 30, { declared: undefined }), zstdRleFrame(65536, { declared: 2 ** 32 + 65536 })], 65536);
      const before = process.memoryUsage().rss;
      expect(await ourClusters(z, 3, 65536)).toEqual(["error", "error", "error"]);
      expect(process.memoryUsage().rss - before).toBeLessThan(64 * 2 ** 20);
      expect(qemuClusters(z, 3, 65536)).toEqual(["error", "error", "error"]);
      const d = t.path("zlib.qcow2");
      plantedImage(d, "zlib", [deflateZeros(deflateZerosFitting(2 * 65536)), deflateZeros(65535)], 65536);
      const q = qemuClusters(d, 2, 65536);
      expect(q[0]).toEqual(new Uint8Array(65536));
      expect(q[1]).toBe("error");
      expect(await ourClusters(d, 2, 65536)).toEqual(q);
    } finally {
      t.cleanup();
    }
  });
});

describe("damaged compressed clusters get QEMU's verdict", () => {
  it("zlib: 200 seeded damaged deflate streams", async () => {
    const r = rng(1301);
    const payloads: Uint8Array[] = [];
    const notes: string[] = [];
    for (let i = 0; i < 200; i++) {
      const size = [CS, CS, CS, 2 * CS, CS / 2, CS - 1][Math.floor(r() * 6)]!;
      const level = Math.floor(r() * 10);
      const strategy = Math.floor(r() * 5);
      let p = new Uint8Array(deflateRawSync(data(r, size), { level, strategy, windowBits: r() < 0.5 ? 12 : 15 }));
      const kind = Math.floor(r() * 6);
      if (kind === 1) flipBits(r, p, 1 + Math.floor(r() * 3));
      else if (kind === 2) flipBits(r, p, 1, 40); // the block header and code lengths
      else if (kind === 3) p = p.subarray(0, Math.floor(r() * p.byteLength));
      else if (kind === 4) p.fill(Math.floor(r() * 256), Math.floor(r() * p.byteLength), Math.floor(r() * p.byteLength) + 4);
      else if (kind === 5) p = Uint8Array.from({ length: 1 + Math.floor(r() * 64) }, () => Math.floor(r() * 256));
      if (p.byteLength > 2 * CS) p = p.subarray(0, 2 * CS);
      if (p.byteLength === 0) p = new Uint8Array(1);
      payloads.push(p);
      notes.push(`size ${size} level ${level} strategy ${strategy} kind ${kind}`);
    }
    await expectQemuVerdicts("zlib", payloads, notes);
  });

  it("zstd: 150 seeded damaged frames, declared sizes, several frames, skippable frames", async () => {
    const codec = await getCodec("zstd");
    const r = rng(1302);
    const payloads: Uint8Array[] = [];
    const notes: string[] = [];
    for (let i = 0; i < 150; i++) {
      const kind = Math.floor(r() * 8);
      let p: Uint8Array;
      if (kind <= 2) {
        const size = [CS, CS, 2 * CS, CS / 2][Math.floor(r() * 4)]!;
        p = (await codec.compress(data(r, size), 1 << 20))!.slice();
        if (kind === 1) flipBits(r, p, 1 + Math.floor(r() * 3));
        else if (kind === 2) flipBits(r, p, 1, 16); // the frame header
      } else if (kind === 3) {
        const total = [CS, CS - 1, CS + 1, 2 * CS][Math.floor(r() * 4)]!;
        const declared = [total, undefined, total + 1, total - 1, 2 ** 32 + total][Math.floor(r() * 5)];
        p = zstdRleFrame(total, { declared, byte: 5 });
      } else if (kind === 4) {
        const first = 1 + Math.floor(r() * (CS - 1));
        const second = CS - first + [0, 0, 1, -1][Math.floor(r() * 4)]!;
        p = new Uint8Array([...zstdRleFrame(first, { byte: 1 }), ...zstdRleFrame(second, { byte: 2, declared: r() < 0.5 ? undefined : second })]);
      } else if (kind === 5) {
        // A skippable frame first.
        const skip = new Uint8Array(8 + Math.floor(r() * 32));
        new DataView(skip.buffer).setUint32(0, 0x184d2a50 + Math.floor(r() * 16), true);
        new DataView(skip.buffer).setUint32(4, skip.byteLength - 8 + (r() < 0.2 ? 4096 : 0), true);
        p = new Uint8Array([...skip, ...(await codec.compress(data(r, CS), 1 << 20))!]);
      } else if (kind === 6) {
        p = (await codec.compress(data(r, CS), 1 << 20))!.slice();
        p = p.subarray(0, Math.floor(r() * p.byteLength));
      } else {
        // A frame whose window is larger than streaming decoders accept by default.
        p = zstdRleFrame(CS, { declared: undefined, byte: 3 });
        p[5] = Math.floor(r() * 32) << 3; // window log 10..41: QEMU accepts up to 31
        if (r() < 0.5) p[5] = (19 + Math.floor(r() * 4)) << 3; // 29..32: around both limits
      }
      if (p.byteLength > 2 * CS) p = p.subarray(0, 2 * CS);
      if (p.byteLength === 0) p = new Uint8Array(1);
      payloads.push(p);
      notes.push(`kind ${kind}`);
    }
    await expectQemuVerdicts("zstd", payloads, notes);
  });
});
