/**
 * convertImages copying store to store (ByteStore.copyFrom and zeroSectors: the data never passes through
 * JavaScript) must give exactly what the copy through memory gives: the same target bytes, qcow2 metadata
 * and layout included, for sparse sources with zero runs of every size and alignment.
 */
import { MemoryStore } from "@qcowkit/datafile";
import type { ByteStore, StorePreallocation } from "@qcowkit/spec";
import { describe, expect, it } from "vitest";
import { convertImages, createQcow2, Qcow2Image, RawImage, StoreSlice, type BlockImage, type Qcow2CreateOptions } from "../src/index";
import { rng } from "./helpers";

/** Only the required ByteStore methods of another store: convert must go through memory. */
class PlainStore implements ByteStore {
  constructor(protected readonly inner: ByteStore) {}
  get readOnly() {
    return this.inner.readOnly;
  }
  get name() {
    return this.inner.name;
  }
  read(offset: number, into: Uint8Array) {
    return this.inner.read(offset, into);
  }
  write(offset: number, data: Uint8Array) {
    return this.inner.write(offset, data);
  }
  flush() {
    return this.inner.flush();
  }
  size() {
    return this.inner.size();
  }
  resize(size: number, p?: StorePreallocation) {
    return this.inner.resize(size, p);
  }
  discard(offset: number, length: number) {
    return this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, unmap?: boolean) {
    return this.inner.writeZeroes(offset, length, unmap);
  }
  /** A no-op: an image closes the store it took over, and the tests go on reading it afterwards. */
  async close() {}
}

/** Adds copyFrom and zeroSectors (written here from read and write) and counts their calls. */
class CopyingStore extends PlainStore {
  copies = 0;
  copiedBytes = 0;
  scans = 0;
  /** Bytes written through write() (copyFrom's own writes not counted). */
  writtenThroughMemory = 0;
  override write(offset: number, data: Uint8Array) {
    this.writtenThroughMemory += data.byteLength;
    return this.inner.write(offset, data);
  }
  /** Copies that also marked zero sectors (the scan argument). */
  scanningCopies = 0;
  async copyFrom(source: ByteStore, sourceOffset: number, offset: number, length: number, scan?: Uint8Array): Promise<void> {
    this.copies++;
    this.copiedBytes += length;
    const buf = new Uint8Array(length);
    await source.read(sourceOffset, buf);
    if (scan) {
      this.scanningCopies++;
      expect(scan.length).toBe(Math.ceil(length / 512));
      for (let s = 0; s < scan.length; s++) scan[s] = buf.subarray(s * 512, (s + 1) * 512).every((b) => b === 0) ? 1 : 0;
    }
    await this.inner.write(offset, buf);
  }
  async zeroSectors(offset: number, length: number): Promise<Uint8Array> {
    this.scans++;
    const buf = new Uint8Array(length);
    await this.inner.read(offset, buf);
    const flags = new Uint8Array(Math.ceil(length / 512));
    for (let s = 0; s < flags.length; s++) flags[s] = buf.subarray(s * 512, (s + 1) * 512).every((b) => b === 0) ? 1 : 0;
    return flags;
  }
}

/**
 * A sparse guest disk: random data, zero runs from one sector to hundreds of KiB, some single non-zero bytes.
 * `dense`: zero runs of at most 7 sectors (QEMU's default -S keeps them in the data) but for one of 64 KiB.
 */
function sparseDisk(size: number, seed: number, dense = false): Uint8Array {
  const r = rng(seed);
  if (dense) {
    const disk = new Uint8Array(size);
    for (let i = 0; i < size; i++) disk[i] = 1 + Math.floor(r() * 255);
    for (let n = 0; n < 40; n++) {
      const at = Math.floor((r() * size) / 512) * 512;
      disk.fill(0, at, Math.min(size, at + 512 * (1 + Math.floor(r() * 7))));
    }
    const hole = Math.floor((r() * (size - 65536)) / 512) * 512;
    disk.fill(0, hole, hole + 65536);
    return disk;
  }
  const disk = new Uint8Array(size);
  let pos = 0;
  while (pos < size) {
    const kind = r();
    const sectors = 1 + Math.floor(r() * (kind < 0.3 ? 8 : 400));
    const len = Math.min(size - pos, sectors * 512);
    if (kind < 0.55) {
      for (let i = 0; i < len; i++) disk[pos + i] = 1 + Math.floor(r() * 255);
    } else if (kind < 0.65) {
      // A zero run with one non-zero byte at its last or first byte.
      disk[pos + (r() < 0.5 ? 0 : len - 1)] = 7;
    }
    pos += len;
  }
  return disk;
}

