/**
 * The active L1 table, held in memory (QEMU caps it at 32 MiB). Changed entries are tracked so that only the
 * 512-byte sectors holding them are written back, as QEMU writes L1 entries.
 */
import { l1EntryCopied, l1EntryL2Offset, setL1Entry, viewOf, type ByteStore } from "@qcowkit/spec";

const SECTOR = 512;

export class L1Table {
  bytes: Uint8Array;
  view: DataView;
  /** Dirty 512-byte sectors of the table. */
  private dirtySectors = new Set<number>();

  constructor(
    /** Host offset of the table. */
    public hostOffset: number,
    /** Number of entries (l1_size). */
    public size: number,
    bytes?: Uint8Array,
  ) {
    this.bytes = bytes ?? new Uint8Array(size * 8);
    this.view = viewOf(this.bytes);
  }

  static async load(store: ByteStore, hostOffset: number, size: number): Promise<L1Table> {
    const bytes = new Uint8Array(size * 8);
    if (size > 0) await store.read(hostOffset, bytes);
    return new L1Table(hostOffset, size, bytes);
  }

  l2Offset(index: number): number {
    return index < this.size ? l1EntryL2Offset(this.view, index) : 0;
  }

  copied(index: number): boolean {
    return index < this.size && l1EntryCopied(this.view, index);
  }

  set(index: number, l2Offset: number, copied: boolean): void {
    setL1Entry(this.view, index, l2Offset, copied);
    this.dirtySectors.add(Math.floor((index * 8) / SECTOR));
  }

  get dirty(): boolean {
    return this.dirtySectors.size > 0;
  }

  /** Write the dirty sectors (no flush). The last sector is written only up to the table's end. */
  async writeBack(store: ByteStore): Promise<void> {
    const sectors = [...this.dirtySectors].sort((a, b) => a - b);
    for (const s of sectors) {
      const start = s * SECTOR;
      const end = Math.min(this.bytes.byteLength, start + SECTOR);
      store.debugEvent?.("l1_update");
      await store.write(this.hostOffset + start, this.bytes.subarray(start, end));
      this.dirtySectors.delete(s);
    }
  }

  markAllClean(): void {
    this.dirtySectors.clear();
  }

  /** A copy of this table with `newSize` entries (for growth). */
  resized(newSize: number): Uint8Array {
    const out = new Uint8Array(newSize * 8);
    out.set(this.bytes.subarray(0, Math.min(this.bytes.byteLength, out.byteLength)));
    return out;
  }
}
