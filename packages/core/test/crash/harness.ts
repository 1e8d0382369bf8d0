/**
 * Power-loss simulation for scripted workloads. The qcow2 store (and the external data file store) sit in
 * FaultInjectingStores inside one "power domain": after the N-th counted operation (write, flush, discard,
 * write-zeroes, resize) of either store completes, the power fails for both. What the disks hold afterwards is
 * what was flushed, plus (for the reordering variant) a seeded random subset of the unflushed operations.
 *
 * After each crash: the image opens (read-write for a dirty lazy-refcount image, which repairs it), the check
 * finds no corruption (leaks allowed), and every guest byte acknowledged before the last completed flush reads
 * back. Bytes touched after that flush may read as their old value or as any value written since.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { FaultInjectingStore } from "@qcowkit/datafile/testing";
import { Qcow2Error, type ByteStore } from "@qcowkit/spec";
import type { BlockImage } from "../../src/block-image";
import { amendQcow2, type AmendOptions } from "../../src/amend";
import { checkImage, type CheckReport } from "../../src/check";
import { createQcow2, type Qcow2CreateOptions } from "../../src/create";
import { Qcow2Image } from "../../src/qcow2-image";
import { applySnapshot, createSnapshot, deleteSnapshot } from "../../src/snapshot-ops";

export type Step =
  | { op: "write"; offset: number; length: number; pattern: number; compressed?: boolean }
  /** Writes in flight together (disjoint bytes; they may share clusters), as a server issues them. */
  | { op: "writes"; writes: Array<{ offset: number; length: number; pattern: number }> }
  | { op: "zero"; offset: number; length: number; unmap?: boolean }
  | { op: "discard"; offset: number; length: number }
  | { op: "flush" }
  | { op: "resize"; size: number }
  | { op: "snapshot"; name: string }
  | { op: "delete-snapshot"; name: string }
  | { op: "apply-snapshot"; name: string }
  | { op: "amend"; options: AmendOptions };

export interface Workload {
  name: string;
  create: Qcow2CreateOptions;
  /** An external data file. */
  dataFile?: boolean;
  /** A backing image (qcow2, this size) whose guest bytes are `backingPattern(offset)`. */
  backing?: { size: number };
  /**
   * A known engine issue: problems matching it are counted apart (the test asserts they still occur, so
   * that the entry is removed once the engine is fixed).
   */
  knownIssue?: { pattern: RegExp; why: string };
  steps: Step[];
}

/** Guest bytes of the backing image: a pattern that differs from cluster to cluster. */
export function backingByte(offset: number): number {
  return ((offset >>> 12) * 37 + 11) & 0xff || 1;
}

/** Bytes of a write step: `pattern` varied along the range so that misplaced data is noticed. */
export function stepBytes(step: { offset: number; length: number; pattern: number }): Uint8Array {
  const out = new Uint8Array(step.length);
  for (let i = 0; i < step.length; i++) out[i] = (step.pattern + ((step.offset + i) >>> 9)) & 0xff || step.pattern;
  return out;
}

/** Receives the operation log of every run when set (debugging). */
export let debugLog: ((line: string) => void) | undefined;
export function setDebugLog(log: ((line: string) => void) | undefined): void {
  debugLog = log;
}

/** Counts operations over every store of the domain and cuts the power for all of them at once. */
export class PowerDomain {
  count = 0;
  crashed = false;
  private readonly faults: FaultInjectingStore[] = [];

  /** Set to receive a line per counted operation (debugging). */
  log: ((line: string) => void) | undefined;

  constructor(private readonly limit: number) {}

  /** A store whose counted operations count here; the power fails after the `limit`-th. */
  wrap(fault: FaultInjectingStore): ByteStore {
    this.faults.push(fault);
    const counted = async <T>(run: () => Promise<T>, what: string): Promise<T> => {
      if (this.crashed) throw new Qcow2Error("IO_ERROR", "simulated power loss", { errno: "EIO" });
      const result = await run();
      this.log?.(`${this.count + 1} ${fault.name} ${what}`);
      if (++this.count >= this.limit) this.powerFail();
      return result;
    };
    return {
      get readOnly() {
        return fault.readOnly;
      },
      name: fault.name,
      read: (o, into) => fault.read(o, into),
      size: () => fault.size(),
      close: async () => undefined, // the fault store stays open: its state is examined after the run
      write: (o, d) => counted(() => fault.write(o, d), `write ${o} +${d.byteLength}`),
      flush: () => counted(() => fault.flush(), "flush"),
      resize: (s, p) => counted(() => fault.resize(s, p), `resize ${s}`),
      discard: (o, n) => counted(() => fault.discard(o, n), `discard ${o} +${n}`),
      writeZeroes: (o, n, u) => counted(() => fault.writeZeroes(o, n, u), `writeZeroes ${o} +${n}`),
    };
  }

