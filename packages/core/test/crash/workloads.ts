/**
 * Scripted workloads for the power-loss tests: each exercises one kind of metadata change with flushes in
 * between. `scale` > 1 (the long mode) makes them longer.
 */
import { rng } from "../helpers";
import type { Step, Workload } from "./harness";

const K = 1024;
const M = 1024 * 1024;

/** Random writes in [0, span): partial and multi-cluster, with a flush every `flushEvery` steps. */
function randomWrites(seed: number, count: number, span: number, maxLength: number, flushEvery: number): Step[] {
  const r = rng(seed);
  const steps: Step[] = [];
  for (let i = 0; i < count; i++) {
    const length = 512 * (1 + Math.floor(r() * (maxLength / 512)));
    const offset = 512 * Math.floor(r() * ((span - length) / 512));
    steps.push({ op: "write", offset, length, pattern: 1 + ((seed + i) % 250) });
    if ((i + 1) % flushEvery === 0) steps.push({ op: "flush" });
  }
  return steps;
}

/**
 * Groups of `perGroup` writes in flight together over [0, span): disjoint byte ranges, shuffled, many of them
 * sharing clusters (the allocating writes that run beside each other), a flush after each group.
 */
function writesInFlight(seed: number, groups: number, perGroup: number, span: number, maxLength: number): Step[] {
  const r = rng(seed);
  const steps: Step[] = [];
  for (let g = 0; g < groups; g++) {
    const writes: Array<{ offset: number; length: number; pattern: number }> = [];
    for (let offset = 512 * Math.floor(r() * 64); offset < span && writes.length < perGroup; ) {
      const length = Math.min(span - offset, 512 * (1 + Math.floor(r() * (maxLength / 512))));
      writes.push({ offset, length, pattern: 1 + ((seed + g * perGroup + writes.length) % 250) });
      offset += length + 512 * Math.floor(r() * 96);
    }
    writes.sort(() => r() - 0.5);
    steps.push({ op: "writes", writes }, { op: "flush" });
  }
  return steps;
}

