/**
 * The storage contract every qcowkit layer reads and writes through: a random-access byte store
 * (a file, a block of memory, a remote object). Implementations live in `@qcowkit/datafile`; the
 * contract lives here so the format packages can depend on it without depending on a backend.
 *
 * Offsets and lengths are byte counts as `number`, always safe non-negative integers.
 */
export interface ByteStore {
  /** True when the store refuses writes. */
  readonly readOnly: boolean;
  /** A name for messages (usually the file name). */
  readonly name: string;
  /** Fill `into` entirely with the bytes at `offset`; bytes past the end of the store read as zeros. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Write all of `data` at `offset`, growing the store when the write ends past its end. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  /** Current size in bytes. */
  size(): Promise<number>;
  /**
   * Set the size. Growing with `preallocation` "off" leaves a hole (reads zeros); "falloc" reserves
   * space where the backend can; "full" writes zeros.
   */
  resize(size: number, preallocation?: StorePreallocation): Promise<void>;
  /** Deallocate a range where the backend can; the range reads as zeros afterwards. */
  discard(offset: number, length: number): Promise<void>;
  /** Make a range read as zeros; with `unmap` the backend may deallocate it. */
  writeZeroes(offset: number, length: number, unmap?: boolean): Promise<void>;
  /** Release the store; further calls fail. */
  close(): Promise<void>;
  /**
   * `close()`, so that `await using store = ...` releases the store at the end of its block. Every store class
   * in `@qcowkit/datafile` has it; ad-hoc stores may leave it out.
   */
  [Symbol.asyncDispose]?(): Promise<void>;
  /**
   * True when `writeZeroes` without unmap costs no zero-byte writes (fallocate zero-range or punch + allocate,
   * or memory): callers then prefer it to writing zero buffers, as QEMU does for copy-on-write regions.
   */
  readonly efficientZeroes?: boolean;
  /**
   * QEMU's block debug events (BLKDBG_*: "l2_update", "write_aio", ...), raised by a format engine on the store
   * under it at the points where QEMU's qcow2 driver raises them on its file child. A blkdebug filter reacts
   * to them (see BlkdebugStore in @qcowkit/datafile); other stores leave the method out.
   */
  debugEvent?(event: string): void;
  /** Bytes of storage actually allocated (st_blocks * 512 for files), when the backend knows. */
  allocatedSize?(): Promise<number | undefined>;
  /**
   * The store's allocation map over `[offset, offset + length)`, when the backend knows it (a sparse
   * file via lseek SEEK_DATA/SEEK_HOLE): contiguous extents starting at `offset`, each either `data`
   * (storage allocated; the bytes may still be zeros) or a hole (`data` false: reads as zeros, no
   * storage). Bytes past the end of the store are a hole. The answer may cover only a prefix of the
   * range (backends bound the extent count); callers continue from the end of the last extent. An
   * empty range gives no extents. QEMU reports file holes as zero in `qemu-img map`, and convert
   * can skip them.
   */
  allocationStatus?(offset: number, length: number): Promise<{ offset: number; length: number; data: boolean }[]>;
  /**
   * Copy `length` bytes at `sourceOffset` of `source` to `offset` of this store, growing it like a write; the
   * bytes need not pass through the caller (a file store copies file to file on its own threads). Bytes past
   * the end of the source read as zeros, as in `read`. With `scan` (one byte per 512-byte sector of the
   * range), the copy also fills it as `zeroSectors` would, from the bytes it copied: a copy that must learn
   * where its source is sparse then reads it once. Optional: callers without it read and write.
   */
  copyFrom?(source: ByteStore, sourceOffset: number, offset: number, length: number, scan?: Uint8Array): Promise<void>;
  /**
   * Which 512-byte sectors of `[offset, offset + length)` read as all zeros: one byte per sector (the last
   * one may be partial), 1 for all zeros, else 0. Bytes past the end of the store count as zeros. Lets a
   * copy find its sparse regions without bringing the data to the caller. Optional.
   */
  zeroSectors?(offset: number, length: number): Promise<Uint8Array>;
}

export type StorePreallocation = "off" | "falloc" | "full";
