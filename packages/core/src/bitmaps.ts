/**
 * Persistent dirty bitmaps (docs/interop/qcow2.txt "Bitmaps"; QEMU 7.2's qcow2-bitmap.c):
 * - a writable open loads them, marks each consistent one in_use on disk (directory rewritten in place) and
 *   from then on sets the bits of every range written, zeroed or discarded in the enabled ones;
 * - closing stores them: data clusters (all-zero clusters are not written), then each bitmap table, then the
 *   directory, all durable before the header names the new directory; the old clusters are freed after. The
 *   stored flags are "auto" for enabled bitmaps and no in_use; bitmaps found in_use at open are inconsistent
 *   and kept as they are;
 * - add, remove, clear, enable, disable and merge act on the loaded set (qemu-img bitmap);
 * - `listBitmaps` and `bitmapStatus` answer from memory for a tracked image, else from the file.
 * Bit i of a bitmap covers guest bytes [i * granularity, (i + 1) * granularity); bits are stored least
 * significant bit first. A bitmap is held in cluster-sized chunks (one per bitmap table entry), so memory
 * follows the dirty part, not the image size.
 */
import {
  AUTOCLEAR_BITMAPS,
  BITMAP_FLAG_AUTO,
  BITMAP_FLAG_IN_USE,
  BITMAP_TYPE_DIRTY_TRACKING,
  MAX_BITMAPS,
  MAX_BITMAP_DIRECTORY_BYTES,
  MAX_BITMAP_NAME,
  Qcow2Error,
  bitmapDirectoryEntryBytes,
  bitmapTableEntries,
  bitmapTableEntryAllOnes,
  bitmapTableEntryHasReservedBits,
  bitmapTableEntryOffset,
  decodeBitmapDirectory,
  encodeBitmapDirectory,
  encodeText,
  isAllZero,
  setBitmapTableEntry,
  viewOf,
  type BitmapDirectoryEntry,
} from "@qcowkit/spec";
import type { BitmapInfo, BlockImage } from "./block-image";
import type { EngineImage } from "./engine-image";

const MIN_GRANULARITY_BITS = 9;
const MAX_GRANULARITY_BITS = 31;

/** Bits held in cluster-sized chunks; an absent chunk is all zeros. */
export class ChunkedBits {
  private readonly chunks = new Map<number, Uint8Array>();
  readonly chunkBits: number;

  constructor(
    /** Number of bits. */
    public length: number,
    readonly chunkBytes: number,
  ) {
    this.chunkBits = chunkBytes * 8;
  }

  /** Follow a resized image: bits past a new, smaller length are dropped. */
  resize(length: number): void {
    if (length < this.length) {
      for (const i of [...this.chunks.keys()]) if (i * this.chunkBits >= length) this.chunks.delete(i);
      const last = Math.floor(length / this.chunkBits);
      const c = this.chunks.get(last);
      if (c) {
        for (let b = length - last * this.chunkBits; b < this.chunkBits; b++) c[b >> 3]! &= ~(1 << (b & 7));
        this.setChunk(last, c);
      }
    }
    this.length = length;
  }

  get chunkCount(): number {
    return Math.ceil(this.length / this.chunkBits);
  }

  chunk(index: number): Uint8Array | undefined {
    return this.chunks.get(index);
  }

  setChunk(index: number, bytes: Uint8Array | undefined): void {
    if (!bytes || isAllZero(bytes)) this.chunks.delete(index);
    else this.chunks.set(index, bytes);
  }

  get(bit: number): boolean {
    const c = this.chunks.get(Math.floor(bit / this.chunkBits));
    if (!c) return false;
    const i = bit % this.chunkBits;
    return (c[i >> 3]! & (1 << (i & 7))) !== 0;
  }

  /** Set bits [from, to). */
  setRange(from: number, to: number): void {
    to = Math.min(to, this.length);
    let bit = from;
    while (bit < to) {
      const ci = Math.floor(bit / this.chunkBits);
      let c = this.chunks.get(ci);
      if (!c) {
        c = new Uint8Array(this.chunkBytes);
        this.chunks.set(ci, c);
      }
      const end = Math.min(to, (ci + 1) * this.chunkBits);
      let i = bit - ci * this.chunkBits;
      const stop = end - ci * this.chunkBits;
      while (i < stop && i & 7) c[i >> 3]! |= 1 << (i++ & 7);
      while (i + 8 <= stop) {
        c[i >> 3] = 0xff;
        i += 8;
      }
      while (i < stop) c[i >> 3]! |= 1 << (i++ & 7);
      bit = end;
    }
  }