export function workloads(scale: number): Workload[] {
  return [
    {
      name: "allocating writes (64 KiB clusters)",
      create: { size: 4 * M },
      steps: [...randomWrites(1, 12 * scale, 4 * M, 160 * K, 3), { op: "flush" }, ...randomWrites(2, 6 * scale, 4 * M, 8 * K, 2)],
    },
    {
      name: "allocating writes in flight together (64 KiB clusters)",
      create: { size: 2 * M },
      steps: writesInFlight(5, 2 * scale, 12, 2 * M, 96 * K),
    },
    {
      name: "allocating writes in flight together, external data file",
      create: { size: 2 * M },
      dataFile: true,
      steps: writesInFlight(6, 2 * scale, 12, 2 * M, 96 * K),
    },
    {
      name: "allocating writes in flight together over a backing file (copy-on-write)",
      create: { size: 2 * M },
      backing: { size: 2 * M },
      steps: writesInFlight(7, 2 * scale, 12, 2 * M, 40 * K),
    },
    {
      name: "L2 table growth (1 KiB clusters: 128 KiB per L2 table)",
      create: { size: 4 * M, clusterSize: K },
      steps: Array.from({ length: 10 * scale }, (_, i): Step[] => [
        { op: "write", offset: i * 300 * K + 3 * K, length: 6 * K, pattern: 10 + i },
        ...(i % 3 === 2 ? [{ op: "flush" } as Step] : []),
      ]).flat(),
    },
    {
      name: "refcount table growth (512-byte clusters, 64-bit refcounts)",
      create: { size: 8 * M, clusterSize: 512, refcountBits: 64 },
      steps: Array.from({ length: 9 * scale }, (_, i): Step[] => [
        { op: "write", offset: i * 256 * K, length: 256 * K, pattern: 30 + i },
        ...(i % 2 === 1 ? [{ op: "flush" } as Step] : []),
      ]).flat(),
    },
    {
      name: "copy-on-write from a backing file",
      create: { size: 2 * M },
      backing: { size: 2 * M },
      steps: [...randomWrites(3, 10 * scale, 2 * M, 20 * K, 3), { op: "zero", offset: 256 * K, length: 64 * K }, { op: "flush" }],
    },
    {
      name: "discard and zero, freed clusters reused",
      create: { size: 2 * M },
      steps: [
        { op: "write", offset: 0, length: 512 * K, pattern: 50 },
        { op: "flush" },
        { op: "discard", offset: 64 * K, length: 128 * K },
        { op: "zero", offset: 256 * K, length: 64 * K, unmap: true },
        { op: "zero", offset: 384 * K, length: 64 * K },
        { op: "write", offset: 1 * M, length: 192 * K, pattern: 51 },
        { op: "flush" },
        ...randomWrites(4, 6 * scale, 2 * M, 64 * K, 2),
        { op: "discard", offset: 0, length: 1 * M },
        { op: "write", offset: 512 * K, length: 256 * K, pattern: 52 },
      ],
    },
    {
      // A guest discard's clusters are reused by the next allocation (Refcounts.onDeferredBelow): the removed
      // references reach disk before the refcounts drop, also when the allocation is a compressed cluster's
      // (whose partly used predecessor the discard may free) or an extended L2 entry's.
      name: "discarded clusters reused at once: plain, compressed and extended L2 allocations",
      create: { size: 2 * M, clusterSize: 32 * K },
      steps: [
        { op: "write", offset: 0, length: 640 * K, pattern: 60 },
        ...Array.from({ length: 3 }, (_, i): Step => ({ op: "write", offset: (1024 + i * 32) * K, length: 32 * K, pattern: 61 + i, compressed: true })),
        { op: "flush" },
        { op: "discard", offset: 64 * K, length: 192 * K },
        { op: "write", offset: 1536 * K, length: 96 * K, pattern: 65 },
        { op: "discard", offset: 1056 * K, length: 64 * K },
        { op: "write", offset: 1280 * K, length: 32 * K, pattern: 66, compressed: true },
        { op: "write", offset: 1312 * K, length: 32 * K, pattern: 67, compressed: true },
        { op: "flush" },
        { op: "discard", offset: 0, length: 512 * K },
        { op: "write", offset: 128 * K, length: 8 * K, pattern: 68 },
        { op: "write", offset: 1700 * K, length: 100 * K, pattern: 69 },
        { op: "flush" },
      ],
    },
    {
      name: "discarded clusters reused at once: extended L2 entries",
      create: { size: 2 * M, extendedL2: true, clusterSize: 32 * K },
      steps: [
        { op: "write", offset: 0, length: 512 * K, pattern: 70 },
        { op: "flush" },
        { op: "discard", offset: 32 * K, length: 160 * K },
        { op: "write", offset: 1 * M, length: 4 * K, pattern: 71 },
        { op: "write", offset: 1 * M + 64 * K, length: 36 * K, pattern: 72 },
        { op: "flush" },
        { op: "discard", offset: 256 * K, length: 256 * K },
        { op: "write", offset: 300 * K, length: 2 * K, pattern: 73 },
      ],
    },
    {
      name: "internal snapshots: create, copy-on-write of shared clusters, apply, delete",
      create: { size: 2 * M },
      steps: [
        { op: "write", offset: 0, length: 256 * K, pattern: 60 },
        { op: "flush" },
        { op: "snapshot", name: "s1" },
        { op: "write", offset: 32 * K, length: 64 * K, pattern: 61 },
        { op: "flush" },
        { op: "snapshot", name: "s2" },
        { op: "write", offset: 128 * K, length: 8 * K, pattern: 62 },
        { op: "delete-snapshot", name: "s1" },
        { op: "write", offset: 512 * K, length: 64 * K, pattern: 63 },
        { op: "flush" },
        { op: "apply-snapshot", name: "s2" },
        { op: "write", offset: 64 * K, length: 64 * K, pattern: 64 },
        { op: "flush" },
        { op: "delete-snapshot", name: "s2" },
        ...randomWrites(5, 4 * scale, 2 * M, 32 * K, 2),
      ],
    },
    {
      name: "amend: refcount width, lazy refcounts",
      create: { size: 2 * M },
      steps: [
        { op: "write", offset: 0, length: 320 * K, pattern: 70 },
        { op: "flush" },
        { op: "amend", options: { refcountBits: 64 } },
        { op: "write", offset: 512 * K, length: 64 * K, pattern: 71 },
        { op: "flush" },
        { op: "amend", options: { lazyRefcounts: true } },
        { op: "write", offset: 1 * M, length: 64 * K, pattern: 72 },
        { op: "amend", options: { refcountBits: 4, lazyRefcounts: false } },
        { op: "write", offset: 1536 * K, length: 32 * K, pattern: 73 },
      ],
    },
    {
      name: "resize: L1 growth, writes past the old end, shrink",
      create: { size: 1 * M, clusterSize: 4 * K },
      steps: [
        { op: "write", offset: 0, length: 64 * K, pattern: 80 },
        { op: "flush" },
        { op: "resize", size: 40 * M },
        { op: "write", offset: 33 * M, length: 32 * K, pattern: 81 },
        { op: "flush" },
        { op: "resize", size: 8 * M },
        { op: "write", offset: 6 * M, length: 16 * K, pattern: 82 },
        { op: "flush" },
      ],
    },
    {
      name: "external data file",
      create: { size: 4 * M },
      dataFile: true,
      steps: [...randomWrites(6, 10 * scale, 4 * M, 96 * K, 3), { op: "discard", offset: 0, length: 1 * M }, { op: "write", offset: 64 * K, length: 4 * K, pattern: 90 }],
    },
    {
      name: "lazy refcounts",
      create: { size: 4 * M, lazyRefcounts: true },
      steps: [...randomWrites(7, 10 * scale, 4 * M, 96 * K, 3), { op: "discard", offset: 1 * M, length: 1 * M }, ...randomWrites(8, 3, 4 * M, 64 * K, 2)],
    },
    {
      name: "extended L2 entries with a backing file",
      create: { size: 2 * M, extendedL2: true, clusterSize: 32 * K },
      backing: { size: 2 * M },
      steps: [...randomWrites(9, 10 * scale, 2 * M, 12 * K, 3), { op: "zero", offset: 64 * K, length: 8 * K }, { op: "flush" }],
    },
    {
      name: "compressed writes",
      create: { size: 2 * M },
      steps: [
        ...Array.from({ length: 4 * scale }, (_, i): Step[] => [
          { op: "write", offset: i * 64 * K, length: 64 * K, pattern: 100 + i, compressed: true },
          ...(i % 2 === 1 ? [{ op: "flush" } as Step] : []),
        ]).flat(),
        { op: "write", offset: 16 * K, length: 4 * K, pattern: 110 },
        { op: "flush" },
        { op: "discard", offset: 64 * K, length: 64 * K },
      ],
    },
  ];
}
