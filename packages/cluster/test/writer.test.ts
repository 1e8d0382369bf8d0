/**
 * ClusterWriter against a model. A small image (512-byte clusters, four L2 tables) takes seeded random
 * sequences of partial and whole writes, write-zeroes, discards, compressed writes and "snapshots" (every
 * reference shared: refcounts up, COPIED off). The test plays the engine: it asks the writer for plans,
 * applies them, and keeps a plain model (a Map from guest cluster to what it holds, plus the references
 * snapshots froze). After every step it checks that
 *  - each entry classifies as the model says (and `mapRun` agrees),
 *  - each plan is the one the model predicts (in place / allocate / reuse, copy-on-write sources),
 *  - the allocator was called as the model predicts: after the deferred releases are applied, every
 *    cluster's count equals the references the model holds (no leak, no double free),
 *  - a new L2 table's refcount was made durable (`beforeReference`) before its L1 entry pointed to it.
 * With extended L2 entries the model is the content: every guest byte (and every snapshot's) must read what
 * it read before, except the bytes written, after the test performed the writer's subcluster plans.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { seededRandom } from "@qcowkit/datafile/testing";
import { SubclusterType } from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import { ClusterMap, ClusterWriter, L1Table, L2Cache, referencedClusters, setL2Copied, type ClusterAllocator, type CowSource, type L2Table } from "../src/index";

const BITS = 9;
const CS = 2 ** BITS;
const ENTRIES = CS / 8;
const TABLES = 4;
const CLUSTERS = ENTRIES * TABLES;
const SIZE = CLUSTERS * CS;
const BACKING = SIZE / 2;
/** Host clusters below this hold the header, the L1 table and so on (never handed out). */
const FIRST_FREE = 8;

type State =
  | { kind: "unallocated" }
  | { kind: "zero"; host: number; copied: boolean }
  | { kind: "normal"; host: number; copied: boolean }
  | { kind: "compressed"; host: number; sectors: number };

/** The allocator the refcount owner would be: counts, deferred releases, and a log of calls. */
class ModelAllocator implements ClusterAllocator {
  counts = new Map<number, number>();
  deferred: Array<[number, number]> = [];
  log: string[] = [];
  private firstFree(count: number, from = FIRST_FREE): number {
    for (let c = from; ; c++) {
      let n = 0;
      while (n < count && !this.counts.get(c + n)) n++;
      if (n === count) return c;
    }
  }
  private take(first: number, count: number) {
    for (let c = first; c < first + count; c++) this.counts.set(c, (this.counts.get(c) ?? 0) + 1);
  }
  async allocate(count: number) {
    const first = this.firstFree(count);
    this.take(first, count);
    this.log.push(`allocate ${count}`);
    return first;
  }
  async allocateAt(first: number, count: number) {
    let n = 0;
    while (n < count && !this.counts.get(first + n)) n++;
    this.take(first, n);
    this.log.push(`allocateAt ${first} ${count}`);
    return n;
  }
  async allocateMetadata(count: number, what: string) {
    this.log.push(`metadata ${what}`);
    const first = this.firstFree(count);
    this.take(first, count);
    return first;
  }
  release(first: number, count: number) {
    this.deferred.push([first, count]);
  }
  async unallocate(first: number, count: number) {
    for (let c = first; c < first + count; c++) this.counts.set(c, this.counts.get(c)! - 1);
  }
  /** What the owner's write-back does once the references are gone from disk. */
  applyReleases() {
    for (const [first, count] of this.deferred.splice(0)) {
      for (let c = first; c < first + count; c++) {
        const n = this.counts.get(c) ?? 0;
        if (n <= 0) throw new Error(`released cluster ${c} twice`);
        this.counts.set(c, n - 1);
      }
    }
  }
}

