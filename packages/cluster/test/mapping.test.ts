/**
 * ClusterMap and L2Cache against a model: seeded random L1/L2 tables are built from a plain description of
 * each guest (sub)cluster (what it is, where its data lies, COPIED), written to a memory store, and every
 * run `mapRun` answers is checked unit by unit against that description. Runs must also be maximal: a run
 * that stops early stops where the next unit cannot continue it.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { seededRandom } from "@qcowkit/datafile/testing";
import {
  SubclusterType,
  encodeCompressedDescriptor,
  isQcow2Error,
  setL2Bitmap,
  setL2Entry,
  setL2Raw,
  viewOf,
} from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import { ClusterMap, L1Table, L2Cache, type MappedRun } from "../src/index";

const CLUSTER_BITS = 10;
const CS = 2 ** CLUSTER_BITS;

/** What one guest unit (a subcluster with extended L2 entries, else a cluster) is, as the test made it. */
interface Unit {
  type: SubclusterType;
  /** Host offset of the unit's first byte (types with a host cluster), else 0. */
  host: number;
  copied: boolean;
  /** Compressed clusters: the descriptor's place. */
  compressed?: { hostOffset: number; byteLength: number };
}

interface World {
  map: ClusterMap;
  cache: L2Cache;
  units: Unit[];
  unitSize: number;
  tableCoverage: number;
  size: number;
}

const hasHost = (t: SubclusterType) => t === SubclusterType.NORMAL || t === SubclusterType.ZERO_ALLOC || t === SubclusterType.UNALLOCATED_ALLOC;