  clear(): void {
    this.chunks.clear();
  }

  /** Maximal runs of equal bits over [from, to): [start, end, set]. */
  *runs(from: number, to: number): Generator<[number, number, boolean]> {
    to = Math.min(to, this.length);
    let start = from;
    let state = this.get(from);
    let bit = from;
    while (bit < to) {
      const ci = Math.floor(bit / this.chunkBits);
      const c = this.chunks.get(ci);
      const chunkEnd = Math.min(to, (ci + 1) * this.chunkBits);
      if (!c) {
        if (state) {
          yield [start, bit, true];
          start = bit;
          state = false;
        }
        bit = chunkEnd;
        continue;
      }
      for (; bit < chunkEnd; bit++) {
        const i = bit - ci * this.chunkBits;
        const v = (c[i >> 3]! & (1 << (i & 7))) !== 0;
        if (v !== state) {
          if (bit > start) yield [start, bit, state];
          start = bit;
          state = v;
        }
      }
    }
    if (to > start) yield [start, to, state];
  }
}

interface LoadedBitmap {
  name: string;
  granularityBits: number;
  enabled: boolean;
  /** in_use at open: the content cannot be trusted; kept on disk as it is. */
  inconsistent: boolean;
  type: number;
  extraData: Uint8Array;
  /** The stored entry (for inconsistent bitmaps and for freeing the old clusters). */
  stored?: BitmapDirectoryEntry;
  bits: ChunkedBits;
}

interface BitmapSet {
  bitmaps: LoadedBitmap[];
  /** Clusters of stored bitmaps (tables and data) to free once a new directory is durable. */
  dropped: Array<[cluster: number, count: number]>;
}

const tracked = new WeakMap<EngineImage, BitmapSet>();

function fail(message: string, errno: "EINVAL" | "ENOENT" | "ENOTSUP" | "EEXIST" = "EINVAL"): Qcow2Error {
  const code = errno === "ENOENT" ? "NOT_FOUND" : errno === "ENOTSUP" ? "NOT_SUPPORTED" : "INVALID_ARGUMENT";
  return new Qcow2Error(code, message, { errno });
}

function bitCount(image: EngineImage, granularityBits: number): number {
  return Math.ceil(image.virtualSize / 2 ** granularityBits);
}

/** The bitmap directory stored in the image (empty when the extension is absent or not valid). */
export async function readBitmapDirectory(image: EngineImage): Promise<BitmapDirectoryEntry[]> {
  const ext = image.metadata.hdr.extensions.bitmaps;
  if (!ext || ext.nbBitmaps === 0 || (image.header.autoclearFeatures & AUTOCLEAR_BITMAPS) === 0n) return [];
  if (ext.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_BYTES) throw new Qcow2Error("INVALID_IMAGE", "Bitmap directory is too large");
  const dir = new Uint8Array(ext.bitmapDirectorySize);
  await image.metadata.meta.read(ext.bitmapDirectoryOffset, dir);
  const entries = decodeBitmapDirectory(dir, ext.nbBitmaps);
  for (const e of entries) {
    if (e.type !== BITMAP_TYPE_DIRTY_TRACKING) throw new Qcow2Error("INVALID_IMAGE", `Bitmap '${e.name}' has an unsupported type`);
    if (e.granularityBits < MIN_GRANULARITY_BITS || e.granularityBits > MAX_GRANULARITY_BITS) {
      throw new Qcow2Error("INVALID_IMAGE", `Bitmap '${e.name}' has an invalid granularity`);
    }
    if (e.bitmapTableSize !== bitmapTableEntries(image.virtualSize, e.granularityBits, image.clusterBits)) {
      throw new Qcow2Error("INVALID_IMAGE", `Bitmap '${e.name}' has an invalid table size`);
    }
  }
  return entries;
}

/** The table of a stored bitmap. */
async function readTable(image: EngineImage, e: BitmapDirectoryEntry): Promise<DataView> {
  const bytes = new Uint8Array(e.bitmapTableSize * 8);
  if (bytes.byteLength > 0) await image.metadata.meta.read(e.bitmapTableOffset, bytes);
  return viewOf(bytes);
}

