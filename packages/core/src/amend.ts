/**
 * Changing the options of an existing qcow2 image (qemu-img amend), in the order of QEMU 7.2's
 * qcow2_amend_options: version upgrade, refcount width, data-file-raw and data file name (then the header
 * is rewritten, always), backing file (only the same value), lazy refcounts, size, and the downgrade last.
 * Every refusal uses QEMU's message.
 */
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  Qcow2Error,
  errnoText,
  l1EntryL2Offset,
  maxRefcount,
  refcountBlockEntries,
  setRefcount,
  setReftableEntry,
  viewOf,
} from "@qcowkit/spec";
import { readL2Entry, writeL2Entry } from "@qcowkit/cluster";
import { altHex } from "./check";
import type { Qcow2Image } from "./qcow2-image";
import { validateSnapshotL1, writeSnapshotTable } from "./snapshot-ops";

export interface AmendOptions {
  /** "0.10"/"v2" or "1.1"/"v3". */
  compat?: string;
  /** New virtual size in bytes (0: unchanged, as QEMU). */
  size?: number;
  backingFile?: string;
  backingFormat?: string;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  /** New stored data file name; "" removes it. */
  dataFile?: string;
  dataFileRaw?: boolean;
  /** Progress of the whole amend: `done` of `total` work units (QEMU's status callback). */
  onProgress?: (done: number, total: number) => void;
}

const fail = (message: string, errno: "EINVAL" | "ENOTSUP" = "EINVAL") =>
  new Qcow2Error(errno === "EINVAL" ? "INVALID_ARGUMENT" : "NOT_SUPPORTED", message, { errno });

const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Spreads the progress of several operations over one scale, as QEMU's qcow2_amend_helper_cb does. */
class AmendProgress {
  private current = -1;
  private last = -1;
  private completedOffset = 0;
  private completed = 0;
  private lastWork = 0;

  constructor(
    private readonly total: number,
    private readonly report: ((done: number, total: number) => void) | undefined,
  ) {}

  start(operation: number): (offset: number, work: number) => void {
    this.current = operation;
    return (offset, work) => {
      if (!this.report || this.total === 0) return;
      if (this.current !== this.last) {
        if (this.last !== -1) {
          this.completedOffset += this.lastWork;
          this.completed++;
        }
        this.last = this.current;
      }
      this.lastWork = work;
      const currentWork = this.completedOffset + work;
      const projected = Math.floor((currentWork * (this.total - this.completed - 1)) / (this.completed + 1));
      this.report(this.completedOffset + offset, currentWork + projected);
    };
  }
}

function parseCompat(compat: string | undefined, current: number): number {
  if (compat === undefined) return current;
  if (compat === "0.10" || compat === "v2") return 2;
  if (compat === "1.1" || compat === "v3") return 3;
  throw fail(`Unknown compatibility level ${compat}`);
}