interface World {
  map: ClusterMap;
  writer: ClusterWriter;
  alloc: ModelAllocator;
  model: Map<number, State>;
  /** References frozen by snapshots: host cluster -> how many. */
  frozen: Map<number, number>;
  /** L1 index -> the L2 table offset when the ordering hook ran (checked against the table made after it). */
  ordering: number[];
}

function makeWorld(extendedL2 = false): World {
  const store = new MemoryStore();
  const l1 = new L1Table(CS, TABLES);
  const cache = new L2Cache(store, CS, 64);
  const map = new ClusterMap({ clusterBits: BITS, extendedL2, dataFile: false }, l1, cache);
  const alloc = new ModelAllocator();
  const w: World = { map, writer: undefined as unknown as ClusterWriter, alloc, model: new Map(), frozen: new Map(), ordering: [] };
  w.writer = new ClusterWriter(map, alloc, {
    beforeReference: async () => {
      alloc.log.push("beforeReference");
    },
    onNewTable: (offset) => alloc.log.push(`table ${offset / CS}`),
  });
  return w;
}

const state = (w: World, c: number): State => w.model.get(c) ?? { kind: "unallocated" };

/** Host clusters a state references. */
function refs(s: State): number[] {
  if (s.kind === "compressed") {
    const first = Math.floor(s.host / CS);
    const last = Math.floor((s.host + s.sectors * 512 - (s.host % 512) - 1) / CS);
    return Array.from({ length: last - first + 1 }, (_, i) => first + i);
  }
  return s.kind !== "unallocated" && s.host !== 0 ? [s.host / CS] : [];
}

function expectedSource(s: State, guestCluster: number): CowSource {
  if (s.kind === "zero") return "zeros";
  if (s.kind === "unallocated") return guestCluster * CS < BACKING ? "backing" : "zeros";
  return s.kind === "compressed" ? "compressed" : "data";
}

/** A write of guest bytes [start, end), done as the engine does it; plans checked against the model. */
async function write(w: World, start: number, end: number, problems: string[]): Promise<void> {
  const { writer, map } = w;
  writer.beginWrite();
  let pos = start;
  while (pos < end) {
    const tableEnd = Math.min(end, (map.l1Index(pos) + 1) * map.l2Coverage);
    const t = await writer.writableTable(pos);
    while (pos < tableEnd) {
      const c = Math.floor(pos / CS);
      const s = state(w, c);
      const plan = writer.planStandard(t, pos, tableEnd);
      const where = `write [${start}, ${end}) at ${pos}`;
      // Data and preallocated zero clusters with COPIED at contiguous hosts keep their hosts: in place when
      // all are data, else rewritten together (the zero ones become data).
      const keeps = (k: State) => (k.kind === "normal" || (k.kind === "zero" && k.host !== 0)) && k.copied;
      let keptEnd = c;
      let zeros = 0;
      while (keptEnd * CS < tableEnd && keeps(state(w, keptEnd)) && (state(w, keptEnd) as { host: number }).host === (s as { host: number }).host + (keptEnd - c) * CS) {
        if (state(w, keptEnd).kind === "zero") zeros++;
        keptEnd++;
      }
      const keptTo = Math.min(tableEnd, keptEnd * CS);
      if (keeps(s) && zeros === 0) {
        if (plan.mode !== "in-place" || plan.hostOffset !== (s as { host: number }).host + (pos % CS) || plan.end !== keptTo) {
          problems.push(`${where}: expected in place to ${keptTo}, got ${JSON.stringify(plan)}`);
        }
        pos = plan.mode === "in-place" ? plan.end : tableEnd;
        continue;
      }
      const wantMode = keeps(s) ? "reuse" : "allocate";
      if (plan.mode !== wantMode || (plan.mode === "reuse" && (plan.runEnd !== keptTo || plan.hostStart !== (s as { host: number }).host))) {
        problems.push(`${where}: ${s.kind} cluster planned as ${JSON.stringify(plan)}, expected ${wantMode}`);
        return;
      }
      const { hostStart, count, runEnd } = await writer.placeRun(plan);
      const writeEnd = Math.min(end, runEnd);
      const fills = writer.planCopyOnWrite(t, plan.clusterStart, count, hostStart, pos, writeEnd, BACKING);
      // Copy-on-write: the partly written first and last clusters, from where their old content is.
      // (A partly written data cluster that keeps its host needs none.)
      const partial = new Set<number>();
      if (pos % CS !== 0) partial.add(c);
      if (writeEnd % CS !== 0) partial.add(Math.floor(writeEnd / CS));
      if (plan.mode === "reuse") for (const p of partial) if (state(w, p).kind === "normal") partial.delete(p);
      const gotFills = fills.map((f) => `${f.guestCluster / CS}:${f.source}`).sort();
      const wantFills = [...partial].map((p) => `${p}:${expectedSource(state(w, p), p)}`).sort();
      if (gotFills.join() !== wantFills.join()) problems.push(`${where}: copy-on-write ${gotFills} expected ${wantFills}`);
      for (const f of fills) {
        for (const [from, to] of f.ranges) {
          if (from < f.guestCluster || to > f.guestCluster + CS || (to > pos && from < writeEnd)) problems.push(`${where}: fill range [${from}, ${to}) overlaps the write`);
        }
      }
      writer.linkRun(t, plan.clusterStart, count, hostStart, (m) => problems.push(`unexpected: ${m}`));
      for (let i = 0; i < count; i++) w.model.set(c + i, { kind: "normal", host: hostStart + i * CS, copied: true });
      pos = runEnd;
    }
  }
  await writer.endWrite();
}

