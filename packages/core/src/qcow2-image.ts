/**
 * The qcow2 engine: one open image (qcow2 file + optional external data file + optional backing chain)
 * behind the `BlockImage` surface every frontend uses.
 *
 * This file is the facade: open, argument checks, locking and the corruption guard. The work is done by the
 * parts in engine/ (read, write, compressed writes, zeroing and discard, block status, resize), and every change
 * to on-disk metadata, with the crash-safe write ordering, by the metadata owner (metadata/owner.ts).
 * Concurrency: reads and in-place writes share a readers-writer lock; anything that changes metadata
 * (allocating writes, zeroing, discard, flush, resize) takes it exclusively.
 */
import { flushForClose } from "./close-flush";
import { L1Table } from "@qcowkit/cluster";
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  AUTOCLEAR_KNOWN_MASK,
  INCOMPAT_DATA_FILE,
  Qcow2Error,
  SubclusterType,
  decodeHeader,
  openImageHeader,
  type ByteStore,
  type CompressionType,
} from "@qcowkit/spec";
import {
  type BitmapInfo,
  type BlockImage,
  type BlockStatusExtent,
  type ResizeOptions,
  type WriteOptions,
  type ZeroOptions,
} from "./block-image";
import { StoreSlice, type Payload, type StoreRun } from "./store-slice";
import { bitmapStatus, listBitmaps } from "./bitmaps";
// encryption: guest data encryption (crypto/image-encryption.ts)
import { openImageEncryption, type EncryptionOpenOptions, type ImageEncryption } from "./crypto/image-encryption";
import { isSectorAligned } from "./crypto/sector-alignment";
import { RwLock } from "./lock";
import type { ImageResolver } from "./resolver";
import { dirtyImageRepair } from "./repair";
import { inactiveL2CheckedStore, refblockOverlapCheck } from "./metadata-overlap";
import { readSnapshotTable } from "./snapshots";
import { MetadataOwner } from "./metadata/owner";
import { BlockStatusReader, type StatusHost } from "./engine/block-status";
import { CompressedWriter, type CompressedHost } from "./engine/compressed-writer";
import { ReadPath, type ReadHost } from "./engine/read-path";
import { Resizer, type ResizeHost } from "./engine/resize";
import { WritePath, type WriteHost } from "./engine/write-path";
import { ZeroDiscard, type ZeroHost } from "./engine/zero-discard";

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

/**
 * An open qcow2 image. Members marked internal are the engine surface (engine-image.ts) its other modules use;
 * they are left out of the published declarations. The public operations on it are in qcow2-ops.ts.
 */
export class Qcow2Image implements BlockImage {
  readonly format = "qcow2" as const;
  readonly filename: string;
  readonly readOnly: boolean;
  /** The metadata owner: every change to on-disk metadata goes through its methods. @internal */
  readonly metadata: MetadataOwner;
  private readonly md: MetadataOwner;
  private openedDataFile: string | undefined;
  private backingImage: BlockImage | null = null;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  /** @internal */
  readonly lock = new RwLock();
  private readonly opts: Qcow2OpenOptions;
  private corruptSignalled = false;
  private ejected = false;
  private closed = false;
  readonly warnings: string[] = [];
  private imageEncryption: ImageEncryption | undefined;

  // The engine's parts (engine/*.ts), each working through a narrow host interface.
  private readonly reads: ReadPath;
  private readonly writes: WritePath;
  private readonly compressed: CompressedWriter;
  private readonly zeroes: ZeroDiscard;
  private readonly status: BlockStatusReader;
  private readonly sizing: Resizer;

