/**
 * ClusterMap.mapRun reads long runs of standard L2 entries by comparing raw words (sameRunEnd) instead of
 * decoding each entry. Its answers must be exactly those of decoding cluster by cluster: the same run ends,
 * types, host offsets and COPIED flags, and the same CORRUPT errors, on tables of random entries.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { describe, expect, it } from "vitest";
import { createQcow2, Qcow2Image } from "../src/index";
import { rng } from "./helpers";

const CS = 4096; // 512 entries per L2 table

/** Random standard L2 entries: contiguous runs of every kind, broken by flag flips, gaps and bad entries. */
function randomTable(seed: number, dataFile: boolean): DataView {
  const r = rng(seed);
  const bytes = new Uint8Array(CS);
  const view = new DataView(bytes.buffer);
  let i = 0;
  while (i < CS / 8) {
    const len = 1 + Math.floor(r() * 40);
    const kind = r();
    const copied = r() < 0.8 ? 0x80000000 : 0;
    let host = dataFile ? i * CS : (1 + Math.floor(r() * 5000)) * CS + (r() < 0.3 ? 2 ** 32 + CS * 7 : 0);
    for (let k = 0; k < len && i < CS / 8; k++, i++) {
      let hi = 0;
      let lo = 0;
      if (kind < 0.5) {
        hi = (copied | Math.floor(host / 2 ** 32)) >>> 0;
        lo = host % 2 ** 32;
        if (r() < 0.03) lo = (lo + CS) >>> 0; // a gap
        if (r() < 0.02) hi = (hi ^ 0x80000000) >>> 0; // COPIED flipped
        if (r() < 0.01) lo = (lo | 0x2) >>> 0; // a reserved bit: invalid
        if (r() < 0.01) lo = (lo + 512) >>> 0; // unaligned: invalid
        if (r() < 0.01) hi = (hi | 0x01000000) >>> 0; // reserved high bit: invalid
      } else if (kind < 0.7) {
        // unallocated; now and then a zero flag or a stray COPIED bit
        if (r() < 0.05) lo = 1;
        if (r() < 0.05) hi = 0x80000000;
      } else if (kind < 0.85) {
        hi = (copied | Math.floor(host / 2 ** 32)) >>> 0; // zero cluster with an allocation
        lo = (host % 2 ** 32) + 1;
      } else if (!dataFile) {
        hi = 0x40000000 | Math.floor(r() * 0x100); // compressed
        lo = Math.floor(r() * 2 ** 32) >>> 0;
      }
      view.setUint32(i * 8, hi);
      view.setUint32(i * 8 + 4, lo);
      host += CS;
    }
  }
  return view;
}

type Outcome = { error: string } | { end: number; type: number; hostOffset: number; copied: boolean };

describe("mapRun over raw runs of standard L2 entries", () => {
  for (const dataFile of [false, true]) {
    it(`matches decoding entry by entry on random tables${dataFile ? " (external data file)" : ""}`, async () => {
      for (const seed of [1, 2, 3, 4, 5, 6]) {
        const meta = Object.assign(new MemoryStore({ name: "m" }), { close: async () => undefined });
        const data = dataFile ? Object.assign(new MemoryStore({ name: "d" }), { close: async () => undefined }) : undefined;
        const size = (CS / 8) * CS; // exactly one L2 table
        await createQcow2(meta, { size, clusterSize: CS, ...(dataFile ? { dataFile: "d" } : {}) }, data ? { dataStore: data } : {});
        let img = await Qcow2Image.open(meta, data ? { dataFile: data } : {});
        await img.write(0, new Uint8Array(CS).fill(1));
        await img.flush();
        const tableOffset = img.metadata.l1.l2Offset(0);
        await img.close();
        const table = randomTable(seed * 31 + (dataFile ? 7 : 0), dataFile);
        await meta.write(tableOffset, new Uint8Array(table.buffer));
        img = await Qcow2Image.open(meta, data ? { dataFile: data, readOnly: true } : { readOnly: true });
        const outcome = async (pos: number, len: number): Promise<Outcome> => {
          try {
            const run = await img.metadata.map.mapRun(pos, len);
            return { end: pos + run.byteLength, type: run.type, hostOffset: run.hostOffset, copied: run.copied };
          } catch (e) {
            return { error: (e as Error).message };
          }
        };
        const r = rng(seed);
        for (let n = 0; n < 150; n++) {
          const pos = Math.floor(r() * size / 512) * 512;
          const len = Math.min(size - pos, 512 + Math.floor(r() * size));
          const got = await outcome(pos, len);
          // The reference: one cluster at a time (a run never reaches a second cluster), joined as mapRun joins.
          const firstEnd = Math.min(pos + len, (Math.floor(pos / CS) + 1) * CS);
          const first = await outcome(pos, firstEnd - pos);
          let expected: Outcome = first;
          // (Compressed clusters are one run each; runs of types with a host cluster continue by address.)
          if (!("error" in first) && first.type !== 5) {
            let end = first.end;
            while (end < pos + len) {
              const next = await outcome(end, Math.min(CS, pos + len - end));
              if ("error" in next) {
                expected = next;
                break;
              }
              const hasHost = first.type === 1 || first.type === 3 || first.type === 4;
              if (next.type !== first.type || next.copied !== first.copied) break;
              if (hasHost && next.hostOffset !== first.hostOffset + (end - pos)) break;
              end = next.end;
            }
            if (!("error" in expected)) expected = { ...first, end };
          }
          expect(got, `seed ${seed}, mapRun(${pos}, ${len})`).toEqual(expected);
        }
        await img.close();
      }
    });
  }
});
