import { describe, expect, it } from "vitest";
import { rechunk } from "../src";

async function* from(pieces: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of pieces) yield p;
}

async function all(it: AsyncIterable<Uint8Array>): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const c of it) out.push(c);
  return out;
}

const seq = (n: number, start = 0) => Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff);

describe("rechunk", () => {
  it("cuts pieces of any size into chunks of exactly `size` bytes, the last one shorter, in order", async () => {
    const bytes = seq(1000);
    const pieces = [bytes.subarray(0, 3), bytes.subarray(3, 300), bytes.subarray(300, 301), bytes.subarray(301, 1000)];
    const chunks = await all(rechunk(from(pieces), 128));
    expect(chunks.map((c) => c.byteLength)).toEqual([128, 128, 128, 128, 128, 128, 128, 104]);
    const joined = new Uint8Array(1000);
    let at = 0;
    for (const c of chunks) {
      joined.set(c, at);
      at += c.byteLength;
    }
    expect(joined).toEqual(bytes);
  });

  it("passes whole chunks of a large piece without copying, and never writes a chunk it has handed out", async () => {
    const big = seq(256);
    const chunks: Uint8Array[] = [];
    for await (const c of rechunk(from([big, seq(10, 7), seq(10, 50)]), 128)) chunks.push(c);
    expect(chunks[0]!.buffer).toBe(big.buffer);
    expect(chunks[1]!.buffer).toBe(big.buffer);
    expect(chunks[2]).toEqual(Uint8Array.from([...seq(10, 7), ...seq(10, 50)]));
  });

  it("gives nothing for an empty source and refuses a size that is not a positive integer", async () => {
    expect(await all(rechunk(from([]), 16))).toEqual([]);
    await expect(all(rechunk(from([seq(4)]), 0))).rejects.toThrow(RangeError);
  });
});
