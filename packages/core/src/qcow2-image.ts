/**
 * The qcow2 engine: one open image (qcow2 file + optional external data file + optional backing chain)
 * behind the `BlockImage` surface every frontend uses.
 *
 * Write ordering (crash safety), kept by `writeback()`:
 *  1. guest data (and copy-on-write fill) is written before the L2 entry that maps it reaches disk;
 *  2. refcount increases reach disk before the L2/L1 entries that reference the clusters;
 *  3. a new L2 table reaches disk before the L1 entry that points to it;
 *  4. references are removed on disk before the refcounts of the clusters they pointed to are decreased
 *     (decreases are deferred until then, so freed clusters are not reused before);
 *  5. flush() reaches both the qcow2 file and the external data file.
 * Concurrency: reads and in-place writes share a readers-writer lock; anything that changes metadata
 * (allocating writes, zeroing, discard, flush, resize) takes it exclusively.
 */
import { flushForClose } from "./close-flush";
import { ClusterMap, L1Table, L2Cache, type L2Table } from "@qcowkit/cluster";
import { Refcounts } from "@qcowkit/refcount";
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_KNOWN_MASK,
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  Qcow2Error,
  SubclusterType,
  classifyCluster,
  decodeCompressedDescriptor,
  decodeHeader,
  decodeImageHeader,
  encodeCompressedDescriptor,
  openImageHeader,
  encodeImageHeader,
  getU64,
  isAllZero,
  firstNonZeroByte,
  l1EntriesForSize,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntryPosition,
  l2HostOffset,
  l2IsCopied,
  setL2Bitmap,
  setL2Entry,
  setL2Raw,
  subclusterMask,
  viewOf,
  type ByteStore,
  type CompressionType,
  type ImageHeader,
} from "@qcowkit/spec";
import {
  mergeExtents,
  type BitmapInfo,
  type BlockImage,
  type BlockStatusExtent,
  type ResizeOptions,
  type WriteOptions,
  type ZeroOptions,
} from "./block-image";
import { allocationRuns } from "./allocation";
import { StoreSlice, type Payload, type StoreRun } from "./store-slice";
import { bitmapStatus, listBitmaps } from "./bitmaps";
import { getCodec, type CompressionCodec } from "./compression";
// encryption: guest data encryption (crypto/image-encryption.ts)
import { openImageEncryption, withoutHostOffsets, type EncryptionOpenOptions, type ImageEncryption } from "./crypto/image-encryption";
import { isSectorAligned } from "./crypto/sector-alignment";
import { RwLock } from "./lock";
import type { ImageResolver } from "./resolver";
import { dirtyImageRepair } from "./repair";
import { preallocateHostSpace } from "./preallocate-host";
import { inactiveL2CheckedStore, refblockOverlapCheck } from "./metadata-overlap";
import { readSnapshotTable, type SnapshotInfo } from "./snapshots";

export interface Qcow2OpenOptions {
  /** Open read-only (no header updates, no writes). */
  readOnly?: boolean;
  /** Opens the external data file and backing images by name. */
  resolver?: ImageResolver;
  /** Use this data file instead of the stored name (a store, or a name for the resolver). */
  dataFile?: ByteStore | string;
  /** Use this backing image instead of the stored one; null: no backing image. */
  backing?: BlockImage | string | null;
  /** Backing format override when `backing` is a name. */
  backingFormat?: string;
  /** Bytes of L2 table cache (default 32 MiB) ; refcount blocks get a quarter of it. */
  cacheBytes?: number;
  /** Open for check/repair: a corrupt image may be opened read-write; no dirty-image repair. */
  checkMode?: boolean;
  /** Open only the metadata (qemu-img info): neither the data file nor backing images are opened. */
  noIo?: boolean;
  /** What discard requests do: "unmap" (default) or "ignore". */
  discard?: "ignore" | "unmap";
  /** The lazy-refcounts runtime option: overrides the image's compatible feature bit while open. */
  lazyRefcounts?: boolean;
  /** QEMU's overlap-check.inactive-l2 (on with overlap-check=all): writes are checked against snapshots' L2 tables. */
  overlapCheckInactiveL2?: boolean;
  /** Name for messages and map output. */
  filename?: string;
  /** Images already open in this backing chain (loop detection). */
  chain?: string[];
  /** Receives QEMU-style warning lines. */
  onWarning?: (message: string) => void;
  /** Repair of a dirty image opened read-write (lazy refcounts after a crash); default: repair.ts's. */
  repairDirty?: (image: Qcow2Image) => Promise<void>;
  /**
   * Persistent dirty bitmaps on a writable open: return true when the handler keeps them up to date (it then
   * registers write observers and a close hook); otherwise the bitmaps are declared inconsistent (autoclear
   * bit 0 cleared) before anything is written, as the spec requires of programs that do not track them.
   */
  bitmaps?: (image: Qcow2Image) => Promise<boolean>;
  /** encryption: QEMU's encrypt.* options (the key secret, the expected format). */
  encrypt?: EncryptionOpenOptions;
}

const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;
/** Flush deferred frees when this many separate ranges are waiting. */
const MAX_DEFERRED_RANGES = 4096;
/** Kinds of metadata cluster, for the overlap check (QEMU's QCOW2_OL_ACTIVE_L2 and QCOW2_OL_REFCOUNT_BLOCK). */
const META_L2 = 1;
const META_REFBLOCK = 2;

const hex = (n: number) => `0x${n.toString(16)}`;

/** Clusters of one compressed write compressed at the same time (QEMU runs up to 8 cluster tasks at once). */
const COMPRESS_WINDOW = 8;

/** A cluster's bytes for the compressor: the image's short last cluster padded with zeros, as QEMU pads it. */
function padToCluster(piece: Uint8Array, clusterSize: number): Uint8Array {
  if (piece.byteLength === clusterSize) return piece;
  const padded = new Uint8Array(clusterSize);
  padded.set(piece);
  return padded;
}
/**
 * An invalid (extended) L2 entry met while mapping a write for the in-place path: the allocating path, which
 * meets it too, reports it in the words of QEMU's write path.
 */
function invalidEntryToAllocatingPath(e: unknown): false {
  if (e instanceof Qcow2Error && e.code === "CORRUPT" && e.message.startsWith("Invalid cluster entry found ")) return false;
  throw e;
}
/** Flags of a data cluster the active L1/L2 tables own alone. */
const COPIED = { copied: true } as const;

export class Qcow2Image implements BlockImage {
  readonly format = "qcow2" as const;
  readonly filename: string;
  readOnly: boolean;
  /** The parsed cluster 0 (kept current: header updates go through it). */
  hdr: ImageHeader;
  readonly meta: ByteStore;
  data: ByteStore;
  /** Name of the external data file as opened (for map output). */
  dataFileName: string | undefined;
  backing: BlockImage | null = null;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  l1: L1Table;
  readonly l2Cache: L2Cache;
  readonly map: ClusterMap;
  refcounts: Refcounts;
  snapshots: SnapshotInfo[] = [];
  readonly lock = new RwLock();
  private readonly opts: Qcow2OpenOptions;
  /** Guest data written since the last flush of its store. */
  private dataDirty = false;
  private corruptSignalled = false;
  private ejected = false;
  private dirtyMarked = false;
  private closed = false;
  private codec: CompressionCodec | undefined;
  private decompressed: { key: number; bytes: Uint8Array } | undefined;
  /** Cluster indices of L2 tables and refcount blocks, for the overlap check on data writes. */
  private metadataClusters: Map<number, number> | undefined;
  readonly warnings: string[] = [];
  /** encryption: the image's encryption (undefined when unencrypted); no cipher when opened without I/O. */
  encryption: ImageEncryption | undefined;

  private constructor(meta: ByteStore, hdr: ImageHeader, l1: L1Table, refcounts: Refcounts, opts: Qcow2OpenOptions) {
    this.meta = meta;
    this.data = meta;
    this.hdr = hdr;
    this.opts = opts;
    this.filename = opts.filename ?? meta.name;
    this.readOnly = opts.readOnly ?? meta.readOnly;
    const h = hdr.header;
    this.clusterBits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    this.extendedL2 = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    this.hasDataFile = (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    this.l1 = l1;
    const cacheBytes = opts.cacheBytes ?? DEFAULT_CACHE_BYTES;
    this.l2Cache = new L2Cache(meta, this.clusterSize, Math.max(4, Math.floor(cacheBytes / this.clusterSize)));
    this.map = new ClusterMap(
      { clusterBits: h.clusterBits, extendedL2: this.extendedL2, dataFile: this.hasDataFile },
      l1,
      this.l2Cache,
    );
    this.refcounts = refcounts;
  }

  // ---------------------------------------------------------------- open

  static async open(meta: ByteStore, opts: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
    const checked = opts.overlapCheckInactiveL2 ? inactiveL2CheckedStore(meta) : undefined;
    if (checked) meta = checked.store;
    const readOnly = opts.readOnly ?? meta.readOnly;
    const probe = new Uint8Array(512);
    await meta.read(0, probe);
    // decodeHeader checks magic, version and cluster bits before cluster_bits sizes the full read.
    const clusterBits = decodeHeader(probe).clusterBits;
    const cluster0 = new Uint8Array(2 ** clusterBits);
    await meta.read(0, cluster0);
    let opened;
    try {
      opened = openImageHeader(cluster0, {
        readWrite: !readOnly,
        checkMode: opts.checkMode ?? false,
        noIo: opts.noIo ?? false,
        dataFileGiven: opts.dataFile !== undefined,
      });
    } catch (e) {
      // QEMU opens a data-file given in the options before it refuses it for an image with internal data:
      // when that file cannot be opened, its error is the one reported.
      const internalData = (decodeHeader(cluster0).incompatibleFeatures & INCOMPAT_DATA_FILE) === 0n;
      if (internalData && typeof opts.dataFile === "string" && opts.resolver && !opts.noIo) {
        const name = opts.filename ?? meta.name;
        const ctx = { imageName: name, readOnly, chain: [...(opts.chain ?? []), name] };
        await (await opts.resolver.openDataFile(opts.dataFile, ctx)).close();
      }
      throw e;
    }
    const hdr = opened.image;
    const h = hdr.header;
    const validation = opened;
    const l1 = await L1Table.load(meta, h.l1TableOffset, h.l1Size);
    const image = new Qcow2Image(meta, hdr, l1, undefined as unknown as Refcounts, { ...opts, readOnly });
    checked?.bind(image);
    const cacheBytes = opts.cacheBytes ?? DEFAULT_CACHE_BYTES;
    image.refcounts = await Refcounts.load(meta, {
      clusterBits: h.clusterBits,
      refcountOrder: h.refcountOrder,
      reftableOffset: h.refcountTableOffset,
      reftableClusters: h.refcountTableClusters,
      cacheBlocks: Math.max(8, Math.floor(cacheBytes / 4 / image.clusterSize)),
      readOnly,
      updateHeader: (offset, clusters) => image.writeReftableLocation(offset, clusters),
      checkBlockWrite: (offset) => refblockOverlapCheck(image, offset),
      onDeferredBelow: () => image.writeback(),
    });
    for (const w of validation.warnings) image.warn(`warning: ${w}`);
    for (const n of validation.notices) image.warn(n);
    try {
      await image.openRest(validation.ignoreBitmaps);
    } catch (e) {
      await image.releaseChildren();
      throw e;
    }
    return image;
  }

  private async openRest(ignoreBitmaps: boolean): Promise<void> {
    const opts = this.opts;
    const h = this.hdr.header;
    if (opts.lazyRefcounts && h.version < 3) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level");
    }
    // encryption: the encrypt.* options and the key, before anything else is opened or changed (as QEMU)
    this.encryption = await openImageEncryption(this.hdr, this.meta, opts.encrypt, opts.noIo ?? false);
    if (!opts.checkMode && h.nbSnapshots > 0) {
      this.snapshots = await readSnapshotTable(this.meta, h.snapshotsOffset, h.nbSnapshots);
    }
    const ctx = { imageName: this.filename, readOnly: this.readOnly, chain: [...(opts.chain ?? []), this.filename] };
    if (!opts.noIo) {
      if (this.hasDataFile) {
        if (opts.dataFile !== undefined && typeof opts.dataFile !== "string") {
          this.data = opts.dataFile;
          this.dataFileName = opts.dataFile.name;
        } else {
          const name = opts.dataFile ?? this.hdr.extensions.dataFile;
          if (name === undefined) throw new Qcow2Error("INVALID_IMAGE", "'data-file' is required for this image");
          if (!opts.resolver) throw new Qcow2Error("NOT_SUPPORTED", "no resolver to open the external data file");
          this.data = await opts.resolver.openDataFile(name, ctx);
          this.dataFileName = this.data.name;
        }
      } else if (opts.dataFile !== undefined) {
        throw new Qcow2Error(
          "INVALID_ARGUMENT",
          "'data-file' can only be set for images with an external data file",
        );
      }
      if (opts.backing !== undefined && opts.backing !== null && typeof opts.backing !== "string") {
        this.backing = opts.backing;
      } else if (opts.backing !== null) {
        const name = opts.backing ?? this.hdr.backingFile;
        if (name !== undefined && name !== "") {
          if (!opts.resolver) throw new Qcow2Error("NOT_SUPPORTED", "no resolver to open the backing file");
          this.backing = await opts.resolver.openBacking(
            name,
            opts.backingFormat ?? this.hdr.extensions.backingFormat,
            { ...ctx, readOnly: true },
          );
        }
      }
    }
    if (this.readOnly) return;
    // Writable open: clear autoclear bits we do not maintain, drop inconsistent bitmaps.
    let update = false;
    const unknownAutoclear = h.autoclearFeatures & ~AUTOCLEAR_KNOWN_MASK;
    if (unknownAutoclear) {
      h.autoclearFeatures &= AUTOCLEAR_KNOWN_MASK;
      update = true;
    }
    if (ignoreBitmaps && this.hdr.extensions.bitmaps) {
      delete this.hdr.extensions.bitmaps;
      update = true;
    }
    if (update) await this.writeHeader();
    if (h.autoclearFeatures & AUTOCLEAR_BITMAPS && this.hdr.extensions.bitmaps) {
      const tracked = this.opts.bitmaps ? await this.opts.bitmaps(this) : false;
      if (!tracked) {
        // Bitmaps nobody keeps up to date must be declared inconsistent before we write.
        h.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
        await this.writeHeader();
      }
    }
    if (h.incompatibleFeatures & INCOMPAT_DIRTY && !this.opts.checkMode) {
      // QEMU repairs a dirty image on every read-write open (qemu-img check -r all without the second pass);
      // repair.ts holds that repair (engine edit by the repair owner: the default used to be a refusal).
      await (this.opts.repairDirty ?? dirtyImageRepair())(this);
    }
  }