/** Amend `image` (open read-write). */
export async function amendQcow2(image: Qcow2Image, o: AmendOptions): Promise<void> {
  const oldVersion = image.version;
  const newVersion = parseCompat(o.compat, oldVersion);
  const currentBits = 2 ** image.header.refcountOrder;
  const refcountBits = o.refcountBits ?? currentBits;
  if (o.refcountBits !== undefined && (refcountBits <= 0 || refcountBits > 64 || !isPowerOfTwo(refcountBits))) {
    throw fail("Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (o.dataFile !== undefined && !image.hasDataFile) {
    throw fail("data-file can only be set for images that use an external data file");
  }
  const dataFileRaw = o.dataFileRaw ?? image.dataFileRaw;
  if (o.dataFileRaw === true && !image.dataFileRaw) throw fail("data-file-raw cannot be set on existing images");

  const progress = new AmendProgress(
    (newVersion !== oldVersion ? 1 : 0) + (refcountBits !== currentBits ? 1 : 0),
    o.onProgress,
  );
  await image.flush();

  if (newVersion > oldVersion) await upgrade(image, progress.start(1));

  if (refcountBits !== currentBits) {
    if (newVersion < 3 && refcountBits !== 16) {
      throw fail(
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
      );
    }
    await changeRefcountOrder(image, Math.log2(refcountBits), progress.start(2));
  }

  await image.metadata.updateHeader((hdr) => {
    if (dataFileRaw) hdr.header.autoclearFeatures |= AUTOCLEAR_DATA_FILE_RAW;
    else hdr.header.autoclearFeatures &= ~AUTOCLEAR_DATA_FILE_RAW;
    if (o.dataFile === "") delete hdr.extensions.dataFile;
    else if (o.dataFile !== undefined) hdr.extensions.dataFile = o.dataFile;
  });

  if (o.backingFile !== undefined || o.backingFormat !== undefined) {
    if (o.backingFile !== image.metadata.hdr.backingFile || o.backingFormat !== image.metadata.hdr.extensions.backingFormat) {
      throw fail("Cannot amend the backing file");
    }
  }

  if (o.lazyRefcounts !== undefined && o.lazyRefcounts !== image.lazyRefcounts) {
    if (o.lazyRefcounts) {
      if (newVersion < 3) {
        throw fail("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
      }
      await image.metadata.updateHeader((hdr) => {
        hdr.header.compatibleFeatures |= COMPAT_LAZY_REFCOUNTS;
      });
    } else {
      await markClean(image);
      await image.metadata.updateHeader((hdr) => {
        hdr.header.compatibleFeatures &= ~COMPAT_LAZY_REFCOUNTS;
      });
    }
  }

  if (o.size !== undefined && o.size !== 0) {
    if (o.size % 512 !== 0) throw fail("The new size must be a multiple of 512");
    await image.resize(o.size, { shrink: true });
  }

  if (newVersion < oldVersion) await downgrade(image, progress.start(3));
}

/** The "cannot amend" hint QEMU prints after "Cannot amend the backing file". */
export const AMEND_BACKING_HINT = "You can use 'qemu-img rebase' instead.";

/** Write back everything, then clear the dirty bit (qcow2_mark_clean). */
async function markClean(image: Qcow2Image): Promise<void> {
  if ((image.header.incompatibleFeatures & INCOMPAT_DIRTY) === 0n) return;
  await image.flush();
  await image.metadata.commitRefcounts("settle");
  await image.metadata.updateHeader((hdr) => {
    hdr.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
  });
}

async function upgrade(image: Qcow2Image, status: (offset: number, work: number) => void): Promise<void> {
  status(0, 2);
  // v3 needs the 64-bit VM state size and the disk size in every snapshot entry: rewrite the table.
  if (image.metadata.snapshots.some((s) => s.diskSize === undefined)) {
    await image.lock.write(() => writeSnapshotTable(image, image.metadata.snapshots));
  }
  status(1, 2);
  await image.metadata.updateHeader(({ header }) => {
    header.version = 3;
    header.refcountOrder = 4;
    header.compressionType = 0;
  });
  status(2, 2);
}

async function downgrade(image: Qcow2Image, status: (offset: number, work: number) => void): Promise<void> {
  const h = image.header;
  if (h.refcountOrder !== 4) throw fail("compat=0.10 requires refcount_bits=16", "ENOTSUP");
  if (image.hasDataFile) throw fail("Cannot downgrade an image with a data file", "ENOTSUP");
  for (const s of image.metadata.snapshots) {
    if (s.vmStateSize > 0xffffffff || (s.diskSize ?? image.virtualSize) !== image.virtualSize) {
      throw fail("Internal snapshots prevent downgrade of image", "ENOTSUP");
    }
  }
  await markClean(image);
  if ((h.incompatibleFeatures & ~INCOMPAT_COMPRESSION) !== 0n) {
    throw fail(`Cannot downgrade an image with incompatible features 0x${h.incompatibleFeatures.toString(16)} set`, "ENOTSUP");
  }
  image.metadata.stageHeader(({ header }) => {
    header.compatibleFeatures = 0n;
    header.autoclearFeatures = 0n;
  });
  await expandZeroClusters(image, status);
  if (h.incompatibleFeatures & INCOMPAT_COMPRESSION) {
    if (await hasCompressedClusters(image)) {
      throw fail("Cannot downgrade an image with zstd compression type and existing compressed clusters", "ENOTSUP");
    }
    image.metadata.stageHeader(({ header }) => {
      header.incompatibleFeatures &= ~INCOMPAT_COMPRESSION;
      header.compressionType = 0;
    });
  }
  await image.metadata.updateHeader(({ header }) => {
    header.version = 2;
    header.unknownHeaderFields = new Uint8Array(0);
  });
}

async function hasCompressedClusters(image: Qcow2Image): Promise<boolean> {
  const step = 1024 * 1024 * 1024;
  for (let pos = 0; pos < image.virtualSize; pos += step) {
    const extents = await image.blockStatus(pos, Math.min(step, image.virtualSize - pos));
    if (extents.some((e) => e.compressed && e.depth === 0)) return true;
  }
  return false;
}

/**
 * QEMU's qcow2_expand_zero_clusters: zero clusters (v2 has none) become unallocated where no backing file
 * could show through, otherwise clusters written with zeros; active tables first, then every snapshot's.
 */
async function expandZeroClusters(image: Qcow2Image, status: (offset: number, work: number) => void): Promise<void> {
  const cs = image.clusterSize;
  const total = image.metadata.snapshots.reduce((n, s) => n + s.l1Size, image.metadata.l1.size);
  let visited = 0;
  const zeros = new Uint8Array(cs);
  // QEMU's failures name the step: "Failed to turn zero into data clusters: <errno>".
  const failed = (e: Qcow2Error) =>
    new Qcow2Error(e.code, `Failed to turn zero into data clusters: ${errnoText[e.errno]}`, { errno: e.errno, cause: e });
  const corrupt = async (message: string) => failed(await image.signalCorruption(message));
  await image.lock.write(async () => {
    // The active table first, then each snapshot's, validated when its turn comes (as QEMU reads them).
    for (let n = -1; n < image.metadata.snapshots.length; n++) {
      const l1 = { bytes: image.metadata.l1.bytes, size: image.metadata.l1.size };
      if (n >= 0) {
        const sn = image.metadata.snapshots[n]!;
        try {
          validateSnapshotL1(image, sn);
        } catch (e) {
          throw e instanceof Qcow2Error ? failed(e) : e;
        }
        l1.bytes = new Uint8Array(sn.l1Size * 8);
        l1.size = sn.l1Size;
        if (sn.l1Size > 0) await image.metadata.meta.read(sn.l1TableOffset, l1.bytes);
      }
      const v = viewOf(l1.bytes);
      for (let i = 0; i < l1.size; i++) {
        const l2Offset = l1EntryL2Offset(v, i);
        if (l2Offset % cs !== 0) throw await corrupt(`L2 table offset ${altHex(l2Offset)} unaligned (L1 index: ${altHex(i)})`);
        if (l2Offset !== 0) {
          const l2Refcount = await image.metadata.refcounts.get(l2Offset / cs);
          const t = await image.metadata.l2Cache.get(l2Offset);
          let dirty = false;
          const g = image.metadata.map;
          for (let j = 0; j < g.l2Entries; j++) {
            const e = readL2Entry(t.view, j, g);
            if (e.kind !== "zero") continue;
            let host: number;
            let copied: boolean;
            if (e.hostOffset === 0) {
              if (!image.backing) {
                writeL2Entry(t.view, j, { kind: "unallocated" }, g);
                dirty = true;
                continue;
              }
              host = (await image.metadata.refcounts.allocate(1)) * cs;
              if (l2Refcount > 1) await image.metadata.refcounts.update(host / cs, 1, l2Refcount - 1);
              copied = l2Refcount === 1;
            } else {
              host = e.hostOffset;
              if (host % cs !== 0) {
                throw await corrupt(`Cluster allocation offset ${altHex(host)} unaligned (L2 offset: ${altHex(l2Offset)}, L2 index: ${altHex(j)})`);
              }
              copied = (await image.metadata.refcounts.get(host / cs)) === 1;
            }
            if (image.metadata.data.efficientZeroes) await image.metadata.data.writeZeroes(host, cs, false);
            else await image.metadata.data.write(host, zeros);
            writeL2Entry(t.view, j, { kind: "normal", hostOffset: host, copied }, g);
            dirty = true;
          }
          if (dirty) image.metadata.l2Cache.markDirty(t);
          await image.metadata.writeback();
        }
        visited++;
        status(visited, total);
      }
    }
    await image.metadata.flush();
  });
}

/**
 * Rewrite every refcount structure with entries of 2^`order` bits (QEMU's qcow2_change_refcount_order): the
 * new refcount blocks and then the new table are allocated through the current structures (so they count
 * themselves), until no further block is needed; the new blocks copy every refcount and are written with the
 * table and made durable before the header switches to them in one write; the old table and blocks are then
 * freed through the new structures.
 */
async function changeRefcountOrder(image: Qcow2Image, order: number, status: (offset: number, work: number) => void): Promise<void> {
  await image.flush();
  const cs = image.clusterSize;
  const old = image.metadata.refcounts;
  const max = maxRefcount(order);
  const entries = refcountBlockEntries(image.clusterBits, order);
  const tableEntriesPerCluster = cs / 8;
  const newBlocks = new Map<number, number>();
  let tableOffset = 0;
  let tableClusters = 0;
  let walks = 0;
  try {
    await walkAndAllocate();
  } catch (e) {
    // QEMU's failure path: the new blocks and table allocated so far are freed again.
    for (const offset of newBlocks.values()) await old.update(offset / cs, 1, -1);
    if (tableClusters > 0) await old.update(tableOffset / cs, tableClusters, -1);
    await image.metadata.commitRefcounts("rollback");
    throw e;
  }
  async function walkAndAllocate(): Promise<void> {
    for (;;) {
      let allocated = false;
      // Walk every cluster the old table covers, as QEMU's walk_over_reftable does, with its progress: one
      // step per table entry, out of at least three walks (allocate, confirm, write).
      const total = Math.max(walks + 2, 3);
      for (let ri = 0; ri < old.reftableEntries; ri++) {
        status(walks * old.reftableEntries + ri, total * old.reftableEntries);
        if (old.blockOffset(ri) === 0) continue;
        for (let c = ri * old.blockEntries; c < (ri + 1) * old.blockEntries; c++) {
          const n = await old.get(c);
          if (n === 0) continue;
          if (n > max) {
            throw fail(`Cannot decrease refcount entry width to ${2 ** order} bits: Cluster at offset 0x${(c * cs).toString(16)} has a refcount of ${n}`);
          }
          const b = Math.floor(c / entries);
          if (!newBlocks.has(b)) {
            newBlocks.set(b, (await old.allocate(1)) * cs);
            allocated = true;
          }
        }
      }
      status((walks + 1) * old.reftableEntries, total * old.reftableEntries);
      walks++;
      const blockCount = Math.max(0, ...newBlocks.keys()) + 1;
      const wantClusters = Math.ceil(Math.ceil(blockCount / tableEntriesPerCluster) * tableEntriesPerCluster * 8 / cs);
      if (allocated || wantClusters !== tableClusters) {
        if (tableClusters > 0) await old.update(tableOffset / cs, tableClusters, -1);
        tableClusters = wantClusters;
        tableOffset = (await old.allocate(tableClusters)) * cs;
        continue;
      }
      break;
    }
  }
  // Every refcount copied, the new structures included (they were allocated through the old ones).
  const table = new Uint8Array(tableClusters * cs);
  const tv = viewOf(table);
  const blocks = new Map<number, Uint8Array>();
  // The last walk copies the refcounts (its progress out of all the walks done).
  const size = old.reftableEntries;
  for (let ri = 0; ri < size; ri++) {
    status(walks * size + ri, (walks + 1) * size);
    if (old.blockOffset(ri) === 0) continue;
    for (let c = ri * old.blockEntries; c < (ri + 1) * old.blockEntries; c++) {
      const n = await old.get(c);
      if (n === 0) continue;
      const b = Math.floor(c / entries);
      let block = blocks.get(b);
      if (!block) blocks.set(b, (block = new Uint8Array(cs)));
      setRefcount(block, c % entries, order, n);
    }
  }
  for (const [b, offset] of [...newBlocks].sort((x, y) => x[0] - y[0])) {
    const block = blocks.get(b) ?? new Uint8Array(cs);
    await image.metadata.meta.write(offset, block);
    setReftableEntry(tv, b, offset);
  }
  await image.metadata.meta.write(tableOffset, table);
  await image.metadata.commitRefcounts("before-reference");
  const oldTableOffset = old.reftableOffset;
  const oldTableClusters = old.reftableClusters;
  const oldBlocks: number[] = [];
  for (let i = 0; i < old.reftableEntries; i++) {
    const off = old.blockOffset(i);
    if (off !== 0) oldBlocks.push(off);
  }
  await image.metadata.updateHeader(({ header }) => {
    header.refcountOrder = order;
    header.refcountTableOffset = tableOffset;
    header.refcountTableClusters = tableClusters;
  });
  await image.metadata.loadRefcounts();
  // The old structures are no longer referenced: free them through the new ones.
  await image.metadata.refcounts.update(oldTableOffset / cs, oldTableClusters, -1);
  for (const off of oldBlocks) await image.metadata.refcounts.update(off / cs, 1, -1);
  await image.metadata.commitRefcounts("after-reference-removal");
  status(size, size);
}