/** Load the bits of a stored bitmap. */
async function loadBits(image: EngineImage, e: BitmapDirectoryEntry): Promise<ChunkedBits> {
  const cs = image.clusterSize;
  const bits = new ChunkedBits(bitCount(image, e.granularityBits), cs);
  const table = await readTable(image, e);
  for (let i = 0; i < e.bitmapTableSize; i++) {
    if (bitmapTableEntryHasReservedBits(table, i)) throw new Qcow2Error("INVALID_IMAGE", `Bitmap '${e.name}' has a corrupt table entry`);
    const off = bitmapTableEntryOffset(table, i);
    if (off === 0) {
      if (bitmapTableEntryAllOnes(table, i)) {
        const chunk = new Uint8Array(cs).fill(0xff);
        bits.setChunk(i, chunk);
      }
      continue;
    }
    if (off % cs !== 0) throw new Qcow2Error("INVALID_IMAGE", `Bitmap '${e.name}' has an unaligned data cluster`);
    const chunk = new Uint8Array(cs);
    await image.metadata.meta.read(off, chunk);
    bits.setChunk(i, chunk);
  }
  // Bits past the end of the image are not part of the bitmap.
  const last = bits.chunkCount - 1;
  const c = bits.chunk(last);
  if (c) {
    const used = bits.length - last * bits.chunkBits;
    for (let b = used; b < bits.chunkBits; b++) c[b >> 3]! &= ~(1 << (b & 7));
    bits.setChunk(last, c);
  }
  return bits;
}

/** Host clusters a stored bitmap occupies (its table and its data clusters). */
async function storedClusters(image: EngineImage, e: BitmapDirectoryEntry): Promise<Array<[number, number]>> {
  const cs = image.clusterSize;
  const out: Array<[number, number]> = [];
  if (e.bitmapTableOffset === 0) return out;
  const table = await readTable(image, e);
  for (let i = 0; i < e.bitmapTableSize; i++) {
    const off = bitmapTableEntryOffset(table, i);
    if (off !== 0 && off % cs === 0) out.push([off / cs, 1]);
  }
  out.push([e.bitmapTableOffset / cs, Math.ceil((e.bitmapTableSize * 8) / cs)]);
  return out;
}

/** Bitmaps follow the image size (QEMU resizes them with the image). */
function followSize(image: EngineImage, b: LoadedBitmap): void {
  if (b.inconsistent) return;
  const n = bitCount(image, b.granularityBits);
  if (n !== b.bits.length) b.bits.resize(n);
}

function describe(b: LoadedBitmap): BitmapInfo {
  const flags: string[] = [];
  if (b.inconsistent) flags.push("in-use");
  if (b.enabled) flags.push("auto");
  return { name: b.name, granularity: 2 ** b.granularityBits, flags };
}

/**
 * The open option handler (Qcow2OpenOptions.bitmaps): load the bitmaps of a writable image, mark them
 * in_use on disk, track writes into the enabled ones and store them all at close. Returns true.
 */
export async function trackBitmaps(image: EngineImage): Promise<boolean> {
  await ensureTracked(image);
  return true;
}

async function ensureTracked(image: EngineImage): Promise<BitmapSet> {
  const existing = tracked.get(image);
  if (existing) return existing;
  const entries = await readBitmapDirectory(image);
  const set: BitmapSet = { bitmaps: [], dropped: [] };
  for (const e of entries) {
    const inconsistent = (e.flags & BITMAP_FLAG_IN_USE) !== 0;
    set.bitmaps.push({
      name: e.name,
      granularityBits: e.granularityBits,
      enabled: (e.flags & BITMAP_FLAG_AUTO) !== 0,
      inconsistent,
      type: e.type,
      extraData: e.extraData,
      stored: e,
      bits: inconsistent ? new ChunkedBits(0, image.clusterSize) : await loadBits(image, e),
    });
  }
  tracked.set(image, set);
  if (entries.some((e) => (e.flags & BITMAP_FLAG_IN_USE) === 0)) {
    // The bitmaps are now being changed: a crash must leave them marked inconsistent.
    const marked = entries.map((e) => ({ ...e, flags: e.flags | BITMAP_FLAG_IN_USE }));
    const ext = image.metadata.hdr.extensions.bitmaps!;
    await image.metadata.meta.write(ext.bitmapDirectoryOffset, encodeBitmapDirectory(marked));
    await image.metadata.meta.flush();
    for (let i = 0; i < marked.length; i++) set.bitmaps[i]!.stored = marked[i]!;
  }
  image.writeObservers.push((guestOffset, byteLength) => {
    for (const b of set.bitmaps) {
      if (!b.enabled || b.inconsistent) continue;
      const g = 2 ** b.granularityBits;
      followSize(image, b);
      b.bits.setRange(Math.floor(guestOffset / g), Math.ceil((guestOffset + byteLength) / g));
    }
  });
  image.closeHooks.push(() => storeBitmaps(image));
  return set;
}