/** Write-zeroes (keep or drop the host clusters) or discard of whole clusters [first, first+count). */
async function clear(w: World, first: number, count: number, op: "zero" | "zero-keep" | "discard", problems: string[]) {
  for (let c = first; c < first + count; c++) {
    const t = await w.writer.writableTable(c * CS);
    const s = state(w, c);
    const to = op === "discard" ? "unallocated" : op === "zero-keep" && s.kind !== "compressed" ? "zero-keep" : "zero";
    const old = w.writer.clearEntry(t, c * CS, to);
    let next: State;
    if (to === "unallocated") next = { kind: "unallocated" };
    else if (to === "zero") next = { kind: "zero", host: 0, copied: false };
    else next = s.kind === "unallocated" ? { kind: "zero", host: 0, copied: false } : { kind: "zero", host: s.host, copied: (s as { copied: boolean }).copied };
    const changed = JSON.stringify(next) !== JSON.stringify(s);
    if (changed !== (old !== undefined)) problems.push(`${op} of cluster ${c} (${s.kind}): changed ${old !== undefined}, expected ${changed}`);
    if (old && to !== "zero-keep") w.writer.release(old, -1);
    w.model.set(c, next);
  }
}

/** A compressed write of one whole unallocated or zero cluster (compression never overwrites data). */
async function compress(w: World, c: number, rand: () => number) {
  const t = await w.writer.writableTable(c * CS);
  const s = state(w, c);
  if (s.kind !== "unallocated" && !(s.kind === "zero" && s.host === 0)) return;
  const first = await w.alloc.allocate(2);
  const host = first * CS + 512 * Math.floor(rand() * 2) + Math.floor(rand() * 512);
  const byteLength = 1 + Math.floor(rand() * (CS - (host % 512)));
  w.writer.setEntry(t, c * CS, { kind: "compressed", hostOffset: host, byteLength });
  const sectors = Math.ceil(((host % 512) + byteLength) / 512);
  // The clusters the data does not touch go back at once.
  const used = new Set(refs({ kind: "compressed", host, sectors }));
  for (const k of [first, first + 1]) if (!used.has(k)) await w.alloc.unallocate(k, 1);
  w.model.set(c, { kind: "compressed", host, sectors });
}

