/**
 * Guest data that stays where it is stored: runs of bytes in byte stores, in guest order. A write given a
 * StoreSlice copies store to store (ByteStore.copyFrom, which a file store does on its own threads) instead
 * of receiving the bytes in memory; convert uses it so that 1 GiB of data never passes through JavaScript.
 */
import { Qcow2Error, type ByteStore } from "@qcowkit/spec";

/** `length` bytes at `offset` of `store`. */
export interface StoreRun {
  readonly store: ByteStore;
  readonly offset: number;
  readonly length: number;
}


export class StoreSlice {
  readonly byteLength: number;

  /**
   * @param placed where these bytes were already copied, when they were (see Qcow2Image
   *   writeFromStoresGuessing): a copy to exactly that place is skipped.
   */
  constructor(
    readonly runs: readonly StoreRun[],
    readonly placed?: { readonly store: ByteStore; readonly offset: number },
  ) {
    this.byteLength = runs.reduce((n, r) => n + r.length, 0);
  }

  /** The bytes `[from, to)` of this slice (clamped like Uint8Array.subarray for in-range arguments). */
  subarray(from: number, to: number = this.byteLength): StoreSlice {
    from = Math.max(0, Math.min(from, this.byteLength));
    to = Math.max(from, Math.min(to, this.byteLength));
    const out: StoreRun[] = [];
    let at = 0;
    for (const r of this.runs) {
      const start = Math.max(from, at);
      const end = Math.min(to, at + r.length);
      if (end > start) out.push({ store: r.store, offset: r.offset + (start - at), length: end - start });
      at += r.length;
      if (at >= to) break;
    }
    return new StoreSlice(out, this.placed && { store: this.placed.store, offset: this.placed.offset + from });
  }

  /** Read the slice into memory (for the few places that need the bytes: partial clusters). */
  async bytes(): Promise<Uint8Array> {
    const out = new Uint8Array(this.byteLength);
    let at = 0;
    for (const r of this.runs) {
      await r.store.read(r.offset, out.subarray(at, at + r.length));
      at += r.length;
    }
    return out;
  }

  /** Whether `target` can take this slice without the bytes passing through memory here. */
  static canCopyInto(target: ByteStore): boolean {
    return typeof target.copyFrom === "function";
  }

  /**
   * Write the slice at `offset` of `target`, store to store (`target` must have copyFrom: see canCopyInto). With
   * `scan` (one byte per 512-byte sector of the slice; its runs must then be whole sectors), the zero sectors
   * of what was copied are marked in it as ByteStore.zeroSectors marks them.
   */
  async copyTo(target: ByteStore, offset: number, scan?: Uint8Array): Promise<void> {
    // Callers check canCopyInto first (writes fall back to bytes in memory where it is false).
    if (!target.copyFrom) throw new Qcow2Error("INTERNAL", `${target.name}: store cannot copy from other stores`);
    if (!scan && this.placed && this.placed.store === target && this.placed.offset === offset) return;
    let at = offset;
    for (const r of this.runs) {
      const sector = (at - offset) / 512;
      const runScan = scan?.subarray(sector, sector + Math.ceil(r.length / 512));
      await target.copyFrom(r.store, r.offset, at, r.length, runScan);
      at += r.length;
    }
  }
}

/** What a write carries: bytes in memory, or a slice of stores. */
export type Payload = Uint8Array | StoreSlice;