  powerFail(): void {
    this.crashed = true;
    for (const f of this.faults) f.crash();
  }
}

/** A guest-content model: what reads must return. */
class Model {
  /** Guest content of each internal snapshot, by name. */
  readonly snapshots = new Map<string, Uint8Array>();
  constructor(public bytes: Uint8Array) {}
}

interface Prepared {
  meta: MemoryStore;
  data: MemoryStore | undefined;
  backing: MemoryStore | undefined;
  virtualSize: number;
  /** The guest bytes before the workload (the backing image's, or zeros). */
  initial: Uint8Array;
}

/** A MemoryStore that survives being closed (templates are read by many copies). */
function template(name: string): MemoryStore {
  return Object.assign(new MemoryStore({ size: 0, name }), { close: async () => undefined });
}

/** Create the workload's image (and data file and backing image) once; each run works on copies. */
export async function prepare(w: Workload): Promise<Prepared> {
  let backing: MemoryStore | undefined;
  if (w.backing) {
    backing = template("backing.qcow2");
    await createQcow2(backing, { size: w.backing.size });
    const img = await Qcow2Image.open(backing);
    const chunk = new Uint8Array(65536);
    for (let off = 0; off < w.backing.size; off += chunk.byteLength) {
      for (let i = 0; i < chunk.byteLength; i++) chunk[i] = backingByte(off + i);
      await img.write(off, chunk.subarray(0, Math.min(chunk.byteLength, w.backing.size - off)));
    }
    await img.close();
  }
  const meta = template("image.qcow2");
  const data = w.dataFile ? template("image.data") : undefined;
  await createQcow2(
    meta,
    { ...w.create, ...(data ? { dataFile: "image.data" } : {}), ...(backing ? { backingFile: "backing.qcow2", backingFormat: "qcow2" } : {}) },
    data ? { dataStore: data } : {},
  );
  const initial = new Uint8Array(w.create.size);
  for (let i = 0; i < Math.min(w.create.size, w.backing?.size ?? 0); i++) initial[i] = backingByte(i);
  return { meta, data, backing, virtualSize: w.create.size, initial };
}

async function openBacking(p: Prepared): Promise<BlockImage | null> {
  if (!p.backing) return null;
  return Qcow2Image.open(new MemoryStore({ base: p.backing, size: await p.backing.size(), name: "backing.qcow2" }), {
    readOnly: true,
  });
}

function copyOf(store: MemoryStore, size: number, name: string): MemoryStore {
  return new MemoryStore({ base: store, size, name });
}

interface Allowed {
  offset: number;
  length: number;
  /** The bytes the range may hold instead of the flushed model's (undefined: zeros). */
  bytes: Uint8Array | undefined;
}

export interface RunResult {
  /** Counted operations the workload made (when it ran to the end). */
  operations: number;
  crashed: boolean;
}

export interface CrashOutcome {
  crashAfter: number;
  variant: string;
  problems: string[];
}

/**
 * Run the workload with the power failing after `crashAfter` operations, then check every variant of the
 * disks' state (flushed only; flushed plus seeded subsets of the unflushed operations).
 */
