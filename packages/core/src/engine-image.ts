/**
 * The surface of an open qcow2 image that the engine's other modules (snapshots, bitmaps, check and repair,
 * host preallocation) work through. It lives apart from `qcow2-image.ts` so that those modules and the image
 * class do not import each other: the class has these members (the engine-only ones marked internal, so the
 * published declarations leave them out), the modules depend only on this. Users never see this type: the
 * public functions over these modules (qcow2-ops.ts) take `Qcow2Image`.
 */
import type { Qcow2Error, Qcow2Header } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import type { RwLock } from "./lock";
import type { MetadataOwner, ReadonlyDeep } from "./metadata/owner";

export interface EngineImage extends BlockImage {
  readonly format: "qcow2";
  readonly filename: string;
  readonly readOnly: boolean;
  /** Every change to on-disk metadata goes through the owner. */
  readonly metadata: MetadataOwner;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  readonly version: number;
  readonly header: ReadonlyDeep<Qcow2Header>;
  readonly lock: RwLock;
  readonly warnings: string[];
  /** The image was marked corrupt while open (QEMU then writes no cached metadata back). */
  readonly corruptionSignalled: boolean;
  /** Called with every guest range written, zeroed or discarded (dirty bitmap tracking). */
  readonly writeObservers: Array<(guestOffset: number, byteLength: number) => void>;
  /** Run by close() before the final flush, in order. */
  readonly closeHooks: Array<() => Promise<void>>;
  /** Report a non-fatal problem: kept in `warnings` and passed to the `onWarning` open option. */
  warn(message: string): void;
  /** Mark the image corrupt (fatal) and return the error to throw. */
  signalCorruption(message: string): Promise<Qcow2Error>;
  /** Discard with the exclusive lock held (`full`: the clusters are deallocated, not just zeroed). */
  discardUnlocked(guestOffset: number, byteLength: number, full: boolean): Promise<void>;
  /** Map guest clusters [from, to) to host clusters from `hostStart` the caller has already counted. */
  linkPreallocated(from: number, to: number, hostStart: number, allocateSubclusters?: boolean): Promise<void>;
}