async function buildWorld(seed: number, extendedL2: boolean): Promise<World> {
  const rand = seededRandom(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;
  const store = new MemoryStore();
  const entries = CS / (extendedL2 ? 16 : 8);
  const tables = 4;
  const l1 = new L1Table(CS, tables);
  const units: Unit[] = [];
  const perCluster = extendedL2 ? 32 : 1;
  const unitSize = CS / perCluster;
  // Host clusters are handed out in order, sometimes skipping one, so neighbours are often contiguous.
  let nextHost = 64 * CS;
  const hostCluster = () => {
    if (rand() < 0.2) nextHost += CS;
    const h = nextHost;
    nextHost += CS;
    return h;
  };
  for (let i = 0; i < tables; i++) {
    const clusterUnits = (state: (sc: number) => Unit) => {
      for (let sc = 0; sc < perCluster; sc++) units.push(state(sc));
    };
    if (i === 2) {
      // No L2 table: the whole range is unallocated.
      for (let j = 0; j < entries; j++) clusterUnits(() => ({ type: SubclusterType.UNALLOCATED_PLAIN, host: 0, copied: false }));
      continue;
    }
    const tableOffset = (8 + i) * CS;
    l1.set(i, tableOffset, true);
    const bytes = new Uint8Array(CS);
    const view = viewOf(bytes);
    // Long stretches of one kind, as real images have.
    let kind = "unallocated";
    for (let j = 0; j < entries; j++) {
      if (rand() < 0.3) kind = pick(["unallocated", "zero", "zero-alloc", "normal", "normal", "compressed"]);
      const copied = rand() < 0.8;
      if (kind === "compressed") {
        const hostOffset = nextHost + Math.floor(rand() * 8) * 512 + Math.floor(rand() * 512);
        nextHost += 2 * CS;
        const byteLength = 1 + Math.floor(rand() * CS);
        const d = encodeCompressedDescriptor(hostOffset, byteLength, CLUSTER_BITS);
        setL2Raw(view, j, extendedL2, d.hi | 0x40000000, d.lo);
        // QEMU's descriptor keeps whole 512-byte sectors: the length read back ends at a sector boundary.
        const end = Math.ceil((hostOffset + byteLength) / 512) * 512;
        clusterUnits(() => ({ type: SubclusterType.COMPRESSED, host: 0, copied: false, compressed: { hostOffset, byteLength: end - hostOffset } }));
      } else if (!extendedL2) {
        if (kind === "unallocated") clusterUnits(() => ({ type: SubclusterType.UNALLOCATED_PLAIN, host: 0, copied: false }));
        else if (kind === "zero") {
          setL2Entry(view, j, false, 0, { zero: true });
          clusterUnits(() => ({ type: SubclusterType.ZERO_PLAIN, host: 0, copied: false }));
        } else {
          const host = hostCluster();
          setL2Entry(view, j, false, host, { copied, zero: kind === "zero-alloc" });
          const type = kind === "zero-alloc" ? SubclusterType.ZERO_ALLOC : SubclusterType.NORMAL;
          clusterUnits(() => ({ type, host, copied }));
        }
      } else {
        // Extended entries: a host cluster or none, then each subcluster allocated, zero or neither.
        const host = kind === "unallocated" || kind === "zero" ? 0 : hostCluster();
        let alloc = 0;
        let zero = 0;
        const states: Array<"alloc" | "zero" | "none"> = [];
        for (let sc = 0; sc < 32; sc++) {
          const s = host === 0 ? pick(["zero", "none"] as const) : pick(["alloc", "alloc", "zero", "none"] as const);
          states.push(s);
          if (s === "alloc") alloc |= 1 << sc;
          if (s === "zero") zero |= 1 << sc;
        }
        setL2Entry(view, j, true, host, { copied: host !== 0 && copied });
        setL2Bitmap(view, j, alloc >>> 0, zero >>> 0);
        clusterUnits((sc) => {
          const s = states[sc]!;
          if (host === 0) return { type: s === "zero" ? SubclusterType.ZERO_PLAIN : SubclusterType.UNALLOCATED_PLAIN, host: 0, copied: false };
          const type = s === "alloc" ? SubclusterType.NORMAL : s === "zero" ? SubclusterType.ZERO_ALLOC : SubclusterType.UNALLOCATED_ALLOC;
          return { type, host: host + sc * unitSize, copied };
        });
      }
    }
    await store.write(tableOffset, bytes);
  }
  const cache = new L2Cache(store, CS, 2);
  const map = new ClusterMap({ clusterBits: CLUSTER_BITS, extendedL2, dataFile: false }, l1, cache);
  return { map, cache, units, unitSize, tableCoverage: entries * CS, size: tables * entries * CS };
}

/** Does unit `b` continue a run whose unit `a` lies `distance` bytes before it? */
function continues(a: Unit, b: Unit, distance: number): boolean {
  if (a.type !== b.type || a.copied !== b.copied || a.type === SubclusterType.COMPRESSED) return false;
  return !hasHost(a.type) || b.host === a.host + distance;
}

/** What is wrong with `run` (the answer for [start, limit)), or undefined. Plain checks: thousands of runs. */
function runProblem(w: World, run: MappedRun, start: number, limit: number): string | undefined {
  const end = start + run.byteLength;
  const at = `run [${start}, ${end}) of [${start}, ${limit})`;
  if (run.guestOffset !== start || run.byteLength <= 0 || end > limit) return `${at}: bad extent`;
  if (Math.floor((end - 1) / w.tableCoverage) !== Math.floor(start / w.tableCoverage)) return `${at}: crosses an L2 table`;
  const first = Math.floor(start / w.unitSize);
  const last = Math.floor((end - 1) / w.unitSize);
  const u0 = w.units[first]!;
  if (run.type !== u0.type || run.copied !== u0.copied) return `${at}: type ${run.type}/${run.copied}, expected ${u0.type}/${u0.copied}`;
  if (u0.type === SubclusterType.COMPRESSED) {
    if (JSON.stringify(run.compressed) !== JSON.stringify(u0.compressed)) return `${at}: descriptor ${JSON.stringify(run.compressed)}`;
    if (Math.floor((end - 1) / CS) !== Math.floor(start / CS)) return `${at}: compressed run longer than its cluster`;
  } else if (run.hostOffset !== (hasHost(u0.type) ? u0.host + (start % w.unitSize) : 0)) {
    return `${at}: host ${run.hostOffset}`;
  }
  // A compressed run is its whole cluster (checked above); other runs hold units that continue the first.
  for (let u = first + 1; u <= last && u0.type !== SubclusterType.COMPRESSED; u++) {
    if (!continues(u0, w.units[u]!, (u - first) * w.unitSize)) return `${at}: unit ${u} does not belong to it`;
  }
  // Maximal: stopped at the limit, a table boundary, or a unit that does not continue the run.
  if (end < limit && end % w.tableCoverage !== 0 && end % w.unitSize === 0) {
    const next = Math.floor(end / w.unitSize);
    if (continues(u0, w.units[next]!, (next - first) * w.unitSize)) return `${at}: stopped early`;
  }
  return undefined;
}

describe("ClusterMap against a model", () => {
  for (const extendedL2 of [false, true]) {
    it(`${extendedL2 ? "extended" : "standard"} L2 entries: every run matches the tables it was built from`, async () => {
      for (let seed = 1; seed <= 3; seed++) {
        const w = await buildWorld(seed * 31 + (extendedL2 ? 7 : 0), extendedL2);
        const rand = seededRandom(seed);
        // Whole-image walk, then random windows at random (unaligned) offsets.
        const walks: Array<[number, number]> = [[0, w.size]];
        for (let i = 0; i < 30; i++) {
          const start = Math.floor(rand() * w.size);
          walks.push([start, Math.min(w.size, start + 1 + Math.floor(rand() * 3 * w.tableCoverage))]);
        }
        let runs = 0;
        const problems: string[] = [];
        for (const [from, to] of walks) {
          for (let pos = from; pos < to; ) {
            const run = await w.map.mapRun(pos, to - pos);
            const problem = runProblem(w, run, pos, to);
            if (problem) problems.push(problem);
            // The cached answer is the same one once the table is in the cache.
            if (JSON.stringify(w.map.mapRunCached(pos, to - pos)) !== JSON.stringify(run)) problems.push(`mapRunCached differs at ${pos}`);
            pos += run.byteLength;
            runs++;
          }
          w.cache.trim(true);
        }
        expect(problems.slice(0, 5)).toEqual([]);
        expect(runs).toBeGreaterThan(100);
      }
    });
  }

  it("mapRunCached needs the table in the cache; trim drops clean tables only", async () => {
    const w = await buildWorld(99, false);
    const offsets = [0, w.tableCoverage, 3 * w.tableCoverage];
    for (const o of offsets) await w.map.mapRun(o, CS);
    expect(w.cache.overCapacity).toBe(true);
    const dirty = w.cache.peek(8 * CS)!;
    w.cache.markDirty(dirty);
    w.cache.trim();
    // The least recently used clean table went; the dirty one stays whatever its age.
    expect(w.cache.peek(8 * CS)).toBe(dirty);
    expect(w.map.mapRunCached(w.tableCoverage, CS)).toBeUndefined();
    expect(w.map.mapRunCached(3 * w.tableCoverage, CS)).toBeDefined();
    // The unallocated range needs no table at all.
    expect(w.map.mapRunCached(2 * w.tableCoverage, CS)?.type).toBe(SubclusterType.UNALLOCATED_PLAIN);
  });

  it("written-back tables read back as changed", async () => {
    const w = await buildWorld(5, false);
    const t = (await w.map.table(0))!;
    setL2Entry(t.view, 3, false, 200 * CS, { copied: true });
    w.cache.markDirty(t);
    expect(await w.cache.writeBack()).toBe(1);
    expect(w.cache.hasDirty).toBe(false);
    w.cache.clear();
    const run = await w.map.mapRun(3 * CS, CS);
    expect([run.type, run.hostOffset, run.copied]).toEqual([SubclusterType.NORMAL, 200 * CS, true]);
  });

  it("refuses entries QEMU calls corrupt, with QEMU's messages", async () => {
    const w = await buildWorld(11, false);
    const t = (await w.map.table(0))!;
    setL2Entry(t.view, 0, false, 200 * CS + 512, { copied: true });
    const e = await w.map.mapRun(0, CS).then(() => undefined, (x: unknown) => x);
    expect(isQcow2Error(e) && e.code).toBe("CORRUPT");
    expect(String((e as Error).message)).toBe("Cluster allocation offset 0x32200 unaligned (L2 offset: 0x2000, L2 index: 0)");
    w.map.l1.set(1, 9 * CS + 512, true);
    expect(() => w.map.l2TableOffset(1)).toThrow("L2 table offset 0x2600 unaligned (L1 index: 0x1)");
  });
});