/** Share everything with a snapshot: each reference (and each L2 table) counts twice, nothing is COPIED. */
async function snapshot(w: World) {
  const { map, alloc } = w;
  for (let i = 0; i < TABLES; i++) {
    const off = map.l1.l2Offset(i);
    if (off === 0) continue;
    const t = await map.cache.get(off);
    for (let j = 0; j < ENTRIES; j++) {
      const c = i * ENTRIES + j;
      const s = state(w, c);
      for (const r of refs(s)) {
        alloc.counts.set(r, alloc.counts.get(r)! + 1);
        w.frozen.set(r, (w.frozen.get(r) ?? 0) + 1);
      }
      if (s.kind === "normal" || s.kind === "zero") {
        w.model.set(c, { ...s, copied: false });
        setL2Copied(t.view, j, map, false);
      }
    }
    map.cache.markDirty(t);
    alloc.counts.set(off / CS, alloc.counts.get(off / CS)! + 1);
    w.frozen.set(off / CS, (w.frozen.get(off / CS) ?? 0) + 1);
    map.l1.set(i, off, false);
  }
}

/** Everything the model says against the tables and the counts. */
async function verify(w: World, step: string, problems: string[]) {
  const { map, alloc } = w;
  alloc.applyReleases();
  const want = new Map<number, number>(w.frozen);
  const add = (c: number) => want.set(c, (want.get(c) ?? 0) + 1);
  for (let i = 0; i < TABLES; i++) {
    const off = map.l1.l2Offset(i);
    if (off !== 0) add(off / CS);
    const t: L2Table | undefined = off === 0 ? undefined : await map.cache.get(off);
    for (let j = 0; j < ENTRIES; j++) {
      const c = i * ENTRIES + j;
      const s = state(w, c);
      for (const r of refs(s)) add(r);
      if (!t) {
        if (s.kind !== "unallocated") problems.push(`${step}: cluster ${c} is ${s.kind} without an L2 table`);
        continue;
      }
      const e = w.writer.entry(t, c * CS);
      const got = e.kind === "compressed" ? { kind: e.kind, host: e.compressed!.hostOffset, sectors: e.compressed!.sectors } : e.kind === "unallocated" ? { kind: e.kind } : { kind: e.kind, host: e.hostOffset, copied: e.copied };
      if (JSON.stringify(got) !== JSON.stringify(s)) problems.push(`${step}: cluster ${c} is ${JSON.stringify(got)}, model ${JSON.stringify(s)}`);
      const run = await map.mapRun(c * CS, CS);
      const type = { unallocated: SubclusterType.UNALLOCATED_PLAIN, zero: s.kind === "zero" && s.host !== 0 ? SubclusterType.ZERO_ALLOC : SubclusterType.ZERO_PLAIN, normal: SubclusterType.NORMAL, compressed: SubclusterType.COMPRESSED }[s.kind];
      if (run.type !== type) problems.push(`${step}: mapRun type ${run.type} for cluster ${c}, expected ${type}`);
    }
  }
  for (const c of new Set([...want.keys(), ...alloc.counts.keys()])) {
    const n = alloc.counts.get(c) ?? 0;
    if (n !== (want.get(c) ?? 0)) problems.push(`${step}: host cluster ${c} counted ${n}, referenced ${want.get(c) ?? 0}`);
  }
}

