/**
 * Refcounts against a simple model: seeded random allocations, extra references, deferred frees and
 * write-backs, checked after every step against a map of the references the test handed out. The refcount
 * structures themselves (header cluster, refcount table, refcount blocks) must each count exactly 1, every
 * other cluster exactly what the model says, and what is on disk after a write-back must load back the same.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { seededRandom } from "@qcowkit/datafile/testing";
import { isQcow2Error, refcountBlockEntries, setRefcount, setReftableEntry, viewOf } from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import { Refcounts, refcountBlocksNeeded } from "../src/refcounts";

const CLUSTER_BITS = 9;
const CS = 2 ** CLUSTER_BITS;

/** A fresh file: header (cluster 0), a one-cluster refcount table (1), one refcount block (2). */
async function freshStructures(refcountOrder: number) {
  const store = new MemoryStore({ chunkSize: 4096 });
  const table = new Uint8Array(CS);
  setReftableEntry(viewOf(table), 0, 2 * CS);
  const block = new Uint8Array(CS);
  for (let c = 0; c < 3; c++) setRefcount(block, c, refcountOrder, 1);
  await store.write(0, new Uint8Array(CS));
  await store.write(CS, table);
  await store.write(2 * CS, block);
  const header = { offset: CS, clusters: 1 };
  const refcounts = await Refcounts.load(store, {
    clusterBits: CLUSTER_BITS,
    refcountOrder,
    reftableOffset: CS,
    reftableClusters: 1,
    cacheBlocks: 4,
    updateHeader: async (offset, clusters) => {
      header.offset = offset;
      header.clusters = clusters;
    },
  });
  return { store, refcounts, header };
}

/** Clusters the refcount structures occupy: the header, the table's clusters, each block. */
function metadataClusters(r: Refcounts): Set<number> {
  const set = new Set<number>([0]);
  for (let i = 0; i < r.reftableClusters; i++) set.add(r.reftableOffset / CS + i);
  for (let b = 0; b < r.reftableEntries; b++) {
    const off = r.blockOffset(b);
    if (off) set.add(off / CS);
  }
  return set;
}

async function expectMatchesModel(r: Refcounts, model: Map<number, number>, upTo: number): Promise<void> {
  const meta = metadataClusters(r);
  for (const c of model.keys()) expect(meta.has(c), `cluster ${c} is both data and refcount metadata`).toBe(false);
  const wrong: string[] = [];
  for (let c = 0; c < upTo; c++) {
    const want = meta.has(c) ? 1 : (model.get(c) ?? 0);
    const got = await r.get(c);
    if (got !== want) wrong.push(`cluster ${c}: ${got}, expected ${want}`);
  }
  expect(wrong).toEqual([]);
}

