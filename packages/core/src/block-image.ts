/** The guest-facing surface shared by every image kind (docs/core-api.md). */
import type { StoreRun, StoreSlice } from "./store-slice";

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
  /** Holds data (not a hole or a zero cluster). */
  data: boolean;
  /** 0 = this image, 1 = its backing image, ...; for absent extents, the last layer consulted. */
  depth: number;
  /** Byte offset in the file that holds the data (the data file for data-file images). */
  hostOffset?: number;
  /** Name of that file. */
  hostFile?: string;
  compressed?: boolean;
}

export interface WriteOptions {
  /** Durable on return. */
  fua?: boolean;
  /** Store the data compressed (whole clusters only; refused with an external data file). */
  compressed?: boolean;
}

export interface ZeroOptions {
  /** The range may be deallocated. */
  unmap?: boolean;
  /** Fail with NOT_SUPPORTED instead of writing zero bytes (NBD FAST_ZERO). */
  noFallback?: boolean;
  fua?: boolean;
}

export type Preallocation = "off" | "metadata" | "falloc" | "full";

export interface ResizeOptions {
  shrink?: boolean;
  preallocation?: Preallocation;
}

export interface BitmapInfo {
  name: string;
  granularity: number;
  flags: string[];
}

export interface BlockImage {
  readonly format: "qcow2" | "raw" | "luks";
  /** Guest disk size in bytes. */
  readonly virtualSize: number;
  readonly readOnly: boolean;
  /** Allocation granularity (512 for raw). */
  readonly clusterSize: number;
  /** Name of the file (for messages and map output). */
  readonly filename: string;
  read(guestOffset: number, into: Uint8Array): Promise<void>;
  write(guestOffset: number, data: Uint8Array, opts?: WriteOptions): Promise<void>;
  writeZeroes(guestOffset: number, byteLength: number, opts?: ZeroOptions): Promise<void>;
  discard(guestOffset: number, byteLength: number): Promise<void>;
  flush(): Promise<void>;
  blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]>;
  resize(newVirtualSize: number, opts?: ResizeOptions): Promise<void>;
  listBitmaps?(): Promise<BitmapInfo[]>;
  bitmapStatus?(name: string, guestOffset: number, byteLength: number): Promise<{ offset: number; length: number; dirty: boolean }[]>;
  /**
   * Where the guest bytes of a range are stored as they are, in guest order (a raw file; plain clusters of
   * an unencrypted qcow2 image), or undefined when some of them are not (zeros, compressed, backing, encrypted).
   */
  storeRuns?(guestOffset: number, byteLength: number): Promise<StoreRun[] | undefined>;
  /**
   * Write guest data held in byte stores, copied store to store without passing through memory; false,
   * with nothing written, when this image cannot (the caller then reads the bytes and writes them).
   */
  writeFromStores?(guestOffset: number, data: StoreSlice): Promise<boolean>;
  close(): Promise<void>;
  /** `close()`, so that `await using image = await openImage(...)` closes the image at the end of its block. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Merge adjacent extents with equal status and contiguous host offsets (as qemu-img map merges). */
export function mergeExtents(extents: BlockStatusExtent[]): BlockStatusExtent[] {
  const out: BlockStatusExtent[] = [];
  for (const e of extents) {
    if (e.length === 0) continue;
    const last = out[out.length - 1];
    if (
      last &&
      last.offset + last.length === e.offset &&
      last.present === e.present &&
      last.zero === e.zero &&
      last.data === e.data &&
      last.depth === e.depth &&
      (last.compressed ?? false) === (e.compressed ?? false) &&
      last.hostFile === e.hostFile &&
      ((last.hostOffset === undefined && e.hostOffset === undefined) ||
        (last.hostOffset !== undefined && e.hostOffset === last.hostOffset + last.length))
    ) {
      last.length += e.length;
    } else {
      out.push({ ...e });
    }
  }
  return out;
}
