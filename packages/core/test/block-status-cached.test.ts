/**
 * Block status answered from the mapping cache (BlockStatusReader.blockStatusCached, used by the public
 * blockStatus before the full walk, and asked by qnbd before every sparse read) must say exactly what the
 * full walk says, and what `qemu-img map` says, on QEMU-made images: plain, with an external data file, with
 * 4 KiB clusters across L2 tables, with preallocated metadata (where data clusters may be holes of the file,
 * so the cache alone cannot answer), and with a backing file (whose ranges the cache never answers).
 */
import { afterAll, describe, expect, it } from "vitest";
import type { BlockStatusExtent } from "../src/index";
import type { MapEntry } from "../src/map";
import { openImage } from "../src/node";
import { qemu, rng, tempDir } from "./helpers";

const t = tempDir("qcowkit-bscached-");
afterAll(() => t.cleanup());

interface StatusEngine {
  blockStatusCached(o: number, n: number): BlockStatusExtent[] | undefined;
  blockStatusUnlocked(o: number, n: number): Promise<BlockStatusExtent[]>;
}

const MiB = 1024 * 1024;

/** qemu-io writes, zero writes and discards at seeded places. */
function scribble(image: string, size: number, cluster: number, seed: number, format = "qcow2"): void {
  const r = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < 60; i++) {
    const clusters = 1 + Math.floor(r() * 6);
    const at = Math.floor(r() * (size / cluster - clusters)) * cluster;
    const kind = r();
    if (kind < 0.6) cmds.push(`write -P ${1 + (i % 250)} ${at} ${clusters * cluster}`);
    else if (kind < 0.8) cmds.push(`write -z ${at} ${clusters * cluster}`);
    else cmds.push(`discard ${at} ${clusters * cluster}`);
  }
  qemu("qemu-io", ["-f", format, ...cmds.flatMap((c) => ["-c", c]), image]);
}

interface Case {
  name: string;
  size: number;
  cluster: number;
  make: () => string;
  /** Whether the cache may answer data ranges (not when data clusters may be holes of the file). */
  dataFromCache: boolean;
}

/** A 16 MiB (or `size`) image made by qemu-img create with `opts`, then scribbled on with seed `seed`. */
function made(name: string, file: string, seed: number, opts: string[] = [], size = 16 * MiB, cluster = 65536, dataFromCache = true): Case {
  return {
    name,
    size,
    cluster,
    dataFromCache,
    make: () => {
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, t.path(file), String(size)]);
      scribble(t.path(file), size, cluster, seed);
      return file;
    },
  };
}

const cases: Case[] = [
  made("plain, 64 KiB clusters", "plain.qcow2", 1),
  made("4 KiB clusters across L2 tables", "small.qcow2", 2, ["-o", "cluster_size=4096"], 8 * MiB, 4096),
  made("external data file", "df.qcow2", 3, ["-o", `data_file=${t.path("df.raw")}`]),
  made("preallocated metadata", "prealloc.qcow2", 4, ["-o", "preallocation=metadata"], 16 * MiB, 65536, false),
  {
    ...made("backing file", "top.qcow2", 6, ["-b", "base.qcow2", "-F", "qcow2"]),
    make: () => {
      made("", "base.qcow2", 5).make();
      return made("", "top.qcow2", 6, ["-b", "base.qcow2", "-F", "qcow2"]).make();
    },
  },
];

describe("block status from the mapping cache", () => {
  for (const c of cases) {
    it(`agrees with the full walk and with qemu-img map: ${c.name}`, async () => {
      const name = c.make();
      const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", t.path(name)])) as MapEntry[];
      const image = await openImage(t.path(name), { readOnly: true });
      try {
        const status = (image as unknown as { status: StatusEngine }).status;
        // The whole image once: every L2 table is in the cache, and the preallocation heuristic is decided.
        await image.blockStatus(0, c.size);
        const r = rng(7);
        let answered = 0;
        let answeredData = 0;
        for (const e of map) {
          // Each of QEMU's extents, and a random piece of it, within one L2 table.
          const tableBytes = (c.cluster / 8) * c.cluster;
          const pieces: Array<[number, number]> = [];
          const tableEnd = (Math.floor(e.start / tableBytes) + 1) * tableBytes;
          pieces.push([e.start, Math.min(e.length, tableEnd - e.start)]);
          const from = e.start + Math.floor((r() * e.length) / 512) * 512;
          const to = Math.min(e.start + e.length, from + 512 + Math.floor((r() * (e.length - (from - e.start))) / 512) * 512);
          if (to > from) pieces.push([from, Math.min(to, (Math.floor(from / tableBytes) + 1) * tableBytes) - from]);
          for (const [o, n] of pieces) {
            const cached = status.blockStatusCached(o, n);
            const full = await status.blockStatusUnlocked(o, n);
            const pub = await image.blockStatus(o, n);
            expect(pub).toEqual(full);
            if (cached === undefined) continue;
            answered++;
            if (cached[0]!.data) answeredData++;
            expect(cached).toEqual(full);
            // And QEMU's own answer for that piece.
            expect(cached).toHaveLength(1);
            const x = cached[0]!;
            expect({ present: x.present, zero: x.zero, data: x.data, depth: x.depth }).toEqual({
              present: e.present,
              zero: e.zero,
              data: e.data,
              depth: e.depth,
            });
            if (e.offset !== undefined && x.hostOffset !== undefined) expect(x.hostOffset).toBe(e.offset + (o - e.start));
          }
        }
        expect(answered).toBeGreaterThan(0);
        if (c.dataFromCache) expect(answeredData).toBeGreaterThan(0);
        else expect(answeredData).toBe(0);
      } finally {
        await image.close();
      }
    });
  }
});