export async function crashAndCheck(
  w: Workload,
  p: Prepared,
  crashAfter: number,
  keepSeeds: number[],
  inspect?: (variant: string, meta: MemoryStore, data: MemoryStore | undefined) => Promise<void>,
): Promise<{ run: RunResult; outcomes: CrashOutcome[] }> {
  const metaSize = await p.meta.size();
  const dataSize = p.data ? await p.data.size() : 0;
  const domain = new PowerDomain(crashAfter);
  domain.log = debugLog;
  const metaFault = new FaultInjectingStore(copyOf(p.meta, metaSize, "image.qcow2"));
  const dataFault = p.data ? new FaultInjectingStore(copyOf(p.data, dataSize, "image.data")) : undefined;
  const backingModel = (o: number) => (w.backing && o < w.backing.size ? backingByte(o) : 0);
  const model = new Model(p.initial.slice());
  let durable = model.bytes.slice();
  let durableSize = p.virtualSize;
  let allowed: Allowed[] = [];
  const sizes = new Set<number>([p.virtualSize]);
  let image: Qcow2Image | undefined;
  const stepsDone = { n: 0 };
  try {
    image = await Qcow2Image.open(domain.wrap(metaFault), {
      ...(dataFault ? { dataFile: domain.wrap(dataFault) } : {}),
      backing: await openBacking(p),
    });
    for (const step of w.steps) {
      // What this step may leave behind if the power fails during it or before the next flush.
      allowed.push(...allowance(step, model, backingModel));
      if (step.op === "resize") sizes.add(step.size);
      await runStep(image, step);
      applyToModel(model, step, backingModel);
      if (step.op === "flush") {
        durable = model.bytes.slice();
        durableSize = model.bytes.byteLength;
        allowed = [];
        sizes.clear();
        sizes.add(durableSize);
      }
      stepsDone.n++;
    }
    await image.close();
    image = undefined;
    // A clean close is a completed flush.
    durable = model.bytes.slice();
    durableSize = model.bytes.byteLength;
    allowed = [];
    sizes.clear();
    sizes.add(durableSize);
  } catch (e) {
    if (!domain.crashed) throw e;
  }
  const run: RunResult = { operations: domain.count, crashed: domain.crashed };
  if (!domain.crashed) domain.powerFail();
  const variants: Array<[string, () => Promise<MemoryStore>, (() => Promise<MemoryStore>) | undefined]> = [
    ["flushed", () => metaFault.durableImage(), dataFault ? () => dataFault.durableImage() : undefined],
    ...keepSeeds.map(
      (seed) =>
        [
          `kept unflushed (seed ${seed})`,
          () => metaFault.crashImage({ seed }),
          dataFault ? () => dataFault.crashImage({ seed: seed + 1 }) : undefined,
        ] as [string, () => Promise<MemoryStore>, (() => Promise<MemoryStore>) | undefined],
    ),
  ];
  const outcomes: CrashOutcome[] = [];
  for (const [variant, makeMeta, makeData] of variants) {
    const meta = await makeMeta();
    const data = makeData ? await makeData() : undefined;
    if (inspect) await inspect(variant, new MemoryStore({ base: meta, size: await meta.size() }), data && new MemoryStore({ base: data, size: await data.size() }));
    const problems = await verifyAfterCrash(p, meta, data, {
      durable,
      durableSize,
      allowed,
      sizes,
    });
    outcomes.push({ crashAfter, variant, problems });
  }
  return { run, outcomes };
}

async function runStep(image: Qcow2Image, step: Step): Promise<void> {
  switch (step.op) {
    case "write":
      return image.write(step.offset, stepBytes(step), step.compressed ? { compressed: true } : {});
    case "writes":
      await Promise.all(step.writes.map((w) => image.write(w.offset, stepBytes(w))));
      return;
    case "zero":
      return image.writeZeroes(step.offset, step.length, { unmap: step.unmap ?? false });
    case "discard":
      return image.discard(step.offset, step.length);
    case "flush":
      return image.flush();
    case "resize":
      return image.resize(step.size, { shrink: true });
    case "snapshot":
      await createSnapshot(image, step.name, { dateSeconds: 0, dateNanoseconds: 0 });
      return;
    case "delete-snapshot":
      return deleteSnapshot(image, { name: step.name });
    case "apply-snapshot":
      return applySnapshot(image, step.name);
    case "amend":
      return amendQcow2(image, step.options);
  }
}

function applyToModel(model: Model, step: Step, backingModel: (o: number) => number): void {
  switch (step.op) {
    case "write":
      model.bytes.set(stepBytes(step), step.offset);
      return;
    case "writes":
      for (const w of step.writes) model.bytes.set(stepBytes(w), w.offset);
      return;
    case "zero":
      model.bytes.fill(0, step.offset, step.offset + step.length);
      return;
    case "discard": {
      // Whole clusters read as zeros afterwards; partial ones keep their data. The workloads discard whole
      // clusters only, so the range reads as zeros.
      model.bytes.fill(0, step.offset, step.offset + step.length);
      return;
    }
    case "resize": {
      const next = new Uint8Array(step.size);
      next.set(model.bytes.subarray(0, Math.min(step.size, model.bytes.byteLength)));
      // Growing: the new area reads as zeros (the backing file is not exposed by growing the overlay).
      model.bytes = next;
      void backingModel;
      return;
    }
    case "snapshot":
      model.snapshots.set(step.name, model.bytes.slice());
      return;
    case "delete-snapshot":
      model.snapshots.delete(step.name);
      return;
    case "apply-snapshot":
      model.bytes = model.snapshots.get(step.name)!.slice();
      return;
    default:
      return;
  }
}