describe("Refcounts against a model", () => {
  for (const order of [0, 4, 6]) {
    it(`refcount_order ${order}: random allocations, references and deferred frees keep every count exact`, async () => {
      const { store, refcounts: r, header } = await freshStructures(order);
      const max = 2 ** 2 ** order - 1;
      const rand = seededRandom(1000 + order);
      const pick = (n: number) => Math.floor(rand() * n);
      /** References the test holds, by cluster. */
      const model = new Map<number, number>();
      /** Decreases queued with deferFree and not applied yet. */
      const pending: number[] = [];
      let highest = 3;
      for (let step = 0; step < 400; step++) {
        const held = [...model.keys()];
        const op = pick(10);
        if (op < 5 || held.length === 0) {
          const count = 1 + pick(order === 6 ? 40 : 12);
          const before = await r.nextAllocation(count);
          const first = await r.allocate(count);
          if (before !== undefined) expect(first).toBe(before);
          for (let c = first; c < first + count; c++) {
            expect(model.has(c), `allocate(${count}) returned used cluster ${c}`).toBe(false);
            expect(pending).not.toContain(c);
            model.set(c, 1);
          }
          highest = Math.max(highest, first + count);
        } else if (op < 7) {
          const c = held[pick(held.length)]!;
          const n = model.get(c)!;
          if (n === max) {
            const e = await r.update(c, 1, 1).then(() => undefined, (x: unknown) => x);
            expect(isQcow2Error(e) && e.errno).toBe("ERANGE");
          } else {
            await r.update(c, 1, 1);
            model.set(c, n + 1);
          }
        } else if (op < 9) {
          // Drop a reference now, applied later: until then the count stays and the cluster is not reused.
          const c = held[pick(held.length)]!;
          const n = model.get(c)!;
          if (n === 1) model.delete(c);
          else model.set(c, n - 1);
          r.deferFree(c, 1);
          pending.push(c);
          expect(await r.get(c)).toBe(n);
        } else {
          await r.applyDeferredFrees();
          pending.length = 0;
          expect(r.deferredRanges).toBe(0);
        }
        // Pending decreases still count until applied.
        if (step % 50 === 0 || step === 399) {
          const withPending = new Map(model);
          for (const c of pending) withPending.set(c, (withPending.get(c) ?? 0) + 1);
          await expectMatchesModel(r, withPending, highest + 8);
        }
      }
      await r.applyDeferredFrees();
      await expectMatchesModel(r, model, highest + 8);
      // What reaches the file loads back the same, through the table the header was told about.
      await r.writeBack();
      expect([header.offset, header.clusters]).toEqual([r.reftableOffset, r.reftableClusters]);
      const again = await Refcounts.load(store, {
        clusterBits: CLUSTER_BITS,
        refcountOrder: order,
        reftableOffset: header.offset,
        reftableClusters: header.clusters,
      });
      await expectMatchesModel(again, model, highest + 8);
    });
  }

  it("grows the refcount table when the clusters outrun it, and frees the old table", async () => {
    const order = 6; // 64 entries per block: a one-cluster table covers 64 * 64 clusters
    const { refcounts: r, header } = await freshStructures(order);
    const covered = r.coveredClusters;
    expect(covered).toBe((CS / 8) * refcountBlockEntries(CLUSTER_BITS, order));
    const model = new Map<number, number>();
    while (r.reftableOffset === CS) {
      const first = await r.allocate(50);
      for (let c = first; c < first + 50; c++) model.set(c, 1);
    }
    expect(header.offset).toBe(r.reftableOffset);
    expect(r.reftableClusters).toBeGreaterThan(1);
    // The old table's cluster is free again, everything else as the model says.
    expect(await r.get(1)).toBe(0);
    await expectMatchesModel(r, model, Math.max(...model.keys()) + 8);
  });

  it("a failing update changes nothing: below zero is CORRUPT, above the maximum ERANGE", async () => {
    const { refcounts: r } = await freshStructures(1); // 2-bit refcounts: at most 3
    const first = await r.allocate(4);
    await r.update(first + 2, 1, 2); // 3: the maximum
    const before = await Promise.all([0, 1, 2, 3].map((i) => r.get(first + i)));
    expect(before).toEqual([1, 1, 3, 1]);
    const over = await r.update(first, 4, 1).then(() => undefined, (e: unknown) => e);
    expect(isQcow2Error(over) && over.errno).toBe("ERANGE");
    const under = await r.update(first, 4, -2).then(() => undefined, (e: unknown) => e);
    expect(isQcow2Error(under) && under.code).toBe("CORRUPT");
    expect(await Promise.all([0, 1, 2, 3].map((i) => r.get(first + i)))).toEqual(before);
  });

  it("allocateAt creates the refcount block a far range needs outside that range", async () => {
    const order = 4;
    const { refcounts: r } = await freshStructures(order);
    const far = 5 * refcountBlockEntries(CLUSTER_BITS, order) + 7;
    expect(r.firstMissingBlock(far, 3)).toBe(5);
    await r.allocateAt(far, 3);
    expect(r.firstMissingBlock(far, 3)).toBe(-1);
    const block = r.blockOffset(5) / CS;
    expect(block < far || block >= far + 3).toBe(true);
    await expectMatchesModel(r, new Map([[far, 1], [far + 1, 1], [far + 2, 1]]), far + 8);
  });

  it("refcountBlocksNeeded reaches a fixed point that covers itself", () => {
    const rand = seededRandom(7);
    for (let i = 0; i < 200; i++) {
      const clusterBits = 9 + Math.floor(rand() * 8);
      const clusterSize = 2 ** clusterBits;
      const order = Math.floor(rand() * 7);
      const clusters = Math.floor(rand() * 2 ** 24);
      const blocks = refcountBlocksNeeded(clusters, clusterSize, order, false);
      const perBlock = refcountBlockEntries(clusterBits, order);
      const table = Math.ceil(blocks / (clusterSize / 8));
      // Enough blocks for the clusters, the blocks and the table; one block fewer would not be.
      expect(blocks * perBlock).toBeGreaterThanOrEqual(clusters + blocks + table);
      if (blocks > 1) expect((blocks - 1) * perBlock).toBeLessThan(clusters + blocks - 1 + Math.ceil((blocks - 1) / (clusterSize / 8)));
    }
  });
});