/**
 * Write the loaded bitmaps (data clusters, tables, directory), switch the header to the new directory, then
 * free the old clusters. Called at close; `inUse` keeps the in_use flag (bitmaps still being tracked).
 */
export async function storeBitmaps(image: EngineImage, inUse = false): Promise<void> {
  const set = tracked.get(image);
  // A v2 image cannot hold bitmaps (after a downgrade QEMU leaves them as they are too).
  if (!set || image.version < 3) return;
  await image.lock.write(async () => {
    const cs = image.clusterSize;
    const entries: BitmapDirectoryEntry[] = [];
    const drop = [...set.dropped];
    for (const b of set.bitmaps) {
      if (b.inconsistent && b.stored) {
        entries.push(b.stored);
        continue;
      }
      followSize(image, b);
      const tableSize = bitmapTableEntries(image.virtualSize, b.granularityBits, image.clusterBits);
      const table = new Uint8Array(tableSize * 8);
      const tv = viewOf(table);
      for (let i = 0; i < tableSize; i++) {
        const chunk = b.bits.chunk(i);
        if (!chunk || isAllZero(chunk)) continue;
        const off = (await image.metadata.refcounts.allocate(1)) * cs;
        await image.metadata.meta.write(off, chunk);
        setBitmapTableEntry(tv, i, off);
      }
      const tableOffset = tableSize > 0 ? (await image.metadata.refcounts.allocate(Math.ceil(table.byteLength / cs))) * cs : 0;
      if (tableSize > 0) await image.metadata.meta.write(tableOffset, table);
      if (b.stored) drop.push(...(await storedClusters(image, b.stored)));
      const entry: BitmapDirectoryEntry = {
        bitmapTableOffset: tableOffset,
        bitmapTableSize: tableSize,
        flags: (b.enabled ? BITMAP_FLAG_AUTO : 0) | (inUse ? BITMAP_FLAG_IN_USE : 0),
        type: b.type,
        granularityBits: b.granularityBits,
        name: b.name,
        extraData: b.extraData,
      };
      entries.push(entry);
      b.stored = entry;
    }
    await writeDirectory(image, entries);
    set.dropped = [];
    for (const [c, n] of drop) image.metadata.refcounts.deferFree(c, n, true);
    await image.metadata.writeback();
    await image.metadata.commitRefcounts("after-reference-removal");
  });
}

/**
 * Publish a new bitmap directory: written and durable (with the refcounts of everything it references)
 * before the header names it; the old directory is queued for freeing.
 */
async function writeDirectory(image: EngineImage, entries: BitmapDirectoryEntry[]): Promise<void> {
  const cs = image.clusterSize;
  const old = image.metadata.hdr.extensions.bitmaps;
  const dir = encodeBitmapDirectory(entries);
  let offset = 0;
  if (entries.length > 0) {
    offset = (await image.metadata.refcounts.allocate(Math.ceil(dir.byteLength / cs))) * cs;
    await image.metadata.meta.write(offset, dir);
  }
  await image.metadata.commitRefcounts("before-reference");
  await image.metadata.updateHeader((hdr) => {
    if (entries.length > 0) {
      hdr.extensions.bitmaps = { nbBitmaps: entries.length, reserved: 0, bitmapDirectorySize: dir.byteLength, bitmapDirectoryOffset: offset };
      hdr.header.autoclearFeatures |= AUTOCLEAR_BITMAPS;
    } else {
      delete hdr.extensions.bitmaps;
      hdr.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
    }
  });
  if (old && old.bitmapDirectoryOffset !== 0 && old.bitmapDirectorySize > 0) {
    image.metadata.refcounts.deferFree(old.bitmapDirectoryOffset / cs, Math.ceil(old.bitmapDirectorySize / cs), true);
  }
}