/** The ranges a step may leave with other bytes than the model's before it (after a crash). */
function allowance(step: Step, model: Model, backingModel: (o: number) => number): Allowed[] {
  switch (step.op) {
    case "write":
      return [{ offset: step.offset, length: step.length, bytes: stepBytes(step) }];
    case "writes":
      return step.writes.map((w) => ({ offset: w.offset, length: w.length, bytes: stepBytes(w) }));
    case "zero":
    case "discard":
      return [
        { offset: step.offset, length: step.length, bytes: undefined },
        { offset: step.offset, length: step.length, bytes: rangeOf(backingModel, step.offset, step.length) },
      ];
    case "resize":
      if (step.size < model.bytes.byteLength) {
        return [{ offset: step.size, length: model.bytes.byteLength - step.size, bytes: undefined }];
      }
      return [];
    case "apply-snapshot": {
      // Until the apply is flushed, the disk may read as before or as the snapshot (same size here).
      const snap = model.snapshots.get(step.name)!;
      return [{ offset: 0, length: snap.byteLength, bytes: snap }];
    }
    default:
      return [];
  }
}

function rangeOf(f: (o: number) => number, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = f(offset + i);
  return out;
}

interface Expectation {
  durable: Uint8Array;
  durableSize: number;
  allowed: Allowed[];
  sizes: Set<number>;
}

/** Open the crashed image, check it, compare its guest bytes with what must have survived. */
async function verifyAfterCrash(
  p: Prepared,
  meta: MemoryStore,
  data: MemoryStore | undefined,
  want: Expectation,
): Promise<string[]> {
  const problems: string[] = [];
  // The stores outlive each look at them.
  for (const s of [meta, data]) if (s) Object.assign(s, { close: async () => undefined });
  const open = async (readOnly: boolean, checkMode = false) =>
    Qcow2Image.open(meta, {
      readOnly,
      checkMode,
      ...(data ? { dataFile: data } : {}),
      backing: await openBacking(p),
    });
  // First what is on disk, as found (a dirty lazy-refcount image is exempt: its refcounts are stale).
  let image = await open(true, true);
  let report: CheckReport = await checkImage(image);
  const dirty = image.isDirty;
  await image.close();
  if (dirty) {
    // A read-write open repairs it (as QEMU does); then the check must be clean.
    image = await open(false);
    await image.close();
    image = await open(true, true);
    report = await checkImage(image);
    await image.close();
  }
  if (report.corruptions || report.checkErrors || report.failure) {
    const errors = report.messages.filter((m) => !m.startsWith("Leaked cluster"));
    problems.push(`check: ${report.corruptions} corruptions, ${report.checkErrors} check errors: ${errors.join(" | ")}`);
  }
  image = await open(true);
  try {
    if (!want.sizes.has(image.virtualSize)) {
      problems.push(`virtual size ${image.virtualSize}, expected one of ${[...want.sizes].join(", ")}`);
    }
    const size = Math.min(image.virtualSize, want.durableSize);
    const got = new Uint8Array(size);
    await image.read(0, got);
    let reported = 0;
    const CHUNK = 4096;
    for (let i = 0; i < size && reported < 4; i++) {
      if (i % CHUNK === 0) {
        // Whole chunks that match are skipped without looking at single bytes.
        const end = Math.min(size, i + CHUNK);
        if (Buffer.compare(got.subarray(i, end), want.durable.subarray(i, end)) === 0) {
          i = end - 1;
          continue;
        }
      }
      if (got[i] === want.durable[i]) continue;
      if (want.allowed.some((a) => i >= a.offset && i < a.offset + a.length && (a.bytes ? a.bytes[i - a.offset] : 0) === got[i])) continue;
      problems.push(`guest byte ${i}: read ${got[i]}, flushed ${want.durable[i]}`);
      reported++;
    }
  } finally {
    await image.close();
  }
  return problems;
}
