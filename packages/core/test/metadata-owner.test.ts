/**
 * The metadata owner's write ordering, checked at every crash point. Both stores record each write and flush;
 * each write is classified when it is made, from the owner's live state (header, active L1 table, L2 tables,
 * refcount table and blocks, guest data). A power loss can strike after any operation, and what survives is
 * at least what was flushed, so the rule holds at every crash point exactly when, for every write W of a kind
 * that depends on an earlier write V, a flush of V's store lies between them:
 *  1. guest data before the L2 entry that maps it;
 *  2. refcount blocks (increases) before L2 and L1 entries;
 *  3. L2 tables before the L1 entries that point to them;
 *  4. removed references (L2, L1 writes) before refcount decreases;
 *  5. a flush of the image leaves nothing unflushed in either file.
 * Afterwards QEMU checks the image and reads it as the model says.
 */
import { closeSync, openSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { MemoryStore } from "@qcowkit/datafile";
import { seededRandom } from "@qcowkit/datafile/testing";
import { getRefcount, reftableEntryOffset, viewOf, type ByteStore } from "@qcowkit/spec";
import { createQcow2 } from "../src/create";
import type { MetadataOwner } from "../src/metadata/owner";
import { Qcow2Image } from "../src/qcow2-image";
import { qemu, qemuStatus, tempDir } from "./helpers";

type Kind = "header" | "l1" | "reftable" | "l2" | "refblock" | "refblock-decrease" | "data";
type Event = { store: "meta" | "data"; op: "write"; kind: Kind; offset: number } | { store: "meta" | "data"; op: "flush" };

const MiB = 1024 * 1024;
const CS = 65536;

/** A MemoryStore that logs its writes (classified by `classify`) and flushes. */
function recording(inner: MemoryStore, store: "meta" | "data", log: Event[], classify: () => ((offset: number, bytes: Uint8Array) => Promise<Kind>) | undefined): ByteStore {
  return {
    name: inner.name,
    get readOnly() {
      return false;
    },
    read: (o, into) => inner.read(o, into),
    size: () => inner.size(),
    close: async () => undefined,
    write: async (o, d) => {
      const c = classify();
      log.push({ store, op: "write", offset: o, kind: store === "data" || !c ? "data" : await c(o, d) });
      await inner.write(o, d);
    },
    flush: async () => {
      log.push({ store, op: "flush" });
      await inner.flush();
    },
    resize: (s, p) => inner.resize(s, p),
    discard: (o, n) => inner.discard(o, n),
    writeZeroes: (o, n, u) => inner.writeZeroes(o, n, u),
  };
}

/** Copy a store to a sparse file (only the non-zero MiBs are written). */
async function dump(store: MemoryStore, path: string): Promise<void> {
  const size = await store.size();
  const fd = openSync(path, "w");
  try {
    const chunk = new Uint8Array(MiB);
    for (let at = 0; at < size; at += MiB) {
      const piece = chunk.subarray(0, Math.min(MiB, size - at));
      await store.read(at, piece);
      if (piece.some((b) => b !== 0)) writeSync(fd, piece, 0, piece.byteLength, at);
    }
  } finally {
    closeSync(fd);
  }
  truncateSync(path, size);
}

/** What a write at `offset` of the qcow2 file changes, by the owner's current state. */
function classifier(md: MetadataOwner, meta: MemoryStore): (offset: number, bytes: Uint8Array) => Promise<Kind> {
  return async (offset, bytes) => {
    const h = md.header;
    const c = Math.floor(offset / CS);
    if (c === 0) return "header";
    const inRange = (start: number, length: number) => offset >= start && offset < start + length;
    if (inRange(h.l1TableOffset, h.l1Size * 8)) return "l1";
    if (inRange(h.refcountTableOffset, h.refcountTableClusters * CS)) return "reftable";
    for (let i = 0; i < md.l1.size; i++) if (md.l1.l2Offset(i) === c * CS) return "l2";
    const table = viewOf(md.refcounts.reftable);
    for (let i = 0; i < md.refcounts.reftableEntries; i++) {
      if (reftableEntryOffset(table, i) !== c * CS) continue;
      // A refcount block: does the write lower any count it covers?
      const old = new Uint8Array(bytes.byteLength);
      await meta.read(offset, old);
      const entryBits = 2 ** h.refcountOrder;
      const first = Math.ceil(((offset % CS) * 8) / entryBits);
      const block = new Uint8Array(CS);
      const before = new Uint8Array(CS);
      block.set(bytes, offset % CS);
      before.set(old, offset % CS);
      const last = Math.floor((((offset % CS) + bytes.byteLength) * 8) / entryBits);
      for (let e = first; e < last; e++) {
        if (getRefcount(block, e, h.refcountOrder) < getRefcount(before, e, h.refcountOrder)) return "refblock-decrease";
      }
      return "refblock";
    }
    return "data";
  };
}

/** Pairs (earlier kind, later kind) where the earlier write must be durable before the later one is made. */
const RULES: Array<[Kind[], Kind[], string]> = [
  [["data"], ["l2"], "1: data before the L2 entry that maps it"],
  [["refblock"], ["l2", "l1"], "2: refcount increase before the reference"],
  [["l2"], ["l1"], "3: L2 table before the L1 entry"],
  [["l2", "l1"], ["refblock-decrease"], "4: reference removal before refcount decrease"],
];

/** Every violation of RULES in `log`: a later write made while an earlier one it depends on was not yet flushed. */
function violations(log: Event[]): string[] {
  const out: string[] = [];
  // Writes not yet flushed, per store.
  const pending: Record<"meta" | "data", Array<{ kind: Kind; at: number; offset: number }>> = { meta: [], data: [] };
  log.forEach((e, at) => {
    if (e.op === "flush") {
      pending[e.store] = [];
      return;
    }
    for (const [before, after, rule] of RULES) {
      if (!after.includes(e.kind)) continue;
      for (const p of [...pending.meta, ...pending.data]) {
        if (before.includes(p.kind)) out.push(`rule ${rule}: ${e.kind} write #${at} at ${e.offset} while ${p.kind} write #${p.at} at ${p.offset} is not flushed`);
      }
    }
    pending[e.store].push({ kind: e.kind, at, offset: e.offset });
  });
  return out;
}

describe("the metadata owner's write ordering holds at every crash point", () => {
  const t = tempDir("qcowkit-owner-");
  afterAll(() => t.cleanup());

  for (const variant of [
    { name: "internal data, 16-bit refcounts, growing", dataFile: false, refcountBits: 16, extendedL2: false, grow: true },
    // The data file grows with the image: kept at its size here, so that the test stays fast.
    { name: "external data file", dataFile: true, refcountBits: 16, extendedL2: false, grow: false },
    { name: "extended L2 entries, 1-bit refcounts, growing", dataFile: false, refcountBits: 1, extendedL2: true, grow: true },
  ]) {
    it(variant.name, async () => {
      const size = 64 * MiB;
      // Stores that stay open when closed: their bytes are examined afterwards.
      const keep = (store: MemoryStore) => Object.assign(store, { close: async () => undefined });
      const metaStore = keep(new MemoryStore({ size: 0, name: "image.qcow2" }));
      const dataStore = variant.dataFile ? keep(new MemoryStore({ size: 0, name: "image.data" })) : undefined;
      await createQcow2(
        metaStore,
        { size, refcountBits: variant.refcountBits, extendedL2: variant.extendedL2, ...(dataStore ? { dataFile: "image.data" } : {}) },
        dataStore ? { dataStore } : {},
      );
      const log: Event[] = [];
      let classify: ((offset: number, bytes: Uint8Array) => Promise<Kind>) | undefined;
      const meta = recording(metaStore, "meta", log, () => classify);
      const data = dataStore ? recording(dataStore, "data", log, () => classify) : undefined;
      // A small cache, so that write-backs also happen in the middle of requests.
      const image = await Qcow2Image.open(meta, { cacheBytes: 4 * CS, ...(data ? { dataFile: data } : {}) });
      classify = classifier(image.metadata, metaStore);

      const model = new Uint8Array(size);
      const rand = seededRandom(variant.refcountBits * 31 + (variant.dataFile ? 7 : 0));
      const pick = (n: number) => Math.floor(rand() * n);
      let virtualSize = size;
      const flushChecks: string[] = [];
      for (let step = 0; step < 160; step++) {
        const r = rand();
        // Guest requests stay in the first 64 MiB (the model); resizes grow the image far past it.
        const offset = pick(size / 512) * 512;
        const length = Math.min(size - offset, (1 + pick(3 * 128)) * 512);
        if (r < 0.55) {
          const bytes = new Uint8Array(length).fill(1 + (step % 250));
          await image.write(offset, bytes);
          model.set(bytes, offset);
        } else if (r < 0.7) {
          await image.discard(offset, length);
          // Discard drops whole clusters only (they then read as zeros); partly covered ones keep their data.
          await image.read(offset, model.subarray(offset, offset + length));
        } else if (r < 0.8) {
          await image.writeZeroes(offset, length, { unmap: rand() < 0.5 });
          model.fill(0, offset, offset + length);
        } else if (r < 0.9) {
          await image.flush();
          // Rule 5: a completed flush leaves no write of either file unflushed.
          for (const store of ["meta", "data"] as const) {
            const last = log.filter((e) => e.store === store).at(-1);
            if (last && last.op !== "flush") flushChecks.push(`step ${step}: ${store} has unflushed writes after flush()`);
          }
        } else if (r < 0.93 && variant.grow && virtualSize < 1536 * MiB) {
          // Past what one L1 entry covers (512 MiB, 256 MiB with extended L2) the L1 table is replaced.
          virtualSize = virtualSize === size ? 1024 * MiB : virtualSize + 512 * MiB;
          await image.resize(virtualSize);
        } else {
          await image.metadata.writeback();
        }
      }
      await image.close();
      expect(flushChecks).toEqual([]);
      const kinds = new Set(log.filter((e) => e.op === "write").map((e) => (e as { kind: Kind }).kind));
      // The workload exercised what the rules talk about.
      for (const k of ["data", "l1", "l2", "refblock"] as const) expect(kinds, k).toContain(k);
      // Resizes rewrite the size field in place and replace the L1 table.
      if (variant.grow) expect(kinds).toContain("header");
      // Clusters of an external data file have no refcounts: nothing the workload frees lowers one.
      if (!variant.dataFile) expect(kinds).toContain("refblock-decrease");
      if (variant.grow) expect(image.metadata.l1.size).toBeGreaterThan(1);
      expect(violations(log)).toEqual([]);

      // QEMU agrees with the result, and reads what the model holds.
      const file = t.path(`${variant.refcountBits}-${variant.dataFile}.qcow2`);
      await dump(metaStore, file);
      if (dataStore) await dump(dataStore, t.path("image.data"));
      const check = qemuStatus("qemu-img", ["check", "--output=json", file], { cwd: t.dir });
      expect(check.status, check.stdout + check.stderr).toBe(0);
      const expected = t.path("expected.raw");
      writeFileSync(expected, model);
      truncateSync(expected, virtualSize);
      expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", file, expected], { cwd: t.dir })).toContain("Images are identical");
    }, 120_000);
  }

  it("rule 1 with writes in flight: data written while the data file's flush runs is flushed before the next L2 write", async () => {
    const keep = (store: MemoryStore) => Object.assign(store, { close: async () => undefined });
    const metaStore = keep(new MemoryStore({ size: 0, name: "image.qcow2" }));
    const dataStore = keep(new MemoryStore({ size: 0, name: "image.data" }));
    await createQcow2(metaStore, { size: 4 * MiB, dataFile: "image.data" }, { dataStore });
    const log: Event[] = [];
    let onDataFlush: (() => void) | undefined;
    const data: ByteStore = {
      ...recording(dataStore, "data", log, () => undefined),
      flush: async () => {
        log.push({ store: "data", op: "flush" });
        // Another request's data write completes while this flush is under way.
        onDataFlush?.();
        onDataFlush = undefined;
        await dataStore.flush();
      },
    };
    const image = await Qcow2Image.open(recording(metaStore, "meta", log, () => undefined), { dataFile: data });
    await image.write(0, new Uint8Array(CS).fill(7));
    onDataFlush = () => image.metadata.noteDataWritten();
    await image.metadata.writeback();
    // An L2 table changes again (as a link of that other request would change it): its write-back must first
    // flush the data written during the earlier flush.
    const table = await image.metadata.map.table(0);
    image.metadata.l2Cache.markDirty(table!);
    const before = log.length;
    await image.metadata.writeback();
    expect(log.slice(before).map((e) => `${e.store} ${e.op}`)[0]).toBe("data flush");
    await image.close();
  });

  it("the checker itself finds an ordering violation (an L2 write while refcounts are unflushed)", () => {
    const log: Event[] = [
      { store: "meta", op: "write", kind: "refblock", offset: CS },
      { store: "meta", op: "write", kind: "l2", offset: 2 * CS },
      { store: "data", op: "write", kind: "data", offset: 0 },
      { store: "meta", op: "flush" },
      { store: "meta", op: "write", kind: "l2", offset: 2 * CS },
      { store: "data", op: "flush" },
      { store: "meta", op: "write", kind: "l1", offset: 3 * CS },
      { store: "meta", op: "write", kind: "refblock-decrease", offset: CS },
    ];
    const found = violations(log);
    expect(found).toHaveLength(5);
    expect(found[0]).toMatch(/^rule 2: .*l2 write #1 .*refblock write #0/);
    expect(found[1]).toMatch(/^rule 1: .*l2 write #4 .*data write #2/);
    expect(found[2]).toMatch(/^rule 3: .*l1 write #6 .*l2 write #4/);
    expect(found[3]).toMatch(/^rule 4: .*refblock-decrease write #7 .*l2 write #4/);
    expect(found[4]).toMatch(/^rule 4: .*refblock-decrease write #7 .*l1 write #6/);
  });
});