async function qcow2On(meta: ByteStore, options: Qcow2CreateOptions, data?: ByteStore): Promise<Qcow2Image> {
  await createQcow2(meta, options, data ? { dataStore: data } : {});
  return Qcow2Image.open(meta, data ? { dataFile: data } : {});
}

async function bytesOf(store: ByteStore): Promise<Uint8Array> {
  const out = new Uint8Array(await store.size());
  await store.read(0, out);
  return out;
}

interface TargetCase {
  name: string;
  options?: Qcow2CreateOptions;
  raw?: boolean;
  dataFile?: boolean;
  sparseBytes?: number;
}

const SIZE = 23 * 1024 * 1024 + 512 * 3;
const TARGETS: TargetCase[] = [
  { name: "qcow2 64k", options: { size: SIZE } },
  { name: "qcow2 512-byte clusters", options: { size: SIZE, clusterSize: 512 } },
  { name: "qcow2 2M clusters, refcount_bits=1", options: { size: SIZE, clusterSize: 2 * 1024 * 1024, refcountBits: 1 } },
  { name: "qcow2 v2 4k", options: { size: SIZE, version: 2, clusterSize: 4096 } },
  { name: "qcow2 -S 64k", options: { size: SIZE }, sparseBytes: 65536 },
  { name: "qcow2 -S 0", options: { size: SIZE }, sparseBytes: 0 },
  { name: "qcow2 data file", options: { size: SIZE, dataFile: "d.raw" }, dataFile: true },
  { name: "qcow2 data file raw", options: { size: SIZE, dataFile: "d.raw", dataFileRaw: true }, dataFile: true },
  { name: "raw", raw: true },
];

/** Convert `source` (made by `makeSource` on the given kind of store) into a fresh target of `t`. */
async function convertInto(t: TargetCase, source: BlockImage, copying: boolean, batchBytes?: number) {
  const wrap = (s: ByteStore) => (copying ? new CopyingStore(s) : new PlainStore(s));
  const meta = wrap(new MemoryStore({ name: "t.qcow2" }));
  const data = t.dataFile ? wrap(new MemoryStore({ name: "d.raw" })) : undefined;
  let target: BlockImage;
  if (t.raw) {
    await meta.resize(SIZE);
    target = await RawImage.open(meta);
  } else {
    target = await qcow2On(meta, t.options!, data);
  }
  await convertImages([source], target, {
    targetZeroInit: true,
    ...(t.sparseBytes !== undefined && { sparseBytes: t.sparseBytes }),
    ...(batchBytes !== undefined && { batchBytes }),
  });
  await target.flush();
  return { target, meta, data };
}