  /** Called with every guest range written, zeroed or discarded (dirty bitmap tracking). */
  readonly writeObservers: Array<(guestOffset: number, byteLength: number) => void> = [];
  /** Run by close() before the final flush, in order (e.g. storing dirty bitmaps). */
  readonly closeHooks: Array<() => Promise<void>> = [];

  private observe(guestOffset: number, byteLength: number): void {
    for (const o of this.writeObservers) o(guestOffset, byteLength);
  }

  /** Report a non-fatal problem: kept in `warnings` and passed to the `onWarning` open option. */
  warn(message: string): void {
    this.warnings.push(message);
    this.opts.onWarning?.(message);
  }

  // ---------------------------------------------------------------- properties

  get header() {
    return this.hdr.header;
  }

  get virtualSize(): number {
    return this.hdr.header.size;
  }

  get version(): number {
    return this.hdr.header.version;
  }

  get dataFileRaw(): boolean {
    return (this.hdr.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n;
  }

  get lazyRefcounts(): boolean {
    return this.opts.lazyRefcounts ?? (this.hdr.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  get compressionType(): CompressionType {
    return this.hdr.header.compressionType === 1 ? "zstd" : "zlib";
  }

  /** The image was marked corrupt while open: QEMU then writes no cached metadata back (the node is gone). */
  get corruptionSignalled(): boolean {
    return this.corruptSignalled;
  }

  get isCorrupt(): boolean {
    return (this.hdr.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
  }

  get isDirty(): boolean {
    return (this.hdr.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  }

  // ---------------------------------------------------------------- header writes

  /** Rewrite cluster 0 from `hdr` and flush. */
  async writeHeader(): Promise<void> {
    this.assertWritable();
    const bytes = encodeImageHeader(this.hdr);
    await this.meta.write(0, bytes);
    await this.meta.flush();
    this.hdr = decodeImageHeader(bytes);
  }

  /** Write the incompatible feature bits alone (8 bytes at 72), synchronously. */
  private async writeIncompatibleFeatures(): Promise<void> {
    const b = new Uint8Array(8);
    viewOf(b).setBigUint64(0, this.hdr.header.incompatibleFeatures);
    await this.meta.write(72, b);
    await this.meta.flush();
  }

  /** Point the header at a moved refcount table (public for amend's refcount width change). */
  async writeReftableLocation(offset: number, clusters: number): Promise<void> {
    const b = new Uint8Array(12);
    const v = viewOf(b);
    v.setUint32(0, Math.floor(offset / 2 ** 32));
    v.setUint32(4, offset >>> 0);
    v.setUint32(8, clusters);
    await this.meta.write(48, b);
    await this.meta.flush();
    this.hdr.header.refcountTableOffset = offset;
    this.hdr.header.refcountTableClusters = clusters;
    this.metadataClusters = undefined;
  }

  private async writeL1Location(l1Size: number, offset: number): Promise<void> {
    const b = new Uint8Array(12);
    const v = viewOf(b);
    v.setUint32(0, l1Size);
    v.setUint32(4, Math.floor(offset / 2 ** 32));
    v.setUint32(8, offset >>> 0);
    await this.meta.write(36, b);
    await this.meta.flush();
    this.hdr.header.l1Size = l1Size;
    this.hdr.header.l1TableOffset = offset;
    this.metadataClusters = undefined;
  }

  /** Lazy refcounts: mark the image dirty before the first metadata change. */
  private async markDirty(): Promise<void> {
    if (this.dirtyMarked || !this.lazyRefcounts) return;
    if (!this.isDirty) {
      this.hdr.header.incompatibleFeatures |= INCOMPAT_DIRTY;
      await this.writeIncompatibleFeatures();
    }
    this.dirtyMarked = true;
  }

  private async markClean(): Promise<void> {
    if (!this.isDirty) return;
    this.hdr.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
    await this.writeIncompatibleFeatures();
    this.dirtyMarked = false;
  }

  /**
   * Run `update`, which changes refcounts and then COPIED flags in separate steps (snapshot create, apply and
   * delete), with the dirty bit set on a clean v3 image: a power loss in between leaves a dirty image, which
   * the next read-write open repairs, instead of COPIED flags that disagree with the refcounts. Everything is
   * on disk before the bit is cleared (refcounts included: with the bit set, writeback treats a
   * lazy-refcount image as dirty and leaves them cached). A refusal that `update` rolled back clears it too;
   * if writing back fails, the bit stays and the next read-write open repairs the image. Callers flush before
   * (their consistent cached state may reach disk under the bit). (QEMU 7.2 leaves that window open; the
   * final image is the same byte for byte.)
   */
  async withDirtyBit<T>(update: () => Promise<T>): Promise<T> {
    if (this.version < 3 || this.isDirty || this.readOnly) return update();
    this.hdr.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    await this.writeIncompatibleFeatures();
    const settle = async () => {
      await this.writeback();
      await this.refcounts.writeBack();
      await this.meta.flush();
      if (this.data !== this.meta) await this.data.flush();
      await this.markClean();
    };
    let result: T;
    try {
      result = await update();
    } catch (error) {
      // When settling fails too, the file refuses writes: nothing more is written (the bit stays, so the
      // next read-write open repairs), as QEMU writes nothing more after such a failure.
      if (!this.isCorrupt) await settle().catch(() => this.eject());
      throw error;
    }
    await settle();
    return result;
  }

  /** Mark the image corrupt (QEMU's qcow2_signal_corruption, fatal) and return the error to throw. */
  async signalCorruption(message: string): Promise<Qcow2Error> {
    if (!this.corruptSignalled) {
      this.corruptSignalled = true;
      if (!this.readOnly && !this.closed) {
        this.warn(`qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`);
        this.hdr.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
        try {
          await this.writeIncompatibleFeatures();
        } catch {
          /* the image is unusable anyway */
        }
      } else {
        this.warn(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`);
      }
    }
    return new Qcow2Error("IO_ERROR", message, { errno: "EIO" });
  }

  /** Run `fn`, turning CORRUPT errors into a corruption signal and an I/O error (as QEMU does). */
  /**
   * Drop the image's driver after a failure that left the on-disk structures unusable (QEMU's
   * `bs->drv = NULL`): later requests fail and close writes nothing more.
   */
  eject(): void {
    this.ejected = true;
  }

  private guard<T>(fn: () => Promise<T>): Promise<T> {
    if ((this.corruptSignalled || this.ejected) && !this.readOnly) {
      // QEMU drops the driver of an image it marked corrupt: later requests find no medium.
      return Promise.reject(new Qcow2Error("IO_ERROR", "Image is corrupt; further I/O refused", { errno: "ENOMEDIUM" }));
    }
    let p: Promise<T>;
    try {
      p = fn();
    } catch (e) {
      p = Promise.reject(e);
    }
    return p.catch(async (e: unknown) => {
      if (e instanceof Qcow2Error && e.code === "CORRUPT") throw await this.signalCorruption(e.message);
      throw e;
    });
  }

  private assertOpen(): void {
    if (this.closed) throw new Qcow2Error("INVALID_ARGUMENT", "Image is closed");
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  }

  private checkRange(guestOffset: number, byteLength: number): void {
    if (
      !Number.isSafeInteger(guestOffset) ||
      !Number.isSafeInteger(byteLength) ||
      guestOffset < 0 ||
      byteLength < 0 ||
      guestOffset + byteLength > this.virtualSize
    ) {
      throw new Qcow2Error("OUT_OF_BOUNDS", "Request out of bounds", { errno: "EINVAL" });
    }
  }

  // ---------------------------------------------------------------- read

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    this.assertOpen();
    this.checkRange(guestOffset, into.byteLength);
    if (into.byteLength === 0) return;
    await this.lock.read(() => this.guard(() => this.readFast(guestOffset, into) ?? this.readUnlocked(guestOffset, into)));
  }

  /** The common case without extra awaits: one cached run of data (or zeros) covers the whole request. */
  private readFast(guestOffset: number, into: Uint8Array): Promise<void> | undefined {
    const run = this.map.mapRunCached(guestOffset, into.byteLength);
    if (!run || run.byteLength !== into.byteLength) return undefined;
    if (run.type === SubclusterType.NORMAL) return this.readData(run.hostOffset, guestOffset, into);
    if (run.type === SubclusterType.ZERO_PLAIN || run.type === SubclusterType.ZERO_ALLOC) {
      into.fill(0);
      return Promise.resolve();
    }
    return undefined;
  }

  /** Read through the current mapping; the caller holds the lock. */
  async readUnlocked(guestOffset: number, into: Uint8Array): Promise<void> {
    const end = guestOffset + into.byteLength;
    const pending: Promise<void>[] = [];
    let pos = guestOffset;
    // Engine edits by the fuzz owner: reads already started are awaited before an error propagates (they
    // were left as unhandled rejections, which end a Node process with a stack trace), and host offsets no
    // store can address (2^53 and more, from damaged L2 entries) read as zeros, as QEMU reads past the end
    // of the file.
    try {
      while (pos < end) {
        const run = await this.map.mapRun(pos, end - pos);
        const dst = into.subarray(pos - guestOffset, pos - guestOffset + run.byteLength);
        switch (run.type) {
          case SubclusterType.NORMAL:
            if (!Number.isSafeInteger(run.hostOffset + dst.byteLength)) dst.fill(0);
            else pending.push(this.readData(run.hostOffset, pos, dst));
            break;
          case SubclusterType.ZERO_PLAIN:
          case SubclusterType.ZERO_ALLOC:
            dst.fill(0);
            break;
          case SubclusterType.COMPRESSED: {
            const cluster = await this.readCompressedCluster(run.compressed!);
            const inCluster = pos % this.clusterSize;
            dst.set(cluster.subarray(inCluster, inCluster + run.byteLength));
            break;
          }
          default:
            pending.push(this.readBacking(pos, dst));
        }
        pos += run.byteLength;
        if (pending.length >= 64) await Promise.all(pending.splice(0));
      }
    } catch (e) {
      await Promise.allSettled(pending);
      throw e;
    }
    await Promise.all(pending);
    // A read alone under the lock holds no table once done: the dropped tables' bytes can be reused.
    this.l2Cache.trim(this.lock.soleReader);
  }

  /** encryption: guest data read from the data store is decrypted (whole sectors are read for it). */
  private readData(hostOffset: number, guestOffset: number, dst: Uint8Array): Promise<void> {
    this.meta.debugEvent?.("read_aio");
    if (this.encryption) return this.encryption.read(this.data, hostOffset, guestOffset, dst);
    return this.data.read(hostOffset, dst);
  }

  private async readBacking(guestOffset: number, dst: Uint8Array): Promise<void> {
    const b = this.backing;
    if (!b || guestOffset >= b.virtualSize) {
      dst.fill(0);
      return;
    }
    const inBacking = Math.min(dst.byteLength, b.virtualSize - guestOffset);
    await b.read(guestOffset, dst.subarray(0, inBacking));
    if (inBacking < dst.byteLength) dst.fill(0, inBacking);
  }

  private async compression(): Promise<CompressionCodec> {
    this.codec ??= await getCodec(this.compressionType);
    return this.codec;
  }

  private async readCompressedCluster(desc: { hostOffset: number; byteLength: number }): Promise<Uint8Array> {
    if (this.decompressed?.key === desc.hostOffset) return this.decompressed.bytes;
    const compressed = new Uint8Array(desc.byteLength);
    await this.meta.read(desc.hostOffset, compressed);
    const codec = await this.compression();
    const bytes = await codec.decompress(compressed, this.clusterSize);
    this.decompressed = { key: desc.hostOffset, bytes };
    return bytes;
  }

  // ---------------------------------------------------------------- write

  async write(guestOffset: number, data: Uint8Array, opts: WriteOptions = {}): Promise<void> {
    await this.writePayload(guestOffset, data, opts);
  }

  /**
   * Write guest data that lives in byte stores (see StoreSlice): the data store copies it store to store.
   * False, with nothing written, where this image cannot (encryption, extended L2 entries, a data store
   * without copyFrom): the caller then reads the bytes and writes them.
   */
  async writeFromStores(guestOffset: number, data: StoreSlice): Promise<boolean> {
    if (this.encryption || this.extendedL2 || !StoreSlice.canCopyInto(this.data)) return false;
    await this.writePayload(guestOffset, data, {});
    return true;
  }

  /**
   * A store-to-store write for a copy that learns where its data is zero only by reading it (convert into a
   * fresh image), in one pass over the data. The data's place is guessed first: the clusters `allocate` would
   * give right now (after the L2 table the write makes first, when there is none yet), when the range is whole
   * unallocated clusters (no copy-on-write) under one L2 table, the image has no external data file, and no
   * refcount block has to be made. The slice is copied there (free clusters: nothing refers to them) while its zero
   * sectors are marked in `scan`, and then `keep(scan)` decides:
   * - true: the write is made as `writeFromStores` makes it (allocation, L2 entries), and since nothing ran in
   *   between, the data is where it was copied, so it is not copied again ("written");
   * - false: the copied bytes are zeroed and the file shrunk back to its size before ("declined", `scan`
   *   filled): the caller writes the parts it wants.
   * "unsupported" when no guess can be made; nothing was done and `scan` is untouched.
   */
  async writeFromStoresGuessing(
    guestOffset: number,
    data: StoreSlice,
    scan: Uint8Array,
    keep: (scan: Uint8Array) => boolean,
  ): Promise<"written" | "declined" | "unsupported"> {
    this.assertWritable();
    this.checkRange(guestOffset, data.byteLength);
    if (this.encryption || this.extendedL2 || this.hasDataFile || !StoreSlice.canCopyInto(this.data)) return "unsupported";
    const cs = this.clusterSize;
    const end = guestOffset + data.byteLength;
    // Whole clusters only: a partial last cluster would be zeroed before its data is written (copy-on-write).
    if (data.byteLength === 0 || guestOffset % cs !== 0 || end % cs !== 0) return "unsupported";
    if (scan.length !== Math.ceil(data.byteLength / 512)) throw new Qcow2Error("INTERNAL", "writeFromStoresGuessing: scan has the wrong size");
    return this.lock.write(() =>
      this.guard(async () => {
        const l1Index = this.map.l1Index(guestOffset);
        if (this.map.l1Index(end - 1) !== l1Index || l1Index >= this.l1.size) return "unsupported";
        const tableOffset = this.map.l2TableOffset(l1Index);
        const count = Math.ceil(data.byteLength / cs);
        let first: number | undefined;
        if (tableOffset === 0) {
          // The write will make the L2 table first (at the next free cluster), then the data after it.
          const table = await this.refcounts.nextAllocation(1);
          if (table === undefined || table === 0) return "unsupported";
          first = await this.refcounts.nextAllocation(count, table + 1);
        } else {
          if (!this.l1.copied(l1Index)) return "unsupported";
          const t = await this.l2Cache.get(tableOffset);
          const firstIndex = this.map.l2Index(guestOffset);
          if (this.nextUsedEntry(t, firstIndex, firstIndex + count) >= 0) return "unsupported";
          first = await this.refcounts.nextAllocation(count);
        }
        if (first === undefined || first === 0) return "unsupported";
        const host = first * cs;
        this.checkOverlap(host, count * cs);
        const sizeBefore = await this.data.size();
        let kept = false;
        try {
          await data.copyTo(this.data, host, scan);
          kept = keep(scan);
        } finally {
          if (!kept) {
            // Back to how the free clusters were: zeros inside the old end, nothing past it.
            if (host < sizeBefore) await this.data.writeZeroes(host, Math.min(count * cs, sizeBefore - host), true);
            if ((await this.data.size()) > sizeBefore) await this.data.resize(sizeBefore);
          }
        }
        if (!kept) return "declined";
        this.observe(guestOffset, data.byteLength);
        await this.writeUnlocked(guestOffset, new StoreSlice(data.runs, { store: this.data, offset: host }));
        return "written";
      }),
    );
  }

  /**
   * Where the guest bytes of a range are stored as they are (plain allocated clusters of an unencrypted
   * image), in guest order; undefined when some of it is not (zeros, compressed, unallocated, encrypted).
   */
  async storeRuns(guestOffset: number, byteLength: number): Promise<StoreRun[] | undefined> {
    this.assertOpen();
    this.checkRange(guestOffset, byteLength);
    if (this.encryption) return undefined;
    return this.lock.read(() =>
      this.guard(async () => {
        const runs: StoreRun[] = [];
        const end = guestOffset + byteLength;
        for (let pos = guestOffset; pos < end; ) {
          const run = await this.map.mapRun(pos, end - pos);
          if (run.type !== SubclusterType.NORMAL || !Number.isSafeInteger(run.hostOffset + run.byteLength)) return undefined;
          const last = runs[runs.length - 1];
          if (last && last.offset + last.length === run.hostOffset) runs[runs.length - 1] = { ...last, length: last.length + run.byteLength };
          else runs.push({ store: this.data, offset: run.hostOffset, length: run.byteLength });
          pos += run.byteLength;
        }
        return runs;
      }),
    );
  }

  private async writePayload(guestOffset: number, data: Payload, opts: WriteOptions): Promise<void> {
    this.assertWritable();
    this.checkRange(guestOffset, data.byteLength);
    if (data.byteLength === 0) return;
    this.observe(guestOffset, data.byteLength);
    if (opts.compressed) {
      // Compressed writes are compressed as they come (several at once when several are in flight) and
      // placed one after the other in the order they were issued, so the file does not depend on timing.
      const ticket = this.compressedIssued++;
      try {
        this.checkCompressedWrite(guestOffset, data.byteLength);
        const bytes = data instanceof StoreSlice ? await data.bytes() : data;
        const compressed = await this.compressClusters(bytes);
        await this.compressedTurn(ticket);
        await this.lock.write(() => this.guard(() => this.placeCompressedClusters(guestOffset, bytes, compressed)));
      } finally {
        this.endCompressedTurn(ticket);
      }
    } else {
      // encryption: partial sectors are read, completed and rewritten: never concurrently (exclusive lock)
      const rmw = this.encryption !== undefined && !isSectorAligned(guestOffset, data.byteLength, this.virtualSize);
      const done = !rmw && (await this.lock.read(() => this.guard(() => this.tryWriteInPlace(guestOffset, data).catch(invalidEntryToAllocatingPath))));
      if (!done) await this.lock.write(() => this.guard(() => this.writeUnlocked(guestOffset, data)));
    }
    if (opts.fua) await this.flush();
  }

  /** Write when every byte lands in an allocated, COPIED (sub)cluster: no metadata change. */
  private async tryWriteInPlace(guestOffset: number, data: Payload): Promise<boolean> {
    const single = this.map.mapRunCached(guestOffset, data.byteLength);
    if (single && single.byteLength === data.byteLength) {
      if (single.type !== SubclusterType.NORMAL || !single.copied) return false;
      await this.writeData(single.hostOffset, data, guestOffset);
      return true;
    }
    const end = guestOffset + data.byteLength;
    const runs: Array<[host: number, from: number, to: number]> = [];
    let pos = guestOffset;
    while (pos < end) {
      const run = await this.map.mapRun(pos, end - pos);
      if (run.type !== SubclusterType.NORMAL || !run.copied) return false;
      runs.push([run.hostOffset, pos - guestOffset, pos - guestOffset + run.byteLength]);
      pos += run.byteLength;
    }
    await Promise.all(runs.map(([host, from, to]) => this.writeData(host, data.subarray(from, to), guestOffset + from)));
    return true;
  }

  /** Write guest data at a host offset of the data store, with QEMU's overlap check for the qcow2 file. */
  private async writeData(hostOffset: number, bytes: Payload, guestOffset: number): Promise<void> {
    this.meta.debugEvent?.("write_aio");
    if (bytes instanceof StoreSlice) {
      // Never encrypted (writeFromStores refuses): copied store to store.
      if (!this.hasDataFile) this.checkOverlap(hostOffset, bytes.byteLength);
      await bytes.copyTo(this.data, hostOffset);
      this.dataDirty = true;
      return;
    }
    // encryption: what is stored is an encrypted copy in whole sectors (the caller's buffer stays as it is)
    if (this.encryption) ({ hostOffset, bytes } = await this.encryption.seal(this.data, hostOffset, guestOffset, bytes));
    if (!this.hasDataFile) this.checkOverlap(hostOffset, bytes.byteLength);
    await this.data.write(hostOffset, bytes);
    this.dataDirty = true;
  }

  /** Refuse a data write onto metadata (QEMU's "cached" overlap check). */
  private checkOverlap(hostOffset: number, byteLength: number): void {
    const cs = this.clusterSize;
    const h = this.hdr.header;
    const first = Math.floor(hostOffset / cs);
    const last = Math.floor((hostOffset + byteLength - 1) / cs);
    const hit = (what: string) => {
      throw new Qcow2Error(
        "CORRUPT",
        `Preventing invalid write on metadata (overlaps with ${what})`,
      );
    };
    const inRange = (start: number, bytes: number) =>
      bytes > 0 && first <= Math.floor((start + bytes - 1) / cs) && last >= Math.floor(start / cs);
    // QEMU names the lowest overlap bit: header, active L1, active L2, refcount table, refcount block,
    // snapshot table.
    const meta = this.metadataClusterSet();
    let kinds = 0;
    // Whichever is shorter: the clusters of the write, or the metadata clusters.
    if (last - first + 1 <= meta.size) {
      for (let c = first; c <= last; c++) kinds |= meta.get(c) ?? 0;
    } else {
      for (const [c, k] of meta) if (c >= first && c <= last) kinds |= k;
    }
    if (first === 0) hit("qcow2_header");
    if (inRange(h.l1TableOffset, h.l1Size * 8)) hit("active L1 table");
    if (kinds & META_L2) hit("active L2 table");
    if (inRange(h.refcountTableOffset, h.refcountTableClusters * cs)) hit("refcount table");
    if (kinds & META_REFBLOCK) hit("refcount block");
    if (h.nbSnapshots > 0 && inRange(h.snapshotsOffset, this.snapshotTableBytes())) hit("snapshot table");
  }

  private snapshotTableBytes(): number {
    return this.snapshots.reduce((n, s) => n + s.entryBytes, 0) || this.clusterSize;
  }

  /**
   * Forget what is derived from the active L1 table and the refcount structures (the overlap check's set of
   * metadata clusters). Called by code outside this class that replaces them: snapshot apply, amend.
   */
  metadataChanged(): void {
    this.metadataClusters = undefined;
  }

  /** Clusters of active L2 tables and refcount blocks, each with META_L2 | META_REFBLOCK bits. */
  private metadataClusterSet(): Map<number, number> {
    if (this.metadataClusters) return this.metadataClusters;
    const set = new Map<number, number>();
    const add = (c: number, k: number) => set.set(c, (set.get(c) ?? 0) | k);
    for (let i = 0; i < this.l1.size; i++) {
      const off = this.l1.l2Offset(i);
      if (off) add(Math.floor(off / this.clusterSize), META_L2);
    }
    const reftable = viewOf(this.refcounts.reftable);
    for (let i = 0; i < this.refcounts.reftableEntries; i++) {
      const off = getU64(reftable, i * 8) - (reftable.getUint32(i * 8 + 4) & 0x1ff);
      if (off) add(Math.floor(off / this.clusterSize), META_REFBLOCK);
    }
    this.metadataClusters = set;
    return set;
  }

  /** The L2 table for `guestOffset`, allocated (or copied from a shared one) so it can be changed in place. */
  private async l2ForWrite(guestOffset: number): Promise<L2Table> {
    await this.markDirty();
    const l1Index = this.map.l1Index(guestOffset);
    if (l1Index >= this.l1.size) throw new Qcow2Error("INTERNAL", "L1 table too small for the write");
    const old = this.map.l2TableOffset(l1Index);
    if (old !== 0 && this.l1.copied(l1Index)) return this.l2Cache.get(old);
    const newOffset = (await this.allocateMetadata(1, "L2 table")) * this.clusterSize;
    // Like QEMU's l2_allocate: the refcounts (the new table's included) reach disk before the table is used,
    // even with lazy refcounts.
    await this.refcounts.writeBack();
    await this.meta.flush();
    const bytes = new Uint8Array(this.clusterSize);
    if (old !== 0) bytes.set((await this.l2Cache.get(old)).bytes);
    this.meta.debugEvent?.("l2_alloc_write");
    const table = this.l2Cache.create(newOffset, bytes);
    this.l1.set(l1Index, newOffset, true);
    const meta = this.metadataClusterSet();
    meta.set(newOffset / this.clusterSize, (meta.get(newOffset / this.clusterSize) ?? 0) | META_L2);
    if (old !== 0) this.refcounts.deferFree(old / this.clusterSize, 1);
    return table;
  }

  /** Allocate metadata clusters in the qcow2 file; refuses offset 0 as QEMU does. */
  private async allocateMetadata(count: number, what: string): Promise<number> {
    const first = await this.refcounts.allocate(count);
    if (first === 0) {
      throw new Qcow2Error("CORRUPT", `Preventing invalid allocation of ${what} at offset 0`);
    }
    return first;
  }

  /** The allocating write path (exclusive lock held). */
  async writeUnlocked(guestOffset: number, data: Payload): Promise<void> {
    this.allocHint = -1;
    try {
      await this.writeUnlockedRuns(guestOffset, data);
    } finally {
      // Clusters of an extended L2 run allocated for a write that failed before it reached them go back.
      const left = this.extendedRun;
      this.extendedRun = undefined;
      if (left && left.count > 0) await this.refcounts.update(left.next, left.count, -1).catch(() => undefined);
    }
  }

  /**
   * Host cluster where the next allocation of the write being made should go: right after the host range of
   * its previous piece (QEMU's qcow2_alloc_host_offset keeps the host range of one write contiguous), -1 none.
   */
  private allocHint = -1;
  /** Extended L2: clusters allocated together for a run of clusters that all need new ones, not yet used. */
  private extendedRun: { next: number; count: number } | undefined;

  /**
   * QEMU's do_alloc_cluster_offset: `count` new clusters at the allocation hint when free there (as many as
   * are: qcow2_alloc_clusters_at), else where the allocator places them. Returns the first and how many.
   */
  private async allocateRun(count: number): Promise<[first: number, count: number]> {
    const hint = this.allocHint;
    if (hint > 0) {
      let n = 0;
      while (n < count && (await this.refcounts.get(hint + n)) === 0) n++;
      if (n > 0) {
        await this.refcounts.allocateAt(hint, n);
        return [hint, n];
      }
    }
    return [await this.refcounts.allocate(count), count];
  }

  /** Extended L2: a new host cluster for the cluster at `pos`, from a run allocated for the clusters up to `tableEnd` that need one. */
  private async extendedHostCluster(t: L2Table, pos: number, tableEnd: number): Promise<number> {
    if (!this.extendedRun || this.extendedRun.count === 0) {
      const cs = this.clusterSize;
      let count = 0;
      for (let at = Math.floor(pos / cs) * cs; at < tableEnd; at += cs) {
        const [hi, lo] = this.entryHalves(t, this.map.l2Index(at));
        const kind = classifyCluster(hi, lo, this.map.format);
        if (kind === "normal" && l2IsCopied(hi)) break;
        count++;
      }
      const [next, n] = await this.allocateRun(Math.max(1, count));
      this.extendedRun = { next, count: n };
    }
    const run = this.extendedRun;
    run.count--;
    return run.next++;
  }

  private async writeUnlockedRuns(guestOffset: number, data: Payload): Promise<void> {
    const end = guestOffset + data.byteLength;
    const cs = this.clusterSize;
    let pos = guestOffset;
    while (pos < end) {
      const tableEnd = Math.min(end, (this.map.l1Index(pos) + 1) * this.map.l2Coverage);
      const t = await this.l2ForWrite(pos);
      while (pos < tableEnd) {
        if (this.extendedL2) {
          const clusterEnd = Math.min(tableEnd, (Math.floor(pos / cs) + 1) * cs);
          const piece = data.subarray(pos - guestOffset, clusterEnd - guestOffset);
          await this.writeClusterExtended(t, pos, piece instanceof StoreSlice ? await piece.bytes() : piece, tableEnd);
          pos = clusterEnd;
        } else {
          pos = await this.writeRunStandard(t, pos, tableEnd, data.subarray(pos - guestOffset, tableEnd - guestOffset));
        }
      }
      this.l2Cache.markDirty(t);
      await this.maybeWriteback();
    }
  }

  /**
   * Index of the first standard L2 entry of `[from, to)` that is not all zeros (unallocated, no flags), or -1:
   * the entries of a fresh table are skimmed in bulk instead of decoded one by one.
   */
  private nextUsedEntry(t: L2Table, from: number, to: number): number {
    const at = firstNonZeroByte(t.bytes, from * 8, to * 8);
    return at < 0 ? -1 : at >>> 3;
  }

  private entryHalves(t: L2Table, l2Index: number): [number, number] {
    const at = l2EntryPosition(l2Index, this.extendedL2);
    return [t.view.getUint32(at), t.view.getUint32(at + 4)];
  }

  /**
   * Standard L2 entries: handle the clusters from `pos` that share one way of writing (in place, or a fresh
   * contiguous allocation, or one reused cluster) and return where the next step starts. `data` holds the
   * guest bytes of [pos, tableEnd).
   */
  private async writeRunStandard(t: L2Table, pos: number, tableEnd: number, data: Payload): Promise<number> {
    const cs = this.clusterSize;
    const fmt = this.map.format;
    const clusterStart = Math.floor(pos / cs) * cs;
    const [hi, lo] = this.entryHalves(t, this.map.l2Index(pos));
    const kind = classifyCluster(hi, lo, fmt);
    const copied = l2IsCopied(hi);
    const oldHost = kind === "compressed" ? 0 : l2HostOffset(hi, lo);
    if (kind === "normal") this.map.entryType(t, this.map.l2Index(pos), 0, clusterStart); // validates
    // With a data file, preallocated zero clusters keep their own path (their host is their guest offset).
    const keptRun =
      (kind === "normal" || (kind === "zero-alloc" && !this.hasDataFile)) && copied
        ? this.keptRun(t, clusterStart, tableEnd, oldHost, this.hasDataFile)
        : undefined;
    if (keptRun && !keptRun.zeros) {
      // In place, extended over following clusters with contiguous hosts.
      await this.writeData(oldHost + (pos - clusterStart), data.subarray(0, keptRun.end - pos), pos);
      this.allocHint = Math.ceil((oldHost + (keptRun.end - clusterStart)) / cs);
      return keptRun.end;
    }
    const reuse = this.hasDataFile || keptRun !== undefined;
    if (reuse && !this.hasDataFile && oldHost % cs !== 0) {
      const at = (n: number) => (n === 0 ? "0" : hex(n));
      throw new Qcow2Error("CORRUPT", `Preallocated zero cluster offset ${at(oldHost)} unaligned (guest offset: ${at(pos)})`);
    }
    // A run of clusters that all need the same treatment.
    let runEnd = Math.min(tableEnd, clusterStart + cs);
    if (!reuse) {
      while (runEnd < tableEnd) {
        // Unallocated entries (all zeros) join the run: skipped in bulk up to the next entry that is not.
        const index = this.map.l2Index(runEnd);
        const used = this.nextUsedEntry(t, index, index + Math.ceil((tableEnd - runEnd) / cs));
        if (used < 0) {
          runEnd = tableEnd;
          break;
        }
        runEnd += (used - index) * cs;
        const [nhi, nlo] = this.entryHalves(t, used);
        const nkind = classifyCluster(nhi, nlo, fmt);
        if ((nkind === "normal" || nkind === "zero-alloc") && l2IsCopied(nhi)) break;
        runEnd = Math.min(tableEnd, runEnd + cs);
      }
    } else if (!this.hasDataFile) {
      // Preallocated zero clusters and data clusters kept in place, with contiguous hosts: written as one
      // request, as QEMU's handle_copied keeps them together.
      runEnd = keptRun!.end;
    } else {
      while (runEnd < tableEnd) {
        const [nhi, nlo] = this.entryHalves(t, this.map.l2Index(runEnd));
        const nkind = classifyCluster(nhi, nlo, fmt);
        if (nkind === "normal" && l2IsCopied(nhi)) break;
        if (nkind === "compressed") break;
        runEnd = Math.min(tableEnd, runEnd + cs);
      }
    }
    let count = Math.ceil((runEnd - clusterStart) / cs);
    let hostStart: number;
    if (this.hasDataFile) hostStart = clusterStart;
    else if (reuse) hostStart = oldHost;
    else {
      const [first, n] = await this.allocateRun(count);
      hostStart = first * cs;
      if (n < count) {
        count = n;
        runEnd = Math.min(runEnd, clusterStart + n * cs);
      }
    }
    if (!this.hasDataFile) this.allocHint = hostStart / cs + count;
    try {
      await this.writeAllocatedRun(t, clusterStart, count, hostStart, pos, data.subarray(0, runEnd - pos));
    } catch (e) {
      // QEMU's allocation abort: fresh clusters whose data write failed before the L2 entries took them are given back.
      const fresh = !this.hasDataFile && !reuse && l2HostOffset(...this.entryHalves(t, this.map.l2Index(clusterStart))) !== hostStart;
      if (fresh) await this.refcounts.update(hostStart / cs, count, -1).catch(() => undefined);
      throw e;
    }
    return runEnd;
  }

  /**
   * The run of clusters from `clusterStart` (below `tableEnd`) that keep their host clusters: data or
   * preallocated zero clusters with the COPIED flag whose hosts follow `host` contiguously (QEMU's
   * count_single_write_clusters), and how many of them are preallocated zero clusters.
   */
  private keptRun(t: L2Table, clusterStart: number, tableEnd: number, host: number, dataOnly = false): { end: number; zeros: number } {
    const cs = this.clusterSize;
    let end = clusterStart;
    let zeros = 0;
    while (end < tableEnd) {
      const [hi, lo] = this.entryHalves(t, this.map.l2Index(end));
      const kind = classifyCluster(hi, lo, this.map.format);
      if ((kind !== "normal" && (kind !== "zero-alloc" || dataOnly)) || !l2IsCopied(hi)) break;
      if (l2HostOffset(hi, lo) !== host + (end - clusterStart)) break;
      if (kind === "zero-alloc") zeros++;
      end = Math.min(tableEnd, end + cs);
    }
    return { end, zeros };
  }

  /**
   * Write guest bytes `data` at guest `pos` into `count` clusters starting at guest `clusterStart`, newly
   * placed at `hostStart`, filling the unwritten head and tail from the old content (copy-on-write), then
   * point the L2 entries at them and free what they pointed to before.
   */
  private async writeAllocatedRun(
    t: L2Table,
    clusterStart: number,
    count: number,
    hostStart: number,
    pos: number,
    data: Payload,
  ): Promise<void> {
    const cs = this.clusterSize;
    const writeEnd = pos + data.byteLength;
    const runEndGuest = clusterStart + count * cs;
    const lastCluster = clusterStart + (count - 1) * cs;
    // A partial head or tail cluster that keeps its data in place needs no copy-on-write (QEMU's
    // calculate_l2_meta with keep_old): only the written bytes change there.
    const headPartial = pos > clusterStart && !this.keptInPlace(t, clusterStart, hostStart);
    const tailPartial = writeEnd < runEndGuest && !this.keptInPlace(t, lastCluster, hostStart + (count - 1) * cs);
    const writes: Promise<void>[] = [];
    const fillCluster = async (guestCluster: number) => {
      const buf = new Uint8Array(cs);
      const oldIsZero = await this.readsAsZero(t, guestCluster);
      if (!oldIsZero) await this.readUnlocked(guestCluster, buf);
      const from = Math.max(pos, guestCluster);
      const to = Math.min(writeEnd, guestCluster + cs);
      const part = data.subarray(from - pos, to - pos);
      buf.set(part instanceof StoreSlice ? await part.bytes() : part, from - guestCluster);
      const host = hostStart + (guestCluster - clusterStart);
      // The whole cluster is written, zeros included, so the file holds no hole that block status would
      // report as zero (QEMU writes the copy-on-write regions explicitly too).
      await this.writeData(host, buf, guestCluster);
    };
    // encryption: zeroed host clusters would not read as zeros, so encrypted images always fill
    if ((headPartial || tailPartial) && this.data.efficientZeroes && !this.encryption && (await this.cowIsZero(t, clusterStart, count, headPartial, tailPartial))) {
      // Zero the clusters without writing zero bytes, from the start of the copy-on-write head (or of the data)
      // to the end of the tail (or of the data), then write only the data (QEMU's handle_alloc_space). Data
      // clusters kept in place between them are overwritten whole.
      const zeroFrom = headPartial ? hostStart : hostStart + (pos - clusterStart);
      const zeroTo = tailPartial ? hostStart + count * cs : hostStart + (writeEnd - clusterStart);
      await this.data.writeZeroes(zeroFrom, zeroTo - zeroFrom, false);
      await this.writeData(hostStart + (pos - clusterStart), data, pos);
    } else if (count === 1 && (headPartial || tailPartial)) {
      await fillCluster(clusterStart);
    } else {
      let midFrom = pos;
      let midTo = writeEnd;
      if (headPartial) {
        writes.push(fillCluster(clusterStart));
        midFrom = clusterStart + cs;
      }
      if (tailPartial) {
        writes.push(fillCluster(lastCluster));
        midTo = lastCluster;
      }
      if (midTo > midFrom) {
        writes.push(this.writeData(hostStart + (midFrom - clusterStart), data.subarray(midFrom - pos, midTo - pos), midFrom));
      }
      await Promise.all(writes);
    }
    // Link: new entries first, then the old clusters are freed (after the new entries are durable).
    const firstIndex = this.map.l2Index(clusterStart);
    // Entries that were unallocated (all zeros) release nothing.
    const freesNothing = this.hasDataFile || this.nextUsedEntry(t, firstIndex, firstIndex + count) < 0;
    for (let i = 0; i < count; i++) {
      const l2Index = firstIndex + i;
      const host = hostStart + i * cs;
      const old = freesNothing ? undefined : this.entryHalves(t, l2Index);
      setL2Entry(t.view, l2Index, false, host, COPIED);
      if (old) this.freeEntryCluster(old[0], old[1], host);
    }
    this.l2Cache.markDirty(t);
  }

  /** Guest cluster `guestCluster` is a data cluster with the COPIED flag at `host` (its data stays in place). */
  private keptInPlace(t: L2Table, guestCluster: number, host: number): boolean {
    const [hi, lo] = this.entryHalves(t, this.map.l2Index(guestCluster));
    return classifyCluster(hi, lo, this.map.format) === "normal" && l2IsCopied(hi) && l2HostOffset(hi, lo) === host;
  }

  /** The copy-on-write head and tail of a new allocation all read as zeros. */
  private async cowIsZero(t: L2Table, clusterStart: number, count: number, head: boolean, tail: boolean): Promise<boolean> {
    if (head && !(await this.readsAsZero(t, clusterStart))) return false;
    if (tail && !(await this.readsAsZero(t, clusterStart + (count - 1) * this.clusterSize))) return false;
    return true;
  }

  /** True when guest cluster `guestCluster` reads as zeros with no I/O (unallocated without backing, or zero). */
  private async readsAsZero(t: L2Table, guestCluster: number): Promise<boolean> {
    const [hi, lo] = this.entryHalves(t, this.map.l2Index(guestCluster));
    const kind = classifyCluster(hi, lo, this.map.format);
    if (kind === "zero-plain" || kind === "zero-alloc") return true;
    if (kind === "unallocated") return !this.backing || guestCluster >= this.backing.virtualSize;
    return false;
  }

  /**
   * Queue the release of the host cluster an old entry (hi, lo) referenced, unless it is `keptHost`.
   * Compressed entries release every host cluster their data touches.
   */
  private freeEntryCluster(hi: number, lo: number, keptHost: number, passDiscard = false): void {
    const kind = classifyCluster(hi, lo, this.map.format);
    const cs = this.clusterSize;
    if (kind === "compressed") {
      const d = decodeCompressedDescriptor(hi, lo, this.clusterBits);
      const first = Math.floor(d.hostOffset / cs);
      const last = Math.floor((d.hostOffset + d.byteLength - 1) / cs);
      this.refcounts.deferFree(first, last - first + 1, passDiscard);
      return;
    }
    if (kind === "normal" || kind === "zero-alloc") {
      const host = l2HostOffset(hi, lo);
      if (host % cs !== 0) this.nonFatalCorruption(`Cannot free unaligned cluster 0x${host.toString(16)}`);
      else if (host !== keptHost && host !== 0) this.refcounts.deferFree(host / cs, 1, passDiscard);
    }
  }

  private nonFatalSignalled = false;

  /** QEMU's qcow2_signal_corruption with fatal=false: reported once, the image stays usable and unmarked. */
  private nonFatalCorruption(message: string): void {
    if (this.nonFatalSignalled || this.corruptSignalled) return;
    this.nonFatalSignalled = true;
    this.warn(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`);
  }

  /** Extended L2: write the part of one cluster given by `data` at guest `pos`. */
  private async writeClusterExtended(t: L2Table, pos: number, data: Uint8Array, tableEnd = pos + data.byteLength): Promise<void> {
    const cs = this.clusterSize;
    const scSize = cs / 32;
    const clusterStart = Math.floor(pos / cs) * cs;
    const l2Index = this.map.l2Index(pos);
    const [hi, lo] = this.entryHalves(t, l2Index);
    const alloc = l2BitmapAlloc(t.view, l2Index);
    const zero = l2BitmapZero(t.view, l2Index);
    const kind = classifyCluster(hi, lo, this.map.format);
    if (kind !== "compressed" && kind !== "unallocated") this.map.entryType(t, l2Index, 0, clusterStart, true);
    // QEMU's calculate_l2_meta: the subclusters where the write starts and ends are valid.
    if (kind !== "compressed") {
      for (const sc of [Math.floor((pos - clusterStart) / (cs / 32)), Math.floor((pos - clusterStart + data.byteLength - 1) / (cs / 32))]) {
        this.map.entryType(t, l2Index, sc, clusterStart, true);
      }
    }
    const copied = l2IsCopied(hi);
    const oldHost = kind === "compressed" ? 0 : l2HostOffset(hi, lo);
    const reuse = this.hasDataFile || (kind === "normal" && copied);
    const host = this.hasDataFile ? clusterStart : reuse ? oldHost : (await this.extendedHostCluster(t, pos, tableEnd)) * cs;
    if (!this.hasDataFile) this.allocHint = host / cs + 1;
    const from = pos - clusterStart;
    const to = from + data.byteLength;
    const firstSc = Math.floor(from / scSize);
    const lastSc = Math.floor((to - 1) / scSize);
    const buf = new Uint8Array(cs);
    let newAlloc = reuse ? alloc : 0;
    let newZero = zero;
    // Data that must move to a new host cluster: every allocated subcluster (all of a compressed cluster).
    if (!reuse && (kind === "normal" || kind === "compressed")) {
      await this.readUnlocked(clusterStart, buf);
      newAlloc = kind === "compressed" ? 0xffffffff : alloc;
      if (kind === "compressed") newZero = 0;
      else if (alloc !== 0) {
        // QEMU's calculate_l2_meta: the copy spans from the first allocated or written subcluster to the last
        // one, and all of that span is allocated in the new cluster (its zero subclusters become data).
        const start = Math.min(firstSc, 31 - Math.clz32(alloc & -alloc));
        const end = Math.max(lastSc, 31 - Math.clz32(alloc));
        const span = ((end - start + 1 >= 32 ? 0xffffffff : (1 << (end - start + 1)) - 1) << start) >>> 0;
        newAlloc = (newAlloc | span) >>> 0;
        newZero = (newZero & ~span) >>> 0;
      }
    }
    // Fill the untouched part of partially written subclusters that hold no data yet from the old content
    // (backing file or zeros); partially written subclusters that hold data keep it.
    const filled = new Set<number>();
    for (const sc of new Set([firstSc, lastSc])) {
      const scStart = sc * scSize;
      const partial = from > scStart || to < scStart + scSize;
      if (partial && !(newAlloc & (1 << sc))) {
        await this.readUnlocked(clusterStart + scStart, buf.subarray(scStart, scStart + scSize));
        filled.add(sc);
      }
    }
    buf.set(data, from);
    const touched = (((lastSc - firstSc + 1 >= 32 ? 0xffffffff : (1 << (lastSc - firstSc + 1)) - 1) << firstSc) >>> 0);
    newAlloc = (newAlloc | touched) >>> 0;
    newZero = (newZero & ~touched) >>> 0;
    const movesData = !reuse && (kind === "normal" || kind === "compressed");
    if (movesData) {
      await this.writeData(host, buf, clusterStart);
    } else {
      // Only the written subclusters (plus the filled parts of partial ones) are written.
      const spanStart = filled.has(firstSc) ? firstSc * scSize : from;
      const spanEnd = filled.has(lastSc) ? (lastSc + 1) * scSize : to;
      const fillIsZero = filled.size > 0 && (await this.subclustersReadZero(clusterStart, filled, scSize));
      // encryption: no zeroing of host bytes for encrypted images (see writeAllocatedRun)
      if (fillIsZero && this.data.efficientZeroes && !this.encryption) {
        await this.data.writeZeroes(host + spanStart, spanEnd - spanStart, false);
        await this.writeData(host + from, data, pos);
      } else {
        await this.writeData(host + spanStart, buf.subarray(spanStart, spanEnd), clusterStart + spanStart);
      }
    }
    setL2Entry(t.view, l2Index, true, host, { copied: true });
    setL2Bitmap(t.view, l2Index, newAlloc, newZero);
    if (!this.hasDataFile && !reuse) this.freeEntryCluster(hi, lo, host);
    this.l2Cache.markDirty(t);
  }

  /** The given subclusters of the cluster at `clusterStart` read as zeros (before the write changes them). */
  private async subclustersReadZero(clusterStart: number, subclusters: Set<number>, scSize: number): Promise<boolean> {
    for (const sc of subclusters) {
      if (!(await this.rangeIsZero(clusterStart + sc * scSize, Math.min(scSize, this.virtualSize - clusterStart - sc * scSize)))) {
        return false;
      }
    }
    return true;
  }

  /** Compressed writes issued so far, and the next one whose turn it is to be placed. */
  private compressedIssued = 0;
  private compressedPlaced = 0;
  private readonly compressedWaiting = new Map<number, () => void>();

  /** Wait until every compressed write issued before `ticket` has been placed (or has failed). */
  private compressedTurn(ticket: number): Promise<void> {
    if (ticket === this.compressedPlaced) return Promise.resolve();
    return new Promise((resolve) => this.compressedWaiting.set(ticket, resolve));
  }

  private endCompressedTurn(ticket: number): void {
    // A write that failed before its turn still waits for it, so turns end in order.
    if (ticket !== this.compressedPlaced) {
      const previous = this.compressedWaiting.get(ticket);
      this.compressedWaiting.set(ticket, () => {
        previous?.();
        this.endCompressedTurn(ticket);
      });
      return;
    }
    this.compressedPlaced++;
    const next = this.compressedWaiting.get(this.compressedPlaced);
    if (next) {
      this.compressedWaiting.delete(this.compressedPlaced);
      next();
    }
  }

  /** What QEMU refuses before compressing anything (qemu-io write -c, convert -c). */
  private checkCompressedWrite(guestOffset: number, byteLength: number): void {
    const cs = this.clusterSize;
    if (this.hasDataFile) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    // encryption: compressed clusters would be stored in plain text (QEMU 7.2 does that; refused here)
    if (this.encryption) throw new Qcow2Error("NOT_SUPPORTED", "Compression and encryption not supported at the same time", { errno: "ENOTSUP" });
    const end = guestOffset + byteLength;
    if (guestOffset % cs !== 0 || (byteLength % cs !== 0 && end !== this.virtualSize)) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Compressed writes must be cluster aligned", { errno: "EINVAL" });
    }
  }

  /**
   * Compress each cluster of `data` (a window of clusters at once: native codecs run on the thread pool):
   * the compressed bytes, undefined where compression does not make a cluster smaller, or what the codec threw.
   */
  private async compressClusters(data: Uint8Array): Promise<Array<PromiseSettledResult<Uint8Array | undefined>>> {
    const cs = this.clusterSize;
    const codec = await this.compression();
    const out: Array<PromiseSettledResult<Uint8Array | undefined>> = [];
    for (let base = 0; base < data.byteLength; base += COMPRESS_WINDOW * cs) {
      const window: Array<Promise<Uint8Array | undefined>> = [];
      for (let at = base; at < Math.min(data.byteLength, base + COMPRESS_WINDOW * cs); at += cs) {
        window.push(codec.compress(padToCluster(data.subarray(at, Math.min(data.byteLength, at + cs)), cs), cs - 1));
      }
      out.push(...(await Promise.allSettled(window)));
    }
    return out;
  }

  /**
   * Place the compressed clusters of a write, in guest order (exclusive lock held). Like QEMU's parallel
   * cluster tasks, a cluster that cannot be written fails the request, but the other clusters of the request
   * are still written.
   */
  private async placeCompressedClusters(guestOffset: number, data: Uint8Array, compressed: Array<PromiseSettledResult<Uint8Array | undefined>>): Promise<void> {
    const cs = this.clusterSize;
    let failure: unknown;
    for (const [i, result] of compressed.entries()) {
      try {
        if (result.status === "rejected") throw result.reason;
        await this.placeCompressedCluster(guestOffset + i * cs, data.subarray(i * cs, Math.min(data.byteLength, (i + 1) * cs)), result.value);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Store one cluster of a compressed write: `compressed` (undefined when compression did not make it
   * smaller) for the guest cluster at `pos`, whose bytes are `piece` (the image's last cluster may be short).
   */
  private async placeCompressedCluster(pos: number, piece: Uint8Array, compressed: Uint8Array | undefined): Promise<void> {
    if (!compressed) {
      await this.writeUnlocked(pos, piece);
      return;
    }
    const t = await this.l2ForWrite(pos);
    const l2Index = this.map.l2Index(pos);
    const [ohi, olo] = this.entryHalves(t, l2Index);
    if ((ohi & 0x00ffffff) !== 0 || (olo & 0xfffffe00) !== 0 || (ohi & 0x40000000) !== 0) {
      // Compression cannot overwrite anything (QEMU fails the request with EIO).
      throw new Qcow2Error("IO_ERROR", "Input/output error", { errno: "EIO" });
    }
    const hostOffset = await this.allocateBytes(compressed.byteLength);
    this.checkOverlap(hostOffset, compressed.byteLength);
    await this.meta.write(hostOffset, compressed);
    this.dataDirty = true;
    const { hi, lo } = encodeCompressedDescriptor(hostOffset, compressed.byteLength, this.clusterBits);
    setL2Raw(t.view, l2Index, this.extendedL2, hi, lo);
    if (this.extendedL2) setL2Bitmap(t.view, l2Index, 0, 0);
    this.freeEntryCluster(ohi, olo, -1);
    this.l2Cache.markDirty(t);
    await this.maybeWriteback();
  }

  /**
   * Byte offset where the next compressed cluster may start (QEMU's free_byte_offset): inside a host cluster
   * that earlier compressed data partly fills; 0 when there is none.
   */
  private compressedTail = 0;

  /**
   * Sub-cluster byte allocation for compressed data, as QEMU's qcow2_alloc_bytes packs it: the data follows
   * the previous compressed cluster byte after byte, and runs on into the next host cluster when that one is
   * the next free cluster of the file (otherwise it starts a fresh host cluster). Every host cluster the
   * bytes touch takes one reference; a partly used cluster whose refcount is at its maximum is left, and so
   * is one that has been freed since (QEMU would still fill it, though it may have been reused meanwhile).
   */
  private async allocateBytes(byteLength: number): Promise<number> {
    const cs = this.clusterSize;
    let offset = this.refcounts.watchedFreed ? 0 : this.compressedTail;
    if (offset !== 0 && (await this.refcounts.get(Math.floor(offset / cs))) >= this.refcounts.maxValue) offset = 0;
    if (offset !== 0 && cs - (offset % cs) >= byteLength) {
      // Fits in the partly used cluster: one more reference to it.
      await this.refcounts.update(Math.floor(offset / cs), 1, 1);
    } else {
      // The new cluster takes its reference here; the partly used one before it one more when the data
      // starts there and runs on into the new one.
      const fresh = (await this.allocateMetadata(1, "compressed cluster")) * cs;
      // The allocation may have released discarded clusters first (onDeferredBelow): the partly used one too.
      if (offset !== 0 && !this.refcounts.watchedFreed && Math.ceil(offset / cs) * cs === fresh) await this.refcounts.update(Math.floor(offset / cs), 1, 1);
      else offset = fresh;
    }
    const end = offset + byteLength;
    this.compressedTail = end % cs === 0 ? 0 : end;
    this.refcounts.watched = this.compressedTail === 0 ? -1 : Math.floor(end / cs);
    this.refcounts.watchedFreed = false;
    return offset;
  }

  // ---------------------------------------------------------------- zero and discard

  async writeZeroes(guestOffset: number, byteLength: number, opts: ZeroOptions = {}): Promise<void> {
    this.assertWritable();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0) return;
    this.observe(guestOffset, byteLength);
    await this.lock.write(() => this.guard(() => this.writeZeroesUnlocked(guestOffset, byteLength, opts)));
    if (opts.fua) await this.flush();
  }

  /** Zeroing granularity: the subcluster (extended L2) or the cluster. */
  private get zeroUnit(): number {
    return this.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
  }

  /**
   * Split the request as QEMU's block layer does (a partial head unit, the aligned middle, a partial tail
   * unit); each piece the driver cannot zero efficiently is written as zero bytes, unless `noFallback`.
   */
  private async writeZeroesUnlocked(guestOffset: number, byteLength: number, opts: ZeroOptions): Promise<void> {
    const unit = this.zeroUnit;
    const end = guestOffset + byteLength;
    let pos = guestOffset;
    while (pos < end) {
      let n = end - pos;
      const head = pos % unit;
      const tail = end % unit;
      if (head) n = Math.min(n, unit - head);
      else if (tail && n > unit) n -= tail;
      const done = await this.zeroPiece(pos, n, opts.unmap ?? false);
      if (!done) {
        if (opts.noFallback) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
        await this.writeExplicitZeroes(pos, n);
      }
      pos += n;
    }
  }

  /**
   * QEMU's qcow2_co_pwrite_zeroes for one piece: a piece covering part of a unit is widened to the whole unit
   * when the rest already reads as zeros and the unit holds no data. Returns false where QEMU answers ENOTSUP.
   */
  private async zeroPiece(offset: number, bytes: number, unmap: boolean): Promise<boolean> {
    const unit = this.zeroUnit;
    const end = offset + bytes;
    const head = offset % unit;
    let tail = (Math.ceil(end / unit) * unit - end) % unit;
    if (end === this.virtualSize) tail = 0;
    if (head || tail) {
      if (!(await this.rangeIsZero(offset - head, head)) || !(await this.rangeIsZero(end, tail))) return false;
      offset -= head;
      bytes = Math.min(unit, this.virtualSize - offset);
      const type = (await this.map.mapRun(offset, 1)).type;
      if (
        type !== SubclusterType.UNALLOCATED_PLAIN &&
        type !== SubclusterType.UNALLOCATED_ALLOC &&
        type !== SubclusterType.ZERO_PLAIN &&
        type !== SubclusterType.ZERO_ALLOC
      ) {
        return false;
      }
    }
    return this.zeroize(offset, bytes, unmap);
  }

  /** True when every byte of the range reads as zeros according to block status (no data read). */
  private async rangeIsZero(guestOffset: number, byteLength: number): Promise<boolean> {
    if (byteLength <= 0) return true;
    const extents = await this.blockStatusUnlocked(guestOffset, byteLength);
    return extents.every((e) => e.zero);
  }

  private async writeExplicitZeroes(guestOffset: number, byteLength: number): Promise<void> {
    const chunk = Math.min(byteLength, 4 * 1024 * 1024);
    const zeros = new Uint8Array(chunk);
    for (let pos = guestOffset; pos < guestOffset + byteLength; pos += chunk) {
      const n = Math.min(chunk, guestOffset + byteLength - pos);
      if (!(await this.tryWriteInPlace(pos, zeros.subarray(0, n)))) await this.writeUnlocked(pos, zeros.subarray(0, n));
    }
  }

  /**
   * Make [guestOffset, +byteLength) (unit aligned, except at the image end) read as zeros through metadata
   * (QEMU's qcow2_subcluster_zeroize). Returns false where QEMU answers ENOTSUP.
   */
  private async zeroize(guestOffset: number, byteLength: number, unmap: boolean): Promise<boolean> {
    if (this.dataFileRaw) {
      await this.data.writeZeroes(guestOffset, byteLength, unmap);
      this.dataDirty = true;
    }
    if (this.version < 3) {
      if (this.backing) return false;
      await this.discardUnlocked(guestOffset, byteLength, false);
      return true;
    }
    const cs = this.clusterSize;
    let offset = guestOffset;
    let end = guestOffset + byteLength;
    const head = Math.min(end, Math.ceil(offset / cs) * cs) - offset;
    offset += head;
    const tail = end >= this.virtualSize ? 0 : end - Math.max(offset, Math.floor(end / cs) * cs);
    end -= tail;
    if (head && !(await this.zeroSubclusters(offset - head, head))) return false;
    while (offset < end) {
      const tableEnd = Math.min(end, (this.map.l1Index(offset) + 1) * this.map.l2Coverage);
      const t = await this.l2ForWrite(offset);
      for (; offset < tableEnd; offset = Math.floor(offset / cs) * cs + cs) {
        const l2Index = this.map.l2Index(offset);
        const [hi, lo] = this.entryHalves(t, l2Index);
        const kind = classifyCluster(hi, lo, this.map.format);
        const allocated = kind === "normal" || kind === "zero-alloc" || kind === "compressed";
        const unmapThis = kind === "compressed" || (unmap && allocated);
        const newHi = unmapThis ? 0 : hi;
        const newLo = ((unmapThis ? 0 : lo) | (this.extendedL2 ? 0 : 1)) >>> 0;
        const oldAlloc = this.extendedL2 ? l2BitmapAlloc(t.view, l2Index) : 0;
        const oldZero = this.extendedL2 ? l2BitmapZero(t.view, l2Index) : 0;
        const bitmapChanged = this.extendedL2 && (oldAlloc !== 0 || oldZero !== 0xffffffff);
        if (newHi === hi && newLo === lo && !bitmapChanged) continue;
        setL2Raw(t.view, l2Index, this.extendedL2, newHi, newLo);
        if (this.extendedL2) setL2Bitmap(t.view, l2Index, 0, 0xffffffff);
        this.l2Cache.markDirty(t);
        if (unmapThis) await this.releaseCluster(hi, lo, Math.floor(offset / cs) * cs);
      }
      await this.maybeWriteback();
    }
    if (tail && !(await this.zeroSubclusters(end, tail))) return false;
    return true;
  }

  /** Set the zero bits (and clear the allocation bits) of the subclusters in [offset, +bytes) of one cluster. */
  private async zeroSubclusters(offset: number, bytes: number): Promise<boolean> {
    const t = await this.l2ForWrite(offset);
    const l2Index = this.map.l2Index(offset);
    const [hi, lo] = this.entryHalves(t, l2Index);
    if (classifyCluster(hi, lo, this.map.format) === "compressed") return false;
    const scSize = this.clusterSize / 32;
    const first = Math.floor((offset % this.clusterSize) / scSize);
    const count = Math.ceil(bytes / scSize);
    const mask = (count >= 32 ? 0xffffffff : ((1 << count) - 1) << first) >>> 0;
    const alloc = l2BitmapAlloc(t.view, l2Index);
    const zero = l2BitmapZero(t.view, l2Index);
    const newAlloc = (alloc & ~mask) >>> 0;
    const newZero = (zero | mask) >>> 0;
    if (newAlloc !== alloc || newZero !== zero) {
      setL2Bitmap(t.view, l2Index, newAlloc, newZero);
      this.l2Cache.markDirty(t);
    }
    return true;
  }

  /**
   * Drop the host cluster an old entry pointed to: for data-file images the data file range is discarded
   * (when discards pass through), otherwise the refcount decrease is queued.
   */
  private async releaseCluster(hi: number, lo: number, guestClusterStart: number): Promise<void> {
    if (this.hasDataFile) {
      const kind = classifyCluster(hi, lo, this.map.format);
      if ((kind === "normal" || kind === "zero-alloc") && this.opts.discard !== "ignore") {
        const len = Math.min(this.clusterSize, this.virtualSize - guestClusterStart);
        await this.data.discard(l2HostOffset(hi, lo), len);
        this.dataDirty = true;
      }
      return;
    }
    this.freeEntryCluster(hi, lo, -1, this.opts.discard !== "ignore");
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.assertWritable();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0 || this.opts.discard === "ignore") return;
    // v2 has no zero flag: discarding would expose the backing file's data, so QEMU ignores the request.
    if (this.version < 3 && this.backing) return;
    this.observe(guestOffset, byteLength);
    await this.lock.write(() => this.guard(() => this.discardUnlocked(guestOffset, byteLength, false)));
  }

  /**
   * Discard whole clusters in [guestOffset, +byteLength) (a partial cluster counts only when it is the
   * last, partial cluster of the image). `full`: entries become unallocated (shrink, make-empty); otherwise
   * they read as zeros on v3 where they held data or a backing file is present.
   */
  async discardUnlocked(guestOffset: number, byteLength: number, full: boolean): Promise<void> {
    const cs = this.clusterSize;
    let start = Math.ceil(guestOffset / cs) * cs;
    let end = Math.floor((guestOffset + byteLength) / cs) * cs;
    if (guestOffset + byteLength === this.virtualSize && this.virtualSize % cs !== 0) end = guestOffset + byteLength;
    if (full) {
      // A partial first cluster keeps its data: it still holds guest bytes below guestOffset (QEMU's shrink
      // discards from the next cluster boundary).
      end = guestOffset + byteLength;
    }
    if (start >= end) return;
    await this.markDirty();
    let pos = start;
    while (pos < end) {
      const l1Index = this.map.l1Index(pos);
      const tableEnd = Math.min(end, (l1Index + 1) * this.map.l2Coverage);
      if (this.map.l2TableOffset(l1Index) === 0 && (full || !this.backing)) {
        // Nothing allocated here, and nothing to hide from a backing file.
        pos = tableEnd;
        continue;
      }
      const t = await this.l2ForWrite(pos);
      for (; pos < tableEnd; pos = Math.min(tableEnd, Math.floor(pos / cs) * cs + cs)) {
        const l2Index = this.map.l2Index(pos);
        const [hi, lo] = this.entryHalves(t, l2Index);
        const kind = classifyCluster(hi, lo, this.map.format);
        const allocated = kind === "normal" || kind === "zero-alloc" || kind === "compressed";
        const oldAlloc = this.extendedL2 ? l2BitmapAlloc(t.view, l2Index) : 0;
        const oldZero = this.extendedL2 ? l2BitmapZero(t.view, l2Index) : 0;
        let newHi = hi;
        let newLo = lo;
        let newAlloc = oldAlloc;
        let newZero = oldZero;
        if (full) {
          newHi = newLo = newAlloc = newZero = 0;
        } else if (this.backing || allocated) {
          if (this.extendedL2) {
            newHi = newLo = 0;
            newAlloc = 0;
            newZero = 0xffffffff;
          } else {
            newHi = 0;
            newLo = this.version >= 3 ? 1 : 0;
          }
        }
        if (newHi === hi && newLo === lo && newAlloc === oldAlloc && newZero === oldZero) continue;
        setL2Raw(t.view, l2Index, this.extendedL2, newHi, newLo);
        if (this.extendedL2) setL2Bitmap(t.view, l2Index, newAlloc, newZero);
        this.l2Cache.markDirty(t);
        await this.releaseCluster(hi, lo, Math.floor(pos / cs) * cs);
      }
      await this.maybeWriteback();
    }
    await this.checkFreeable();
  }

  /**
   * QEMU decreases refcounts as it frees: a refcount block it cannot load (an unaligned table entry) marks
   * the image corrupt there, `qcow2_free_clusters` reports it, and the request fails as the image is gone
   * ("No medium found"). Ours are deferred: their blocks are loaded now to fail the same way.
   */
  private async checkFreeable(): Promise<void> {
    try {
      await this.refcounts.loadDeferredBlocks();
    } catch (e) {
      if (!(e instanceof Qcow2Error) || e.code !== "CORRUPT") throw e;
      await this.signalCorruption(e.message);
      this.warn("qcow2_free_clusters failed: Input/output error");
      throw new Qcow2Error("IO_ERROR", "No medium found", { errno: "ENOMEDIUM" });
    }
  }

  /** After a shrink: drop the refcount blocks left unused (qcow2_shrink_reftable), with QEMU's failure. */
  private async dropUnusedRefblocks(): Promise<void> {
    await this.flushUnlocked();
    try {
      await this.refcounts.dropUnusedBlocks();
    } catch (e) {
      if (!(e instanceof Qcow2Error) || e.code !== "CORRUPT") throw e;
      await this.signalCorruption(e.message);
      throw new Qcow2Error("IO_ERROR", "Failed to discard unused refblocks: Input/output error", { errno: "EIO" });
    }
  }

  // ---------------------------------------------------------------- block status

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    this.assertOpen();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0) return [];
    return this.lock.read(() => this.guard(() => this.blockStatusUnlocked(guestOffset, byteLength).finally(() => this.l2Cache.trim(this.lock.soleReader))));
  }

  /** Status of this layer only: undefined entries fall through to the backing chain. */
  async blockStatusUnlocked(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    const end = guestOffset + byteLength;
    const out: BlockStatusExtent[] = [];
    let pos = guestOffset;
    const hostFile = this.hasDataFile ? this.dataFileName : this.filename;
    while (pos < end) {
      const run = await this.map.mapRun(pos, end - pos);
      const base = { offset: pos, length: run.byteLength, depth: 0 };
      switch (run.type) {
        case SubclusterType.NORMAL:
          // encryption: host holes say nothing about encrypted data (QEMU gives no host offset to look at)
          if (!this.hasDataFile && !this.encryption && (await this.metadataPreallocated())) {
            // Preallocated clusters never written are holes of the qcow2 file: they read as zeros.
            for (const r of (await allocationRuns(this.meta, run.hostOffset, run.byteLength))!) {
              const guest = pos + (r.offset - run.hostOffset);
              out.push({ offset: guest, length: r.length, depth: 0, present: true, zero: !r.data, data: true, hostOffset: r.offset, ...file(hostFile) });
            }
            break;
          }
          out.push({ ...base, present: true, zero: false, data: true, hostOffset: run.hostOffset, ...file(hostFile) });
          break;
        case SubclusterType.ZERO_ALLOC:
          out.push({ ...base, present: true, zero: true, data: false, hostOffset: run.hostOffset, ...file(hostFile) });
          break;
        case SubclusterType.ZERO_PLAIN:
          out.push({ ...base, present: true, zero: true, data: false });
          break;
        case SubclusterType.COMPRESSED:
          out.push({ ...base, present: true, zero: false, data: true, compressed: true });
          break;
        default: {
          const withOffset =
            run.type === SubclusterType.UNALLOCATED_ALLOC ? { hostOffset: run.hostOffset, ...file(hostFile) } : {};
          const b = this.backing;
          if (!b || pos >= b.virtualSize) {
            out.push({ ...base, present: false, zero: true, data: false, ...withOffset });
          } else {
            const inBacking = Math.min(run.byteLength, b.virtualSize - pos);
            for (const e of await b.blockStatus(pos, inBacking)) out.push({ ...e, depth: e.depth + 1 });
            if (inBacking < run.byteLength) {
              out.push({ offset: pos + inBacking, length: run.byteLength - inBacking, depth: 0, present: false, zero: true, data: false });
            }
          }
        }
      }
      pos += run.byteLength;
    }
    // encryption: no host offsets for encrypted images (QEMU's map omits "offset")
    return mergeExtents(this.encryption ? withoutHostOffsets(out) : out);
  }

  private preallocationDetected: boolean | undefined;

  /**
   * QEMU's metadata-preallocation heuristic: when clearly more clusters are refcounted than the qcow2 file
   * has allocated on disk, block status asks the file system which data clusters are holes (they read as
   * zeros). Needs a store that reports holes; decided once per open.
   */
  private async metadataPreallocated(): Promise<boolean> {
    if (this.preallocationDetected !== undefined) return this.preallocationDetected;
    let detected = false;
    if (this.meta.allocationStatus && this.meta.allocatedSize) {
      const allocated = await this.meta.allocatedSize();
      if (allocated !== undefined) {
        const realClusters = Math.floor(allocated / this.clusterSize);
        const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
        const endCluster = Math.ceil((await this.meta.size()) / this.clusterSize);
        detected = (await this.refcounts.countReferenced(endCluster, threshold)) >= threshold;
      }
    }
    this.preallocationDetected = detected;
    return detected;
  }

  // ---------------------------------------------------------------- persistent dirty bitmaps

  /** Names, granularities and flags of the image's persistent dirty bitmaps. */
  async listBitmaps(): Promise<BitmapInfo[]> {
    this.assertOpen();
    if (!this.hdr.extensions.bitmaps || !(this.hdr.header.autoclearFeatures & AUTOCLEAR_BITMAPS)) return [];
    return listBitmaps(this);
  }

  /** Dirty and clean runs of bitmap `name` over [guestOffset, +byteLength) (NBD qemu:dirty-bitmap:NAME). */
  async bitmapStatus(name: string, guestOffset: number, byteLength: number): Promise<{ offset: number; length: number; dirty: boolean }[]> {
    this.assertOpen();
    this.checkRange(guestOffset, byteLength);
    return bitmapStatus(this, name, guestOffset, byteLength);
  }

  // ---------------------------------------------------------------- flush and write-back

  async flush(): Promise<void> {
    this.assertOpen();
    if (this.readOnly) return;
    await this.lock.write(() => this.guard(() => this.flushUnlocked()));
  }

  async flushUnlocked(): Promise<void> {
    await this.writeback();
    await this.meta.flush();
    if (this.data !== this.meta) await this.data.flush();
    this.dataDirty = false;
  }

  /** Write back when the caches or the deferred-free list grow too large. */
  private async maybeWriteback(): Promise<void> {
    if (this.l2Cache.overCapacity || this.refcounts.deferredRanges > MAX_DEFERRED_RANGES) {
      await this.writeback();
      this.l2Cache.trim();
    }
  }

  /** Bring metadata to disk in crash-safe order (see the file comment). */
  async writeback(): Promise<void> {
    const lazy = this.lazyRefcounts && this.isDirty;
    const tablesDirty = this.l2Cache.hasDirty || this.l1.dirty;
    if (tablesDirty) {
      if (this.dataDirty && this.data !== this.meta) {
        await this.data.flush();
      }
      if (!lazy && this.refcounts.hasDirty) await this.refcounts.writeBack();
      await this.meta.flush();
      this.dataDirty = false;
      if (this.l2Cache.hasDirty) {
        await this.l2Cache.writeBack();
        if (this.l1.dirty) await this.meta.flush();
      }
      if (this.l1.dirty) await this.l1.writeBack(this.meta);
    } else if (!lazy && this.refcounts.hasDirty) {
      await this.refcounts.writeBack();
    }
    if (this.refcounts.deferredRanges > 0) {
      await this.meta.flush(); // the removed references are durable before the refcounts drop
      const freed = await this.refcounts.applyDeferredFrees();
      if (!lazy) await this.refcounts.writeBack();
      // Discards pass through to the qcow2 file for freed guest-requested clusters (QEMU's passthrough).
      const cs = this.clusterSize;
      for (const [start, count] of freed) await this.meta.discard(start * cs, count * cs);
    }
  }

  // ---------------------------------------------------------------- resize

  async resize(newVirtualSize: number, opts: ResizeOptions = {}): Promise<void> {
    this.assertWritable();
    if (!Number.isSafeInteger(newVirtualSize) || newVirtualSize < 0) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Invalid image size specified");
    }
    await this.lock.write(() => this.guard(() => this.resizeUnlocked(newVirtualSize, opts)));
  }

  private async resizeUnlocked(newSize: number, opts: ResizeOptions): Promise<void> {
    const oldSize = this.virtualSize;
    const prealloc = opts.preallocation ?? "off";
    if (newSize % 512 !== 0) throw new Qcow2Error("INVALID_ARGUMENT", "The new size must be a multiple of 512");
    if (this.snapshots.length > 0 && this.version < 3) {
      // v2 snapshot entries cannot record the disk size (v3 ones can).
      throw new Qcow2Error("NOT_SUPPORTED", "Can't resize a v2 image which has snapshots", { errno: "ENOTSUP" });
    }
    if (newSize < oldSize) {
      if (!opts.shrink) {
        throw new Qcow2Error(
          "INVALID_ARGUMENT",
          "Use the --shrink option to perform a shrink operation.",
        );
      }
      if (prealloc !== "off") throw new Qcow2Error("INVALID_ARGUMENT", "Preallocation can't be used for shrinking an image");
      await this.discardUnlocked(newSize, oldSize - newSize, true);
      await this.dropUnusedRefblocks();
      await this.setSize(newSize);
      await this.shrinkL1(newSize);
      await this.flushUnlocked();
      if (this.hasDataFile) {
        await this.data.resize(newSize);
      } else {
        await this.truncateMetaTail();
      }
      return;
    }
    if (newSize === oldSize) return;
    // Growing over a longer backing file: the new area must read as zeros, not as the backing file's data
    // (QEMU's truncate with BDRV_REQ_ZERO_WRITE). Zero units from the first whole one, explicit zeros before.
    const backingSize = this.backing?.virtualSize ?? 0;
    const zeroStart = Math.ceil(oldSize / this.zeroUnit) * this.zeroUnit;
    const hideBacking = backingSize > oldSize;
    if (hideBacking && newSize > zeroStart && this.version < 3) {
      // v2 has no zero flag: QEMU fails after growing the L1 table and before the new size is written.
      throw new Qcow2Error("NOT_SUPPORTED", "Failed to zero out new clusters: Operation not supported", { errno: "ENOTSUP" });
    }
    const needed = l1EntriesForSize(newSize, this.clusterBits, this.extendedL2);
    if (needed > this.l1.size) await this.growL1(needed);
    if (this.hasDataFile) {
      const cur = await this.data.size();
      if (cur < newSize) await this.data.resize(newSize, prealloc === "metadata" ? "off" : prealloc);
    }
    await this.setSize(newSize);
    let mode = prealloc;
    if (this.dataFileRaw && mode === "off") mode = "metadata";
    if ((mode === "falloc" || mode === "full") && !this.hasDataFile && !this.encryption) {
      await preallocateHostSpace(this, oldSize, newSize, mode, hideBacking);
    } else if (mode !== "off") {
      await this.preallocate(oldSize, newSize, mode);
    }
    if (hideBacking) {
      // falloc/full preallocation already gave the new clusters zeroed host space (QEMU then skips this).
      const preallocated = (mode === "falloc" || mode === "full") && !this.encryption;
      if (newSize > zeroStart && !preallocated && !(await this.zeroize(zeroStart, newSize - zeroStart, false))) {
        throw new Qcow2Error("NOT_SUPPORTED", "Failed to zero out new clusters: Operation not supported", { errno: "ENOTSUP" });
      }
      if (zeroStart > oldSize) await this.writeUnlocked(oldSize, new Uint8Array(Math.min(zeroStart, newSize) - oldSize));
    }
    await this.flushUnlocked();
  }

  /** Rewrite the header's size field (after writing back metadata). */
  async setVirtualSize(newSize: number): Promise<void> {
    await this.setSize(newSize);
  }

  /**
   * Map guest clusters [from, to) to the host clusters starting at `hostStart`, which the caller has already
   * counted (falloc/full preallocation); L2 tables are allocated as needed.
   */
  async linkPreallocated(from: number, to: number, hostStart: number, allocateSubclusters = false): Promise<void> {
    const cs = this.clusterSize;
    let pos = Math.floor(from / cs) * cs;
    // A partial first cluster keeps its guest bytes below `from` (QEMU's copy-on-write of the link).
    const head = from - pos > 0 ? new Uint8Array(from - pos) : undefined;
    if (head) await this.readUnlocked(pos, head);
    let host = hostStart;
    while (pos < to) {
      const tableEnd = Math.min(to, (this.map.l1Index(pos) + 1) * this.map.l2Coverage);
      const t = await this.l2ForWrite(pos);
      for (; pos < tableEnd; pos += cs, host += cs) {
        const l2Index = this.map.l2Index(pos);
        const [ohi, olo] = this.entryHalves(t, l2Index);
        if (head && host === hostStart) {
          await this.writeData(host, head, pos);
          this.freeEntryCluster(ohi, olo, host);
        }
        setL2Entry(t.view, l2Index, this.extendedL2, host, { copied: true });
        if (this.extendedL2 && allocateSubclusters) {
          setL2Bitmap(t.view, l2Index, 0xffffffff, 0);
        } else if (this.extendedL2 && head && host === hostStart) {
          const bits = subclusterMask(0, Math.ceil(head.byteLength / (cs / 32)));
          setL2Bitmap(t.view, l2Index, bits, (l2BitmapZero(t.view, l2Index) & ~bits) >>> 0);
        }
      }
      this.l2Cache.markDirty(t);
      await this.maybeWriteback();
    }
    await this.writeback();
  }

  private async setSize(newSize: number): Promise<void> {
    await this.writeback();
    await this.meta.flush();
    const b = new Uint8Array(8);
    viewOf(b).setUint32(0, Math.floor(newSize / 2 ** 32));
    viewOf(b).setUint32(4, newSize >>> 0);
    await this.meta.write(24, b);
    await this.meta.flush();
    this.hdr.header.size = newSize;
  }

  /** Replace the L1 table with one of `minEntries` entries (QEMU's qcow2_grow_l1_table, exact size). */
  async growL1(minEntries: number): Promise<void> {
    const cs = this.clusterSize;
    if (minEntries * 8 > 32 * 1024 * 1024) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Active L1 table too large", { errno: "EFBIG" });
    }
    // Everything the new table copies must be on disk first.
    await this.writeback();
    await this.meta.flush();
    const bytes = this.l1.resized(minEntries);
    const clusters = Math.ceil((minEntries * 8) / cs);
    this.meta.debugEvent?.("l1_grow_alloc_table");
    const newOffset = (await this.allocateMetadata(clusters, "L1 table")) * cs;
    const oldOffset = this.l1.hostOffset;
    const oldClusters = Math.ceil((this.l1.size * 8) / cs);
    try {
      await this.refcounts.writeBack();
      await this.meta.flush();
      this.meta.debugEvent?.("l1_grow_write_table");
      await this.meta.write(newOffset, bytes);
      await this.meta.flush();
    } catch (e) {
      // As QEMU's qcow2_grow_l1_table, the new table's clusters are given back when it cannot be written.
      this.refcounts.deferFree(newOffset / cs, clusters);
      throw e;
    }
    // A failed header switch may still have reached the disk: the new table then stays allocated (a leak at
    // worst), where QEMU frees it.
    this.meta.debugEvent?.("l1_grow_activate_table");
    await this.writeL1Location(minEntries, newOffset);
    const l1 = new L1Table(newOffset, minEntries, bytes);
    this.l1 = l1;
    this.map.l1 = l1;
    if (oldClusters > 0 && oldOffset !== 0) this.refcounts.deferFree(oldOffset / cs, oldClusters);
    await this.writeback();
  }

  /** Clear the L1 entries beyond the new size and free their L2 tables. */
  private async shrinkL1(newSize: number): Promise<void> {
    const keep = l1EntriesForSize(newSize, this.clusterBits, this.extendedL2);
    for (let i = keep; i < this.l1.size; i++) {
      const off = this.l1.l2Offset(i);
      if (off === 0) continue;
      this.l1.set(i, 0, false);
      this.l2Cache.delete(off);
      this.refcounts.deferFree(off / this.clusterSize, 1);
    }
    this.metadataClusters = undefined;
  }

  /** Truncate the qcow2 file after its last used cluster. */
  private async truncateMetaTail(): Promise<void> {
    const cs = this.clusterSize;
    const size = await this.meta.size();
    // Cluster 0 (the header) always stays.
    const last = Math.max(0, await this.refcounts.lastReferenced(Math.ceil(size / cs)));
    const newEnd = (last + 1) * cs;
    if (newEnd < size) {
      await this.meta.resize(newEnd);
    }
  }

  /**
   * Preallocate [from, to): every cluster gets a host cluster (metadata: mapped, not written; falloc/full:
   * the space is also reserved or zero-filled), as QEMU's preallocate_co does.
   */
  async preallocate(from: number, to: number, mode: "metadata" | "falloc" | "full"): Promise<void> {
    const cs = this.clusterSize;
    let pos = Math.floor(from / cs) * cs;
    let lastHostEnd = 0;
    // A partial first cluster without a host cluster: the new one gets the guest bytes below `from` and
    // loses any zero flag (QEMU's copy-on-write when linking; with extended L2 the subclusters stay as they are).
    const headStart = pos;
    let head: Uint8Array | undefined;
    const headType = from > pos && !this.extendedL2 ? (await this.map.mapRun(pos, 1)).type : undefined;
    if (headType === SubclusterType.UNALLOCATED_PLAIN || headType === SubclusterType.ZERO_PLAIN) {
      head = new Uint8Array(from - pos);
      await this.readUnlocked(pos, head);
    }
    while (pos < to) {
      const tableEnd = Math.min(to, (this.map.l1Index(pos) + 1) * this.map.l2Coverage);
      const t = await this.l2ForWrite(pos);
      while (pos < tableEnd) {
        // A run of clusters without a host cluster gets one contiguous allocation.
        const l2Index = this.map.l2Index(pos);
        const [hi, lo] = this.entryHalves(t, l2Index);
        const kind = classifyCluster(hi, lo, this.map.format);
        if (kind === "normal" || kind === "zero-alloc" || kind === "compressed") {
          pos += cs;
          continue;
        }
        let runEnd = pos + cs;
        while (runEnd < tableEnd) {
          const [nhi, nlo] = this.entryHalves(t, this.map.l2Index(runEnd));
          const nkind = classifyCluster(nhi, nlo, this.map.format);
          if (nkind === "normal" || nkind === "zero-alloc" || nkind === "compressed") break;
          runEnd += cs;
        }
        const count = (Math.min(runEnd, Math.ceil(tableEnd / cs) * cs) - pos) / cs;
        const host = this.hasDataFile ? pos : (await this.refcounts.allocate(count)) * cs;
        for (let i = 0; i < count; i++) {
          const li = this.map.l2Index(pos + i * cs);
          const [ohi, olo] = this.entryHalves(t, li);
          const headHere = head !== undefined && pos + i * cs === headStart;
          const zero = classifyCluster(ohi, olo, this.map.format) === "zero-plain" && !headHere;
          setL2Entry(t.view, li, this.extendedL2, host + i * cs, { copied: true, zero: zero && !this.extendedL2 });
          if (headHere) await this.writeData(host + i * cs, head!, headStart);
        }
        lastHostEnd = Math.max(lastHostEnd, host + count * cs);
        pos += count * cs;
      }
      this.l2Cache.markDirty(t);
      await this.maybeWriteback();
    }
    await this.writeback();
    const store = this.data;
    const fileEnd = await store.size();
    if (this.hasDataFile) return; // the data file was sized by the caller
    if (lastHostEnd > fileEnd) {
      await store.resize(lastHostEnd, mode === "metadata" ? "off" : mode);
    }
  }

  // ---------------------------------------------------------------- close

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly && !this.corruptSignalled && !this.ejected) {
        for (const hook of this.closeHooks) await hook();
        await this.lock.write(async () => {
          await flushForClose(this, (line) => this.warn(line));
          if (this.lazyRefcounts && this.isDirty && this.dirtyMarked) {
            await this.refcounts.writeBack();
            await this.meta.flush();
            await this.markClean();
          }
        });
      }
    } finally {
      this.closed = true;
      await this.releaseChildren();
    }
  }

  private async releaseChildren(): Promise<void> {
    const errors: unknown[] = [];
    if (this.backing) await this.backing.close().catch((e: unknown) => errors.push(e));
    if (this.data !== this.meta) await this.data.close().catch((e: unknown) => errors.push(e));
    await this.meta.close().catch((e: unknown) => errors.push(e));
    if (errors.length) throw errors[0];
  }
}

function file(name: string | undefined): { hostFile?: string } {
  return name === undefined ? {} : { hostFile: name };
}

export { hex };
