/**
 * The block device the NBD server serves: exactly the `BlockImage` surface of `@qcowkit/core`
 * (docs/core-api.md). Until core lands it is declared here; afterwards this file re-exports core's types.
 */

/** One run of guest bytes with the same allocation status. */
export interface BlockStatusExtent {
  /** Guest byte offset. */
  offset: number;
  /** Bytes. */
  length: number;
  /** Allocated in this image or a backing image ("present" in qemu-img map). */
  present: boolean;
  /** Reads as zeros. */
  zero: boolean;
  /** Holds data (not a hole / zero cluster). */
  data: boolean;
  /** 0 = this image, 1 = first backing image, ...; for absent extents the chain length. */
  depth: number;
  /** Byte offset in the file that holds the data (the data file for data-file images). */
  hostOffset?: number;
  /** Name of that file. */
  hostFile?: string;
  compressed?: boolean;
}

export interface BlockImage {
  readonly format: "qcow2" | "raw";
  /** Bytes. */
  readonly virtualSize: number;
  readonly readOnly: boolean;
  /** 512 for raw (granularity for block status). */
  readonly clusterSize: number;
  read(guestOffset: number, into: Uint8Array): Promise<void>;
  write(guestOffset: number, data: Uint8Array, opts?: { fua?: boolean; compressed?: boolean }): Promise<void>;
  /** `unmap`: may deallocate; `noFallback`: fail with ENOTSUP (NOT_SUPPORTED) instead of writing zero bytes
   *  (NBD FAST_ZERO); `fua`: durable on return. */
  writeZeroes(
    guestOffset: number,
    byteLength: number,
    opts?: { unmap?: boolean; noFallback?: boolean; fua?: boolean },
  ): Promise<void>;
  discard(guestOffset: number, byteLength: number): Promise<void>;
  flush(): Promise<void>;
  /** Extents covering [guestOffset, guestOffset+byteLength) in order, merged where equal. */
  blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]>;
  /** Grow or shrink the guest disk. */
  resize(
    newVirtualSize: number,
    opts?: { shrink?: boolean; preallocation?: "off" | "metadata" | "falloc" | "full" },
  ): Promise<void>;
  /** Names of persistent dirty bitmaps (qcow2 only), and the dirty ranges of one. */
  listBitmaps?(): Promise<{ name: string; granularity: number; flags: string[] }[]>;
  bitmapStatus?(
    name: string,
    guestOffset: number,
    byteLength: number,
  ): Promise<{ offset: number; length: number; dirty: boolean }[]>;
  close(): Promise<void>;
}