describe("ClusterWriter against a model", () => {
  it("seeded random writes, zeroes, discards, compressed clusters and snapshots", async () => {
    let steps = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const rand = seededRandom(seed * 7919);
      const w = makeWorld();
      const problems: string[] = [];
      for (let i = 0; i < 60 && problems.length === 0; i++) {
        const r = rand();
        const c = Math.floor(rand() * CLUSTERS);
        let step: string;
        if (r < 0.5) {
          // Partial or whole, often spanning clusters and sometimes tables.
          const start = c * CS + (rand() < 0.5 ? Math.floor(rand() * CS) : 0);
          const end = Math.min(SIZE, start + 1 + Math.floor(rand() * (rand() < 0.2 ? 3 * ENTRIES * CS : 4 * CS)));
          step = `write [${start}, ${end})`;
          await write(w, start, end, problems);
        } else if (r < 0.75) {
          const op = (["zero", "zero-keep", "discard"] as const)[Math.floor(rand() * 3)]!;
          const count = Math.min(CLUSTERS - c, 1 + Math.floor(rand() * 6));
          step = `${op} ${c}+${count}`;
          await clear(w, c, count, op, problems);
        } else if (r < 0.93) {
          step = `compress ${c}`;
          await compress(w, c, rand);
        } else {
          step = "snapshot";
          await snapshot(w);
        }
        await verify(w, `seed ${seed} step ${i} (${step})`, problems);
        steps++;
      }
      expect(problems.slice(0, 5)).toEqual([]);
      // Every new L2 table had its refcounts made durable before anything referenced it.
      const log = w.alloc.log;
      for (let k = 0; k < log.length; k++) {
        if (log[k] === "metadata L2 table") expect([log[k + 1], log[k + 2]?.startsWith("table ")]).toEqual(["beforeReference", true]);
      }
      expect(log.filter((l) => l === "metadata L2 table").length).toBeGreaterThan(TABLES);
    }
    expect(steps).toBe(360);
  });

  it("a shared L2 table is copied before it changes, and the old one released", async () => {
    const w = makeWorld();
    const problems: string[] = [];
    await write(w, 0, 3 * CS, problems);
    await verify(w, "first write", problems);
    const before = w.map.l1.l2Offset(0);
    await snapshot(w);
    await write(w, CS + 100, CS + 200, problems);
    await verify(w, "write after snapshot", problems);
    expect(problems).toEqual([]);
    const after = w.map.l1.l2Offset(0);
    expect(after).not.toBe(before);
    expect(w.map.l1.copied(0)).toBe(true);
    // The old table keeps the snapshot's reference only; the new one is the active table's.
    expect([w.alloc.counts.get(before / CS), w.alloc.counts.get(after / CS)]).toEqual([1, 1]);
    // Cluster 1 was shared: it moved (copy-on-write from its data); clusters 0 and 2 stay shared.
    const t = (await w.map.table(0))!;
    expect(w.writer.entry(t, CS).copied).toBe(true);
    expect([w.writer.entry(t, 0).copied, w.writer.entry(t, 2 * CS).copied]).toEqual([false, false]);
  });

  it("external data file: hosts are guest offsets, nothing is allocated or released for data", async () => {
    const store = new MemoryStore();
    const map = new ClusterMap({ clusterBits: BITS, extendedL2: false, dataFile: true }, new L1Table(CS, TABLES), new L2Cache(store, CS, 8));
    const alloc = new ModelAllocator();
    const writer = new ClusterWriter(map, alloc, { beforeReference: async () => undefined });
    const t = await writer.writableTable(0);
    expect(alloc.log).toEqual(["metadata L2 table"]);
    // Unallocated clusters: rewritten at their guest offsets (the run stops before a COPIED data cluster).
    writer.setEntry(t, 5 * CS, { kind: "normal", hostOffset: 5 * CS, copied: true });
    const plan = writer.planStandard(t, 2 * CS + 10, ENTRIES * CS);
    expect(plan).toEqual({ mode: "reuse", clusterStart: 2 * CS, count: 3, runEnd: 5 * CS, hostStart: 2 * CS });
    if (plan.mode !== "reuse") return;
    expect(await writer.placeRun(plan)).toEqual({ hostStart: 2 * CS, count: 3, runEnd: 5 * CS });
    writer.linkRun(t, 2 * CS, 3, 2 * CS);
    // Data clusters of a data-file image at host offset 0 are data (COPIED), and written in place.
    writer.setEntry(t, 0, { kind: "normal", hostOffset: 0, copied: true });
    expect(writer.planStandard(t, 0, ENTRIES * CS)).toEqual({ mode: "in-place", end: CS, hostOffset: 0 });
    expect(writer.planStandard(t, 3 * CS + 1, ENTRIES * CS)).toEqual({ mode: "in-place", end: 6 * CS, hostOffset: 3 * CS + 1 });
    alloc.applyReleases();
    expect(alloc.log).toEqual(["metadata L2 table"]);
    expect([...alloc.counts.values()]).toEqual([1]);
  });

  it("extended L2: subcluster plans", () => {
    const w = makeWorld();
    const sc = CS / 32;
    const entry = (allocBits: number, zeroBits: number, kind: "normal" | "unallocated" | "compressed" = "normal") => ({
      kind,
      hostOffset: kind === "normal" ? 16 * CS : 0,
      copied: true,
      zeroFlag: false,
      reservedBits: false,
      allocBits,
      zeroBits,
    });
    // Writing half of subcluster 3 of a fresh cluster: that subcluster is filled, then allocated.
    expect(w.writer.planExtended(entry(0, 0, "unallocated"), 3 * sc, 3 * sc + sc / 2, false)).toEqual({ movesData: false, fill: [3], allocBits: 1 << 3, zeroBits: 0 });
    // In place over allocated subclusters 0-7: nothing to fill, zero bits of the written ones cleared.
    expect(w.writer.planExtended(entry(0xff, 0xff00), 6 * sc + 1, 9 * sc - 1, true)).toEqual({ movesData: false, fill: [8], allocBits: 0x1ff, zeroBits: 0xfe00 });
    // A shared cluster moves: the span from the first allocated to the last written subcluster is allocated.
    expect(w.writer.planExtended(entry(0x10, 0x0f), 20 * sc, 21 * sc, false)).toEqual({ movesData: true, fill: [], allocBits: 0x1ffff0, zeroBits: 0x0f });
    // A compressed cluster moves whole and becomes all data.
    expect(w.writer.planExtended(entry(0, 0, "compressed"), 0, 1, false)).toEqual({ movesData: true, fill: [], allocBits: 0xffffffff, zeroBits: 0 });
  });

  it("extended L2: seeded writes keep every byte they do not write (snapshots' too), and the counts match the references", async () => {
    // Content model: what each guest byte reads (0 zeros, -1 the backing file's byte, -2 garbage, n > 0 the
    // n-th write), what each host byte holds, and each compressed cluster's bytes. The test performs the
    // writer's plans as the engine does; after every step every guest byte must read as expected.
    const E_ENTRIES = CS / 16;
    const E_CLUSTERS = E_ENTRIES * TABLES;
    const E_SIZE = E_CLUSTERS * CS;
    const SC = CS / 32;
    for (let seed = 1; seed <= 4; seed++) {
      const problems: string[] = [];
      const rand = seededRandom(seed * 104729);
      const w = makeWorld(true);
      const { map, writer, alloc } = w;
      const expected = new Int32Array(E_SIZE);
      for (let b = 0; b < E_SIZE; b++) expected[b] = b < BACKING ? -1 : 0;
      const host = new Int32Array(4096 * CS).fill(-2);
      const compressed = new Map<number, Int32Array>();
      const frozen = new Map<number, number>();
      /** Snapshots: their L1 tables (L2 table offsets) and what every guest byte read when they were taken. */
      const snapshots: Array<{ l1: number[]; content: Int32Array }> = [];
      /** What guest cluster `c` reads through the active tables, or through a snapshot's L1 table `l1`. */
      const readCluster = async (c: number, l1?: number[]): Promise<Int32Array> => {
        const out = new Int32Array(CS);
        const l2Offset = l1 ? l1[Math.floor(c / E_ENTRIES)]! : map.l1.l2Offset(Math.floor(c / E_ENTRIES));
        const t = l2Offset === 0 ? undefined : await map.cache.get(l2Offset);
        const e = t ? writer.entry(t, c * CS) : undefined;
        for (let i = 0; i < CS; i++) {
          const sc = Math.floor(i / SC);
          const g = c * CS + i;
          if (e?.kind === "compressed") out[i] = compressed.get(e.compressed!.hostOffset)![i]!;
          else if (e && e.allocBits & (1 << sc)) out[i] = host[e.hostOffset + i]!;
          else if (e && e.zeroBits & (1 << sc)) out[i] = 0;
          else out[i] = g < BACKING ? -1 : 0;
        }
        return out;
      };
      let writeId = 0;
      for (let step = 0; step < 50 && problems.length === 0; step++) {
        const [r, c] = [rand(), Math.floor(rand() * E_CLUSTERS)];
        let what: string;
        if (r < 0.55) {
          const start = c * CS + Math.floor(rand() * CS);
          const end = Math.min(E_SIZE, start + 1 + Math.floor(rand() * (rand() < 0.3 ? 6 * CS : CS)));
          const id = ++writeId;
          what = `write [${start}, ${end})`;
          writer.beginWrite();
          for (let pos = start; pos < end; ) {
            const tableEnd = Math.min(end, (map.l1Index(pos) + 1) * map.l2Coverage);
            const t = await writer.writableTable(pos);
            for (; pos < tableEnd; pos = Math.min(tableEnd, (Math.floor(pos / CS) + 1) * CS)) {
              const clusterStart = Math.floor(pos / CS) * CS;
              const from = pos - clusterStart;
              const to = Math.min(tableEnd, clusterStart + CS) - clusterStart;
              const e = writer.entry(t, pos);
              const { host: h, reuse } = await writer.extendedHost(t, pos, tableEnd, e);
              const plan = writer.planExtended(e, from, to, reuse);
              const buf = plan.movesData ? await readCluster(clusterStart / CS) : new Int32Array(CS).fill(-2);
              if (!plan.movesData && !reuse && (e.kind === "normal" || e.kind === "compressed")) problems.push(`${what}: data of cluster ${clusterStart / CS} left behind`);
              const old = await readCluster(clusterStart / CS);
              for (const sc of plan.fill) buf.set(old.subarray(sc * SC, (sc + 1) * SC), sc * SC);
              buf.fill(id, from, to);
              // The host bytes the engine writes: all of a moved cluster, else the written span with the filled subclusters.
              const spanStart = plan.movesData ? 0 : plan.fill.includes(Math.floor(from / SC)) ? Math.floor(from / SC) * SC : from;
              const spanEnd = plan.movesData ? CS : plan.fill.includes(Math.floor((to - 1) / SC)) ? (Math.floor((to - 1) / SC) + 1) * SC : to;
              host.set(buf.subarray(spanStart, spanEnd), h + spanStart);
              writer.linkExtended(t, pos, h, plan.allocBits, plan.zeroBits);
              if (!reuse) writer.release(e, h);
            }
          }
          await writer.endWrite();
          expected.fill(id, start, end);
        } else if (r < 0.8) {
          const op = (["zero", "discard", "zero-subclusters"] as const)[Math.floor(rand() * 3)]!;
          what = `${op} ${c}`;
          const t = await writer.writableTable(c * CS);
          if (op === "zero-subclusters") {
            const e = writer.entry(t, c * CS);
            if (e.kind === "compressed") continue;
            const first = Math.floor(rand() * 32);
            const count = 1 + Math.floor(rand() * (32 - first));
            const mask = (count >= 32 ? 0xffffffff : ((1 << count) - 1) << first) >>> 0;
            writer.setBitmap(t, c * CS, (e.allocBits & ~mask) >>> 0, (e.zeroBits | mask) >>> 0);
            expected.fill(0, c * CS + first * SC, c * CS + (first + count) * SC);
          } else {
            const old = writer.clearEntry(t, c * CS, op === "zero" ? "zero" : "unallocated");
            if (old) writer.release(old, -1);
            for (let b = c * CS; b < (c + 1) * CS; b++) expected[b] = op === "zero" || b >= BACKING ? 0 : -1;
          }
        } else if (r < 0.9) {
          what = `compress ${c}`;
          const t = await writer.writableTable(c * CS);
          const e = writer.entry(t, c * CS);
          if (e.kind !== "unallocated" || e.allocBits !== 0) continue;
          const first = await alloc.allocate(1);
          const bytes = await readCluster(c);
          const id = ++writeId;
          bytes.fill(id, 0, 1 + Math.floor(rand() * CS));
          compressed.set(first * CS + 7, bytes);
          writer.setEntry(t, c * CS, { kind: "compressed", hostOffset: first * CS + 7, byteLength: CS - 7 });
          expected.set(bytes, c * CS);
        } else {
          what = "snapshot";
          snapshots.push({ l1: Array.from({ length: TABLES }, (_, i) => map.l1.l2Offset(i)), content: expected.slice() });
          const take = (k: number) => {
            alloc.counts.set(k, alloc.counts.get(k)! + 1);
            frozen.set(k, (frozen.get(k) ?? 0) + 1);
          };
          for (let i = 0; i < TABLES; i++) {
            const off = map.l1.l2Offset(i);
            if (off === 0) continue;
            const t = await map.cache.get(off);
            for (let j = 0; j < E_ENTRIES; j++) {
              const e = writer.entry(t, (i * E_ENTRIES + j) * CS);
              for (let k = 0, cl = referencedClusters(e, CS); cl && k < cl[1]; k++) take(cl[0] + k);
              if (e.kind === "normal") setL2Copied(t.view, j, map, false);
            }
            map.cache.markDirty(t);
            take(off / CS);
            map.l1.set(i, off, false);
          }
        }
        alloc.applyReleases();
        // Every guest byte reads as the model says.
        for (let cl = 0; cl < E_CLUSTERS && problems.length < 3; cl++) {
          const got = await readCluster(cl);
          const i = got.findIndex((v, k) => v !== expected[cl * CS + k]);
          if (i >= 0) problems.push(`seed ${seed} step ${step} (${what}): byte ${cl * CS + i} reads ${got[i]}, expected ${expected[cl * CS + i]}`);
        }
        // Every snapshot still reads what it read when it was taken (nothing shared was written in place).
        for (const [n, snap] of snapshots.entries()) {
          for (let cl = 0; cl < E_CLUSTERS && problems.length < 3; cl++) {
            const got = await readCluster(cl, snap.l1);
            const i = got.findIndex((v, k) => v !== snap.content[cl * CS + k]);
            if (i >= 0) problems.push(`seed ${seed} step ${step} (${what}): snapshot ${n} byte ${cl * CS + i} reads ${got[i]}, expected ${snap.content[cl * CS + i]}`);
          }
        }
        // Counts equal references: tables, data clusters, compressed data, and what snapshots hold.
        const want = new Map(frozen);
        const add = (k: number) => want.set(k, (want.get(k) ?? 0) + 1);
        for (let i = 0; i < TABLES; i++) {
          const off = map.l1.l2Offset(i);
          if (off === 0) continue;
          add(off / CS);
          const t = await map.cache.get(off);
          for (let j = 0; j < E_ENTRIES; j++) {
            const cl = referencedClusters(writer.entry(t, (i * E_ENTRIES + j) * CS), CS);
            for (let k = 0; cl && k < cl[1]; k++) add(cl[0] + k);
          }
        }
        for (const k of new Set([...want.keys(), ...alloc.counts.keys()])) {
          if ((alloc.counts.get(k) ?? 0) !== (want.get(k) ?? 0)) problems.push(`seed ${seed} step ${step} (${what}): cluster ${k} counted ${alloc.counts.get(k) ?? 0}, referenced ${want.get(k) ?? 0}`);
        }
      }
      expect(problems.slice(0, 3)).toEqual([]);
      expect(writeId).toBeGreaterThan(20);
    }
  });
});
