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
  /** Bytes of storage actually allocated (st_blocks * 512 for files), when the backend knows. */
  allocatedSize?(): Promise<number | undefined>;
}

export type StorePreallocation = "off" | "falloc" | "full";
