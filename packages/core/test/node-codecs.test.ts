/**
 * The codecs the Node entry installs: zlib through node:zlib with QEMU's deflate settings, zstd through the
 * native binding; both round-trip through the runtime-agnostic decompressors, refuse output that is not
 * smaller than the limit, and compress many clusters at once.
 */
import { randomBytes } from "node:crypto";
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { getCodec } from "../src/node";
import { QEMU_DEFLATE_OPTIONS, nodeZlibCodec } from "../src/node/codecs";
import { zstdFrameLength } from "../src/zstd";

function textCluster(seed: number): Uint8Array {
  const words = ["alpha", "beta", "gamma", "delta", "qcow2", "cluster", "refcount", "table", String(seed)];
  const out = new Uint8Array(65536);
  let at = 0;
  for (let i = seed; at < out.byteLength; i = (i * 1103515245 + 12345) >>> 0) {
    const w = `${words[i % words.length]} `;
    for (let j = 0; j < w.length && at < out.byteLength; j++) out[at++] = w.charCodeAt(j);
  }
  return out;
}

describe("Node entry codecs", () => {
  it("zlib: the Node entry's codec is node:zlib with QEMU's settings (4 KiB window, raw deflate)", async () => {
    const codec = await getCodec("zlib");
    expect(codec).toBe(nodeZlibCodec);
    expect(QEMU_DEFLATE_OPTIONS).toMatchObject({ windowBits: 12, memLevel: 9, level: -1 });
    const cluster = textCluster(1);
    const out = (await codec.compress(cluster, 65535))!;
    expect(Buffer.compare(Buffer.from(out), deflateRawSync(cluster, QEMU_DEFLATE_OPTIONS))).toBe(0);
    // A stream made with a 4 KiB window inflates with a 4 KiB window (a larger one would refuse distances).
    expect(Buffer.compare(inflateRawSync(out, { windowBits: 12 }), Buffer.from(cluster))).toBe(0);
    expect(Buffer.compare(Buffer.from(await codec.decompress(out, 65536)), Buffer.from(cluster))).toBe(0);
    expect(await codec.compress(randomBytes(65536), 65535)).toBeUndefined();
  });

  it("zstd: native frames that the WebAssembly decoder reads; incompressible clusters refused", async () => {
    // The native binding loads on this platform (else the codec would be the WebAssembly one alone).
    const native = (await import("@mongodb-js/zstd")) as unknown as { compress(d: Uint8Array, level: number): Promise<Uint8Array> };
    const codec = await getCodec("zstd");
    const cluster = textCluster(2);
    expect(Buffer.compare(Buffer.from((await codec.compress(cluster, 65535))!), Buffer.from(await native.compress(cluster, 3)))).toBe(0);
    const out = (await codec.compress(cluster, 65535))!;
    expect(out.byteLength).toBeLessThan(20000);
    expect(zstdFrameLength(out)).toBe(out.byteLength);
    expect(Buffer.compare(Buffer.from(await codec.decompress(out, 65536)), Buffer.from(cluster))).toBe(0);
    expect(await codec.compress(randomBytes(65536), 65535)).toBeUndefined();
  });

  it("compresses many clusters at once, each result its own", async () => {
    for (const type of ["zlib", "zstd"] as const) {
      const codec = await getCodec(type);
      const clusters = Array.from({ length: 24 }, (_, i) => textCluster(10 + i));
      const outs = await Promise.all(clusters.map((c) => codec.compress(c, 65535)));
      for (const [i, out] of outs.entries()) {
        expect(Buffer.compare(Buffer.from(await codec.decompress(out!, 65536)), Buffer.from(clusters[i]!)), `${type} ${i}`).toBe(0);
      }
    }
  });
});