describe("convert store to store", () => {
  for (const t of TARGETS) {
    it(`raw and qcow2 sources into ${t.name}: the same bytes as the copy through memory`, async () => {
      for (const seed of [1, 2]) {
        const disk = sparseDisk(SIZE, seed * 7919 + t.name.length);
        for (const sourceKind of ["raw", "qcow2"] as const) {
          // The source, on a store that can scan and be copied from.
          const srcStore = new CopyingStore(new MemoryStore({ name: "s" }));
          let source: BlockImage;
          if (sourceKind === "raw") {
            await srcStore.write(0, disk);
            source = await RawImage.open(srcStore);
          } else {
            const img = await qcow2On(srcStore, { size: SIZE, clusterSize: 4096 });
            // Written in pieces, skipping all-zero pieces, so the source has unallocated holes too.
            for (let at = 0; at < SIZE; at += 128 * 1024) {
              const piece = disk.subarray(at, Math.min(SIZE, at + 128 * 1024));
              if (piece.some((b) => b !== 0)) await img.write(at, piece);
            }
            await img.flush();
            source = img;
          }
          const viaMemory = await convertInto(t, source, false);
          const viaStores = await convertInto(t, source, true);
          const label = `${t.name} from ${sourceKind}, seed ${seed}`;
          // The store-to-store path was taken: scans of the source, and most of the data copied store to store.
          // (Not with -S 0 from a qcow2 source: its unallocated clusters are read as zeros through memory.)
          const m = viaStores.meta as CopyingStore;
          const copied = m.copiedBytes + ((viaStores.data as CopyingStore | undefined)?.copiedBytes ?? 0);
          // (A raw target marks the zero sectors during the copy itself: its place does not depend on them.)
          if (t.sparseBytes !== 0) expect(t.raw ? m.scanningCopies : srcStore.scans, label).toBeGreaterThan(0);
          if (t.sparseBytes !== 0 || sourceKind === "raw") expect(copied, label).toBeGreaterThan(SIZE / 10);
          // Identical images, metadata and layout included.
          expect(Buffer.from(await bytesOf(viaStores.meta)).equals(Buffer.from(await bytesOf(viaMemory.meta))), `${label}: image file`).toBe(true);
          if (t.dataFile) {
            expect(Buffer.from(await bytesOf(viaStores.data!)).equals(Buffer.from(await bytesOf(viaMemory.data!))), `${label}: data file`).toBe(true);
          }
          // And the guest sees the source's bytes.
          const back = new Uint8Array(SIZE);
          await viaStores.target.read(0, back);
          expect(Buffer.from(back).equals(Buffer.from(disk)), `${label}: guest content`).toBe(true);
          await viaMemory.target.close();
          await viaStores.target.close();
          await source.close();
        }
      }
    });
  }

  for (const t of TARGETS.filter((c) => !c.dataFile)) {
    it(`a dense disk in batches of 4 MiB into ${t.name}: one copy per byte, the same bytes as through memory`, async () => {
      const disk = sparseDisk(SIZE, 4242 + t.name.length, true);
      const srcStore = new CopyingStore(new MemoryStore({ name: "s" }));
      await srcStore.write(0, disk);
      const source = await RawImage.open(srcStore);
      const viaMemory = await convertInto(t, source, false);
      const viaStores = await convertInto(t, source, true, 4 * 1024 * 1024);
      const m = viaStores.meta as CopyingStore;
      expect(Buffer.from(await bytesOf(viaStores.meta)).equals(Buffer.from(await bytesOf(viaMemory.meta))), "image file").toBe(true);
      // Guessed (qcow2) or exact (raw) places: the source is not scanned on its own for most batches, and
      // little data is copied twice (the one batch with the 64 KiB hole, and the first batch under each new
      // L2 table, which is scanned first instead).
      if (t.sparseBytes !== 0) {
        expect(srcStore.scans, t.name).toBeLessThan(t.raw ? 1 : 4 + Math.ceil(SIZE / (t.options!.clusterSize ?? 65536) / ((t.options!.clusterSize ?? 65536) / 8)));
        // (Only where one L2 table covers a 4 MiB batch: clusters of 64 KiB and more.)
        if ((t.options?.clusterSize ?? 65536) >= 65536) expect(m.scanningCopies, t.name).toBeGreaterThan(0);
      }
      expect(m.copiedBytes, t.name).toBeLessThan(SIZE * 1.5);
      expect(m.copiedBytes, t.name).toBeGreaterThan(SIZE * 0.5);
      await viaMemory.target.close();
      await viaStores.target.close();
    });
  }

  it("writeFromStoresGuessing: declined leaves the file as it was, written copies once and lays out as a plain write", async () => {
    const cs = 4096; // one L2 table covers 2 MiB
    const srcStore = new CopyingStore(new MemoryStore({ name: "s" }));
    const disk = sparseDisk(4 * 1024 * 1024, 77, true);
    await srcStore.write(0, disk);
    const meta = new CopyingStore(new MemoryStore({ name: "t" }));
    const img = await qcow2On(meta, { size: 8 * 1024 * 1024, clusterSize: cs });
    const twin = new PlainStore(new MemoryStore({ name: "twin" }));
    const twinImg = await qcow2On(twin, { size: 8 * 1024 * 1024, clusterSize: cs });
    const slice = (from: number, to: number) => new StoreSlice([{ store: srcStore, offset: from, length: to - from }]);
    const scan = (len: number) => new Uint8Array(len / 512);
    let asked = 0;
    const keepAll = () => (asked++, true);
    // Unaligned, or across two L2 tables: nothing done, keep() never asked.
    expect(await img.writeFromStoresGuessing(512, slice(512, cs), scan(cs - 512), keepAll)).toBe("unsupported");
    expect(await img.writeFromStoresGuessing(2 * 1024 * 1024 - cs, slice(0, 2 * cs), scan(2 * cs), keepAll)).toBe("unsupported");
    expect(asked).toBe(0);
    expect(meta.copies).toBe(0);
    // Declined (no L2 table yet): the file is byte for byte what it was, its size included; scan filled.
    await img.flush();
    const before = await bytesOf(meta);
    const s1 = scan(64 * cs);
    let seen: Uint8Array | undefined;
    expect(await img.writeFromStoresGuessing(0, slice(0, 64 * cs), s1, (sc) => ((seen = sc), false))).toBe("declined");
    expect(seen).toBe(s1);
    for (let i = 0; i < s1.length; i++) expect(s1[i]).toBe(disk.subarray(i * 512, (i + 1) * 512).every((b) => b === 0) ? 1 : 0);
    expect(Buffer.from(await bytesOf(meta)).equals(Buffer.from(before))).toBe(true);
    // Written, making the L2 table first, then under the existing table: one copy each (the guess), the
    // image byte-identical to plain writes of the same data.
    const copiesBefore = meta.copiedBytes;
    expect(await img.writeFromStoresGuessing(0, slice(0, 64 * cs), scan(64 * cs), keepAll)).toBe("written");
    expect(await img.writeFromStoresGuessing(64 * cs, slice(64 * cs, 96 * cs), scan(32 * cs), keepAll)).toBe("written");
    expect(meta.copiedBytes - copiesBefore).toBe(96 * cs);
    await twinImg.write(0, disk.subarray(0, 64 * cs));
    await twinImg.write(64 * cs, disk.subarray(64 * cs, 96 * cs));
    const back = new Uint8Array(96 * cs);
    await img.read(0, back);
    expect(Buffer.from(back).equals(Buffer.from(disk.subarray(0, 96 * cs)))).toBe(true);
    await img.flush();
    await twinImg.flush();
    expect(Buffer.from(await bytesOf(meta)).equals(Buffer.from(await bytesOf(twin)))).toBe(true);
    // An allocated range is not guessed over.
    expect(await img.writeFromStoresGuessing(cs, slice(cs, 2 * cs), scan(cs), keepAll)).toBe("unsupported");
    await img.close();
    await twinImg.close();
  });

  it("StoreSlice.subarray cuts runs at any byte", () => {
    const a = new MemoryStore({ name: "a" });
    const b = new MemoryStore({ name: "b" });
    const slice = new StoreSlice([
      { store: a, offset: 100, length: 10 },
      { store: b, offset: 0, length: 5 },
      { store: a, offset: 50, length: 20 },
    ]);
    expect(slice.byteLength).toBe(35);
    const cut = slice.subarray(8, 17);
    expect(cut.runs.map((r) => [r.store.name, r.offset, r.length])).toEqual([
      ["a", 108, 2],
      ["b", 0, 5],
      ["a", 50, 2],
    ]);
    expect(slice.subarray(10, 15).runs.map((r) => [r.store.name, r.offset, r.length])).toEqual([["b", 0, 5]]);
    expect(slice.subarray(40, 50).byteLength).toBe(0);
  });

  it("an encrypted or extended-L2 qcow2 target refuses store-to-store writes, and convert still copies", async () => {
    const disk = sparseDisk(4 * 1024 * 1024, 99);
    const srcStore = new CopyingStore(new MemoryStore({ name: "s" }));
    await srcStore.write(0, disk);
    const source = await RawImage.open(srcStore);
    const meta = new CopyingStore(new MemoryStore({ name: "t" }));
    const target = await qcow2On(meta, { size: disk.byteLength, extendedL2: true });
    expect(await target.writeFromStores(0, new StoreSlice([{ store: srcStore, offset: 0, length: 4096 }]))).toBe(false);
    await convertImages([source], target, { targetZeroInit: true });
    expect(meta.copies).toBe(0);
    const back = new Uint8Array(disk.byteLength);
    await target.read(0, back);
    expect(Buffer.from(back).equals(Buffer.from(disk))).toBe(true);
  });
});