  private constructor(md: MetadataOwner, opts: Qcow2OpenOptions) {
    this.md = md;
    this.metadata = md;
    md.onUnusable = () => this.eject();
    this.opts = opts;
    this.filename = opts.filename ?? md.meta.name;
    this.readOnly = md.readOnly;
    this.clusterBits = md.clusterBits;
    this.clusterSize = md.clusterSize;
    this.extendedL2 = md.extendedL2;
    this.hasDataFile = md.hasDataFile;
    // One host object serves every part: the image's state, read live, plus the parts themselves.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const image = this;
    const host: ReadHost & WriteHost & CompressedHost & ZeroHost & StatusHost & ResizeHost = {
      md,
      image,
      clusterBits: md.clusterBits,
      clusterSize: md.clusterSize,
      extendedL2: md.extendedL2,
      hasDataFile: md.hasDataFile,
      filename: this.filename,
      discard: opts.discard,
      get virtualSize() { return image.virtualSize; },
      get version() { return image.version; },
      get dataFileRaw() { return image.dataFileRaw; },
      get compressionType() { return image.compressionType; },
      get backing() { return image.backing; },
      get encryption() { return image.encryption; },
      get dataFileName() { return image.dataFileName; },
      get corruptSignalled() { return image.corruptSignalled; },
      get soleReader() { return image.lock.soleReader; },
      get reads() { return image.reads; },
      get writes() { return image.writes; },
      get zeroes() { return image.zeroes; },
      get status() { return image.status; },
      warn: (message) => this.warn(message),
      signalCorruption: (message) => this.signalCorruption(message),
      rangeIsZero: (guestOffset, byteLength) => this.zeroes.rangeIsZero(guestOffset, byteLength),
    };
    this.reads = new ReadPath(host);
    this.writes = new WritePath(host);
    this.compressed = new CompressedWriter(host);
    this.zeroes = new ZeroDiscard(host);
    this.status = new BlockStatusReader(host);
    this.sizing = new Resizer(host);
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
    const md = new MetadataOwner(meta, hdr, l1, {
      readOnly,
      cacheBytes: opts.cacheBytes ?? DEFAULT_CACHE_BYTES,
      lazyRefcounts: opts.lazyRefcounts,
    });
    const image = new Qcow2Image(md, { ...opts, readOnly });
    checked?.bind(image);
    // An allocation that would pass over clusters a guest discard released first makes the removed references
    // durable and frees them (the owner's writeback), so discarded clusters are reused at once, as in QEMU.
    await md.loadRefcounts({ checkBlockWrite: (offset) => refblockOverlapCheck(image, offset), onDeferredBelow: () => md.writeback() });
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
    const h = this.md.hdr.header;
    if (opts.lazyRefcounts && h.version < 3) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level");
    }
    // encryption: the encrypt.* options and the key, before anything else is opened or changed (as QEMU)
    this.imageEncryption = await openImageEncryption(this.md.hdr, this.md.meta, opts.encrypt, opts.noIo ?? false);
    if (!opts.checkMode && h.nbSnapshots > 0) {
      this.md.replaceSnapshots(await readSnapshotTable(this.md.meta, h.snapshotsOffset, h.nbSnapshots));
    }
    const ctx = { imageName: this.filename, readOnly: this.readOnly, chain: [...(opts.chain ?? []), this.filename] };
    if (!opts.noIo) {
      if (this.hasDataFile) {
        if (opts.dataFile !== undefined && typeof opts.dataFile !== "string") {
          this.md.attachDataStore(opts.dataFile);
          this.openedDataFile = opts.dataFile.name;
        } else {
          const name = opts.dataFile ?? this.md.hdr.extensions.dataFile;
          if (name === undefined) throw new Qcow2Error("INVALID_IMAGE", "'data-file' is required for this image");
          if (!opts.resolver) throw new Qcow2Error("NOT_SUPPORTED", "no resolver to open the external data file");
          this.md.attachDataStore(await opts.resolver.openDataFile(name, ctx));
          this.openedDataFile = this.md.data.name;
        }
      } else if (opts.dataFile !== undefined) {
        throw new Qcow2Error(
          "INVALID_ARGUMENT",
          "'data-file' can only be set for images with an external data file",
        );
      }
      if (opts.backing !== undefined && opts.backing !== null && typeof opts.backing !== "string") {
        this.backingImage = opts.backing;
      } else if (opts.backing !== null) {
        const name = opts.backing ?? this.md.hdr.backingFile;
        if (name !== undefined && name !== "") {
          if (!opts.resolver) throw new Qcow2Error("NOT_SUPPORTED", "no resolver to open the backing file");
          this.backingImage = await opts.resolver.openBacking(
            name,
            opts.backingFormat ?? this.md.hdr.extensions.backingFormat,
            { ...ctx, readOnly: true },
          );
        }
      }
    }
    if (this.readOnly) return;
    // Writable open: clear autoclear bits we do not maintain, drop inconsistent bitmaps.
    const unknownAutoclear = (h.autoclearFeatures & ~AUTOCLEAR_KNOWN_MASK) !== 0n;
    const dropBitmaps = ignoreBitmaps && this.md.hdr.extensions.bitmaps !== undefined;
    if (unknownAutoclear || dropBitmaps) {
      await this.md.updateHeader((hdr) => {
        hdr.header.autoclearFeatures &= AUTOCLEAR_KNOWN_MASK;
        if (dropBitmaps) delete hdr.extensions.bitmaps;
      });
    }
    if (this.md.header.autoclearFeatures & AUTOCLEAR_BITMAPS && this.md.hdr.extensions.bitmaps) {
      const tracked = this.opts.bitmaps ? await this.opts.bitmaps(this) : false;
      if (!tracked) {
        // Bitmaps nobody keeps up to date must be declared inconsistent before we write.
        await this.md.updateHeader((hdr) => {
          hdr.header.autoclearFeatures &= ~AUTOCLEAR_BITMAPS;
        });
      }
    }
    if (this.md.isDirty && !this.opts.checkMode) {
      // QEMU repairs a dirty image on every read-write open (qemu-img check -r all without the second pass);
      // repair.ts holds that repair (engine edit by the repair owner: the default used to be a refusal).
      await (this.opts.repairDirty ?? dirtyImageRepair())(this);
    }
  }

  /** Called with every guest range written, zeroed or discarded (dirty bitmap tracking). @internal */
  readonly writeObservers: Array<(guestOffset: number, byteLength: number) => void> = [];
  /** Run by close() before the final flush, in order (e.g. storing dirty bitmaps). @internal */
  readonly closeHooks: Array<() => Promise<void>> = [];

  private observe(guestOffset: number, byteLength: number): void {
    for (const o of this.writeObservers) o(guestOffset, byteLength);
  }

  /** Report a non-fatal problem: kept in `warnings` and passed to the `onWarning` open option. @internal */
  warn(message: string): void {
    this.warnings.push(message);
    this.opts.onWarning?.(message);
  }

  // ---------------------------------------------------------------- properties

  get header() {
    return this.md.hdr.header;
  }

  /** The backing file's name as stored in the header (not resolved: qemu-img info's backing-filename). */
  get backingFile(): string | undefined { return this.md.hdr.backingFile || undefined; }
  /** The backing file's format from the header extension (backing-filename-format); undefined when not recorded. */
  get backingFormat(): string | undefined { return this.md.hdr.extensions.backingFormat || undefined; }
  /** The external data file's name as stored in the header extension; undefined without one. */
  get dataFile(): string | undefined { return this.md.hdr.extensions.dataFile; }
  /** The name of the external data file as opened (the stored name, or the open option's store or name). */
  get dataFileName(): string | undefined { return this.openedDataFile; }
  /** The open backing image; null when there is none or it was not opened (`noIo`, `backing: null`). */
  get backing(): BlockImage | null { return this.backingImage; }
  /** encryption: the image's encryption (undefined when unencrypted); no cipher when opened without I/O. */
  get encryption(): ImageEncryption | undefined { return this.imageEncryption; }

  get virtualSize(): number { return this.md.hdr.header.size; }
  get version(): number { return this.md.hdr.header.version; }
  get dataFileRaw(): boolean { return (this.md.hdr.header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n; }
  get lazyRefcounts(): boolean { return this.md.lazyRefcounts; }
  get compressionType(): CompressionType { return this.md.hdr.header.compressionType === 1 ? "zstd" : "zlib"; }
  /** The image was marked corrupt while open: QEMU then writes no cached metadata back (the node is gone). */
  get corruptionSignalled(): boolean { return this.corruptSignalled; }
  get isCorrupt(): boolean { return this.md.isCorrupt; }
  get isDirty(): boolean { return this.md.isDirty; }

  // ---------------------------------------------------------------- header writes

  /** Mark the image corrupt (QEMU's qcow2_signal_corruption, fatal) and return the error to throw. @internal */
  async signalCorruption(message: string): Promise<Qcow2Error> {
    if (!this.corruptSignalled) {
      this.corruptSignalled = true;
      if (!this.readOnly && !this.closed) {
        this.warn(`qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`);
        try {
          await this.md.markCorrupt();
        } catch {
          /* the image is unusable anyway */
        }
      } else {
        this.warn(`qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`);
      }
    }
    return new Qcow2Error("IO_ERROR", message, { errno: "EIO" });
  }

  /**
   * Drop the image's driver after a failure that left the on-disk structures unusable (QEMU's
   * `bs->drv = NULL`): later requests fail and close writes nothing more. @internal
   */
  eject(): void {
    this.ejected = true;
  }

  /** Run `fn`, turning CORRUPT errors into a corruption signal and an I/O error (as QEMU does). */
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
    await this.lock.read(() => this.guard(() => this.reads.readFast(guestOffset, into) ?? this.reads.readUnlocked(guestOffset, into)));
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
    if (this.encryption || this.extendedL2 || !StoreSlice.canCopyInto(this.md.data)) return false;
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
   * "unsupported" when no guess can be made; nothing was done and `scan` is untouched. @internal (convert's)
   */
  async writeFromStoresGuessing(
    guestOffset: number,
    data: StoreSlice,
    scan: Uint8Array,
    keep: (scan: Uint8Array) => boolean,
  ): Promise<"written" | "declined" | "unsupported"> {
    this.assertWritable();
    this.checkRange(guestOffset, data.byteLength);
    if (this.encryption || this.extendedL2 || this.hasDataFile || !StoreSlice.canCopyInto(this.md.data)) return "unsupported";
    const cs = this.clusterSize;
    const end = guestOffset + data.byteLength;
    // Whole clusters only: a partial last cluster would be zeroed before its data is written (copy-on-write).
    if (data.byteLength === 0 || guestOffset % cs !== 0 || end % cs !== 0) return "unsupported";
    if (scan.length !== Math.ceil(data.byteLength / 512)) throw new Qcow2Error("INTERNAL", "writeFromStoresGuessing: scan has the wrong size");
    return this.lock.write(() =>
      this.guard(async () => {
        const l1Index = this.md.map.l1Index(guestOffset);
        if (this.md.map.l1Index(end - 1) !== l1Index || l1Index >= this.md.l1.size) return "unsupported";
        const tableOffset = this.md.map.l2TableOffset(l1Index);
        const count = Math.ceil(data.byteLength / cs);
        let first: number | undefined;
        if (tableOffset === 0) {
          // The write will make the L2 table first (at the next free cluster), then the data after it.
          const table = await this.md.refcounts.nextAllocation(1);
          if (table === undefined || table === 0) return "unsupported";
          first = await this.md.refcounts.nextAllocation(count, table + 1);
        } else {
          if (!this.md.l1.copied(l1Index)) return "unsupported";
          const t = await this.md.l2Cache.get(tableOffset);
          const firstIndex = this.md.map.l2Index(guestOffset);
          if (this.md.clusters.nextUsedEntry(t, firstIndex, firstIndex + count) >= 0) return "unsupported";
          first = await this.md.refcounts.nextAllocation(count);
        }
        if (first === undefined || first === 0) return "unsupported";
        const host = first * cs;
        this.md.checkOverlap(host, count * cs);
        const sizeBefore = await this.md.data.size();
        let kept = false;
        try {
          await data.copyTo(this.md.data, host, scan);
          kept = keep(scan);
        } finally {
          if (!kept) {
            // Back to how the free clusters were: zeros inside the old end, nothing past it.
            if (host < sizeBefore) await this.md.data.writeZeroes(host, Math.min(count * cs, sizeBefore - host), true);
            if ((await this.md.data.size()) > sizeBefore) await this.md.data.resize(sizeBefore);
          }
        }
        if (!kept) return "declined";
        this.observe(guestOffset, data.byteLength);
        await this.writes.writeUnlocked(guestOffset, new StoreSlice(data.runs, { store: this.md.data, offset: host }));
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
          const run = await this.md.map.mapRun(pos, end - pos);
          if (run.type !== SubclusterType.NORMAL || !Number.isSafeInteger(run.hostOffset + run.byteLength)) return undefined;
          const last = runs[runs.length - 1];
          if (last && last.offset + last.length === run.hostOffset) runs[runs.length - 1] = { ...last, length: last.length + run.byteLength };
          else runs.push({ store: this.md.data, offset: run.hostOffset, length: run.byteLength });
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
      const ticket = this.compressed.compressedIssued++;
      try {
        this.compressed.checkCompressedWrite(guestOffset, data.byteLength);
        const bytes = data instanceof StoreSlice ? await data.bytes() : data;
        const compressed = await this.compressed.compressClusters(bytes);
        await this.compressed.compressedTurn(ticket);
        await this.lock.write(() => this.guard(() => this.compressed.placeCompressedClusters(guestOffset, bytes, compressed)));
      } finally {
        this.compressed.endCompressedTurn(ticket);
      }
    } else {
      // encryption: partial sectors are read, completed and rewritten: never concurrently (exclusive lock)
      const rmw = this.encryption !== undefined && !isSectorAligned(guestOffset, data.byteLength, this.virtualSize);
      const done = !rmw && (await this.lock.read(() => this.guard(() => this.writes.writeBesideOthers(guestOffset, data))));
      if (!done) await this.lock.write(() => this.guard(() => this.writes.writeUnlocked(guestOffset, data)));
    }
    if (opts.fua) await this.flush();
  }

  // ---------------------------------------------------------------- zero and discard

  async writeZeroes(guestOffset: number, byteLength: number, opts: ZeroOptions = {}): Promise<void> {
    this.assertWritable();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0) return;
    this.observe(guestOffset, byteLength);
    await this.lock.write(() => this.guard(() => this.zeroes.writeZeroesUnlocked(guestOffset, byteLength, opts)));
    if (opts.fua) await this.flush();
  }

  async discard(guestOffset: number, byteLength: number): Promise<void> {
    this.assertWritable();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0 || this.opts.discard === "ignore") return;
    // v2 has no zero flag: discarding would expose the backing file's data, so QEMU ignores the request.
    if (this.version < 3 && this.backing) return;
    this.observe(guestOffset, byteLength);
    await this.lock.write(() => this.guard(() => this.zeroes.discardUnlocked(guestOffset, byteLength, false)));
  }

  // ---------------------------------------------------------------- block status

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    this.assertOpen();
    this.checkRange(guestOffset, byteLength);
    if (byteLength === 0) return [];
    return this.lock.read(() =>
      this.guard(() => {
        // One cached run answers most requests (NBD's sparse reads ask before every read): no awaits, no tables loaded.
        const cached = this.status.blockStatusCached(guestOffset, byteLength);
        if (cached) return Promise.resolve(cached);
        return this.status.blockStatusUnlocked(guestOffset, byteLength).finally(() => this.md.l2Cache.trim(this.lock.soleReader));
      }),
    );
  }

  // ---------------------------------------------------------------- persistent dirty bitmaps

  /** Names, granularities and flags of the image's persistent dirty bitmaps. */
  async listBitmaps(): Promise<BitmapInfo[]> {
    this.assertOpen();
    if (!this.md.hdr.extensions.bitmaps || !(this.md.hdr.header.autoclearFeatures & AUTOCLEAR_BITMAPS)) return [];
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
    await this.lock.write(() => this.guard(() => this.md.flush()));
  }

  // ---------------------------------------------------------------- resize

  async resize(newVirtualSize: number, opts: ResizeOptions = {}): Promise<void> {
    this.assertWritable();
    if (!Number.isSafeInteger(newVirtualSize) || newVirtualSize < 0) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Invalid image size specified");
    }
    await this.lock.write(() => this.guard(() => this.sizing.resizeUnlocked(newVirtualSize, opts)));
  }

  // ---------------------------------------------------------------- for the engine's other modules (lock held)

  /** Read through the current mapping; the caller holds the lock. @internal */
  readUnlocked(guestOffset: number, into: Uint8Array): Promise<void> {
    return this.reads.readUnlocked(guestOffset, into);
  }

  /** The allocating write path (exclusive lock held). @internal */
  writeUnlocked(guestOffset: number, data: Payload): Promise<void> {
    return this.writes.writeUnlocked(guestOffset, data);
  }

  /** Discard (exclusive lock held); `full` deallocates instead of zeroing. @internal */
  discardUnlocked(guestOffset: number, byteLength: number, full: boolean): Promise<void> {
    return this.zeroes.discardUnlocked(guestOffset, byteLength, full);
  }

  /** Block status (lock held). @internal */
  blockStatusUnlocked(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    return this.status.blockStatusUnlocked(guestOffset, byteLength);
  }

  /** Map guest clusters [from, to) to host clusters from `hostStart` the caller has already counted. @internal */
  linkPreallocated(from: number, to: number, hostStart: number, allocateSubclusters = false): Promise<void> {
    return this.sizing.linkPreallocated(from, to, hostStart, allocateSubclusters);
  }

  /** Preallocate [from, to) (metadata: mapped, not written; falloc/full: space reserved or zero-filled). */
  preallocate(from: number, to: number, mode: "metadata" | "falloc" | "full"): Promise<void> {
    return this.sizing.preallocate(from, to, mode);
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
          await flushForClose(this.md, (line) => this.warn(line));
          await this.md.settleLazyRefcounts();
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
    if (this.md.data !== this.md.meta) await this.md.data.close().catch((e: unknown) => errors.push(e));
    await this.md.meta.close().catch((e: unknown) => errors.push(e));
    if (errors.length) throw errors[0];
  }
}