function find(set: BitmapSet, name: string): LoadedBitmap {
  const b = set.bitmaps.find((x) => x.name === name);
  if (!b) throw fail(`Dirty bitmap '${name}' not found`, "ENOENT");
  return b;
}

function usable(b: LoadedBitmap): LoadedBitmap {
  if (b.inconsistent) {
    throw fail(`Bitmap '${b.name}' is inconsistent and cannot be used`);
  }
  return b;
}

export interface AddBitmapOptions {
  /** Bytes per bit (default: the cluster size, at least 4 KiB). */
  granularity?: number;
  /** Created disabled (not tracking writes). */
  disabled?: boolean;
  /** Name of the image for messages (QEMU prints its node name). */
  nodeName?: string;
}

/** block-dirty-bitmap-add with persistent=on (qemu-img bitmap --add). The image must be writable. */
export async function addBitmap(image: EngineImage, name: string, opts: AddBitmapOptions = {}): Promise<void> {
  const granularity = opts.granularity ?? Math.max(4096, image.clusterSize);
  if (!Number.isInteger(granularity) || granularity < 512 || (granularity & (granularity - 1)) !== 0) {
    throw fail("Granularity must be power of 2 and at least 512");
  }
  const set = await ensureTracked(image);
  if (set.bitmaps.some((b) => b.name === name)) throw fail(`Bitmap already exists: ${name}`, "EEXIST");
  const prefix = `Can't make bitmap '${name}' persistent in '${opts.nodeName ?? image.filename}': `;
  if (image.version < 3) throw fail(`${prefix}Cannot store dirty bitmaps in qcow2 v2 files`, "ENOTSUP");
  const bits = Math.log2(granularity);
  if (bits > MAX_GRANULARITY_BITS) throw fail(`${prefix}Granularity exceeds maximum (${2 ** MAX_GRANULARITY_BITS} bytes)`);
  const tableSize = bitmapTableEntries(image.virtualSize, bits, image.clusterBits);
  if (image.virtualSize > 2 ** 63 || tableSize > 0x8000000) throw fail(`${prefix}Too much space will be occupied by the bitmap. Use larger granularity`);
  if (encodeText(name).byteLength > MAX_BITMAP_NAME) throw fail(`${prefix}Name length exceeds maximum (${MAX_BITMAP_NAME} characters)`);
  if (set.bitmaps.length >= MAX_BITMAPS) throw fail(`${prefix}Maximum number of persistent bitmaps is already reached`);
  const dirBytes = set.bitmaps.reduce((n, b) => n + bitmapDirectoryEntryBytes({ ...dirEntryShape(b) }), 0);
  if (dirBytes + ((24 + encodeText(name).byteLength + 7) & ~7) > MAX_BITMAP_DIRECTORY_BYTES) {
    throw fail(`${prefix}Not enough space in the bitmap directory`);
  }
  set.bitmaps.push({
    name,
    granularityBits: bits,
    enabled: !opts.disabled,
    inconsistent: false,
    type: BITMAP_TYPE_DIRTY_TRACKING,
    extraData: new Uint8Array(0),
    bits: new ChunkedBits(bitCount(image, bits), image.clusterSize),
  });
}

function dirEntryShape(b: LoadedBitmap): BitmapDirectoryEntry {
  return { bitmapTableOffset: 0, bitmapTableSize: 0, flags: 0, type: b.type, granularityBits: b.granularityBits, name: b.name, extraData: b.extraData };
}

/** Remove a bitmap; it leaves the file at once (directory rewritten, clusters freed), as QEMU does. */
export async function removeBitmap(image: EngineImage, name: string): Promise<void> {
  const set = await ensureTracked(image);
  const b = find(set, name);
  set.bitmaps = set.bitmaps.filter((x) => x !== b);
  if (!b.stored) return;
  await image.lock.write(async () => {
    const remaining = set.bitmaps.filter((x) => x.stored).map((x) => x.stored!);
    const clusters = await storedClusters(image, b.stored!);
    await writeDirectory(image, remaining);
    for (const [c, n] of clusters) image.metadata.refcounts.deferFree(c, n, true);
    await image.metadata.writeback();
    await image.metadata.commitRefcounts("after-reference-removal");
  });
}

export async function clearBitmap(image: EngineImage, name: string): Promise<void> {
  usable(find(await ensureTracked(image), name)).bits.clear();
}

export async function enableBitmap(image: EngineImage, name: string): Promise<void> {
  usable(find(await ensureTracked(image), name)).enabled = true;
}

export async function disableBitmap(image: EngineImage, name: string): Promise<void> {
  usable(find(await ensureTracked(image), name)).enabled = false;
}

/** Set in bitmap `name` of `image` every range dirty in bitmap `sourceName` of `source` (may be `image`). */
export async function mergeBitmap(image: EngineImage, name: string, source: EngineImage, sourceName: string): Promise<void> {
  const dst = usable(find(await ensureTracked(image), name));
  let srcBits: ChunkedBits;
  let srcGranularityBits: number;
  const srcSet = tracked.get(source);
  if (srcSet) {
    const s = usable(find(srcSet, sourceName));
    srcBits = s.bits;
    srcGranularityBits = s.granularityBits;
  } else {
    const e = (await readBitmapDirectory(source)).find((x) => x.name === sourceName);
    if (!e) throw fail(`Dirty bitmap '${sourceName}' not found`, "ENOENT");
    if (e.flags & BITMAP_FLAG_IN_USE) throw fail(`Bitmap '${sourceName}' is inconsistent and cannot be used`);
    srcBits = await loadBits(source, e);
    srcGranularityBits = e.granularityBits;
  }
  if (source.virtualSize !== image.virtualSize) {
    throw fail(
      `Bitmaps are of different sizes (destination size is ${image.virtualSize}, source size is ${source.virtualSize}) and can't be merged`,
    );
  }
  const sg = 2 ** srcGranularityBits;
  const dg = 2 ** dst.granularityBits;
  for (const [from, to, set] of srcBits.runs(0, srcBits.length)) {
    if (!set) continue;
    const start = from * sg;
    const end = Math.min(image.virtualSize, to * sg);
    dst.bits.setRange(Math.floor(start / dg), Math.ceil(end / dg));
  }
}

/** The persistent bitmaps of an image (QEMU's info flags: "in-use", "auto"). */
export async function listBitmaps(image: EngineImage): Promise<BitmapInfo[]> {
  const set = tracked.get(image);
  if (set) return set.bitmaps.map(describe);
  return (await readBitmapDirectory(image)).map((e) => {
    const flags: string[] = [];
    if (e.flags & BITMAP_FLAG_IN_USE) flags.push("in-use");
    if (e.flags & BITMAP_FLAG_AUTO) flags.push("auto");
    return { name: e.name, granularity: 2 ** e.granularityBits, flags };
  });
}

/**
 * Dirty and clean runs of bitmap `name` over guest bytes [guestOffset, +byteLength), contiguous and
 * clipped to the range (what qemu:dirty-bitmap:NAME reports over NBD).
 */
export async function bitmapStatus(
  image: EngineImage,
  name: string,
  guestOffset: number,
  byteLength: number,
): Promise<Array<{ offset: number; length: number; dirty: boolean }>> {
  let bits: ChunkedBits;
  let granularityBits: number;
  const set = tracked.get(image);
  if (set) {
    const b = find(set, name);
    followSize(image, b);
    bits = b.bits;
    granularityBits = b.granularityBits;
  } else {
    const e = (await readBitmapDirectory(image)).find((x) => x.name === name);
    if (!e) throw fail(`Dirty bitmap '${name}' not found`, "ENOENT");
    bits = await loadBits(image, e);
    granularityBits = e.granularityBits;
  }
  const end = Math.min(image.virtualSize, guestOffset + byteLength);
  const out: Array<{ offset: number; length: number; dirty: boolean }> = [];
  if (end <= guestOffset) return out;
  const g = 2 ** granularityBits;
  for (const [from, to, dirty] of bits.runs(Math.floor(guestOffset / g), Math.ceil(end / g))) {
    const start = Math.max(guestOffset, from * g);
    const stop = Math.min(end, to * g);
    if (stop > start) out.push({ offset: start, length: stop - start, dirty });
  }
  return out;
}

/**
 * Give an open image the optional BlockImage bitmap methods (`listBitmaps`, `bitmapStatus`) backed by this
 * module, so that frontends holding a BlockImage (the NBD server's qemu:dirty-bitmap:NAME) can use them.
 */
export function withBitmapMethods<T extends EngineImage>(image: T): T {
  const b = image as BlockImage;
  b.listBitmaps = () => listBitmaps(image);
  b.bitmapStatus = (name, guestOffset, byteLength) => bitmapStatus(image, name, guestOffset, byteLength);
  return image;
}
