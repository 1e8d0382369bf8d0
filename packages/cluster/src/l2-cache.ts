/**
 * A bounded write-back cache of L2 tables (whole clusters), keyed by the table's host offset. The owner
 * decides when dirty tables may be written (after the data and refcounts they depend on are durable), so
 * the cache never writes on its own: `overCapacity` tells the owner to write back, then `trim` drops the
 * least recently used clean tables. Memory is capacity x cluster size; never per-cluster JS objects.
 */
import { viewOf, type ByteStore } from "@qcowkit/spec";

export interface L2Table {
  /** Host offset of the table in the qcow2 file. */
  hostOffset: number;
  bytes: Uint8Array;
  view: DataView;
  dirty: boolean;
}

/** Dropped tables' bytes kept for reuse. */
const MAX_SPARE_TABLES = 8;

export class L2Cache {
  private readonly tables = new Map<number, L2Table>();
  /** Loads in flight, so concurrent readers of one table share a single read. */
  private readonly loading = new Map<number, Promise<L2Table>>();
  /** Bytes of dropped tables nobody holds any more (see `trim`), read into again by the next loads. */
  private readonly spare: Uint8Array[] = [];

  constructor(
    private readonly store: ByteStore,
    readonly tableBytes: number,
    readonly capacity: number,
  ) {}

  /** The table at `hostOffset`, read from the store when not cached. */
  async get(hostOffset: number): Promise<L2Table> {
    const t = this.tables.get(hostOffset);
    if (t) {
      this.tables.delete(hostOffset);
      this.tables.set(hostOffset, t);
      return t;
    }
    const pending = this.loading.get(hostOffset);
    if (pending) return pending;
    const load = (async () => {
      const bytes = this.spare.pop() ?? new Uint8Array(this.tableBytes);
      // An offset no store can address (2^53 and more, from a damaged L1 entry) lies past the end of the
      // file: the table reads as zeros there, as QEMU reads it (edit by the fuzz owner).
      this.store.debugEvent?.("l2_load");
      if (Number.isSafeInteger(hostOffset + this.tableBytes)) await this.store.read(hostOffset, bytes);
      else bytes.fill(0);
      const table: L2Table = { hostOffset, bytes, view: viewOf(bytes), dirty: false };
      // A concurrent create() may have installed a fresher table meanwhile.
      const now = this.tables.get(hostOffset);
      if (now) return now;
      this.tables.set(hostOffset, table);
      return table;
    })();
    this.loading.set(hostOffset, load);
    try {
      return await load;
    } finally {
      this.loading.delete(hostOffset);
    }
  }

  /** Cached table or undefined, without I/O. */
  peek(hostOffset: number): L2Table | undefined {
    return this.tables.get(hostOffset);
  }

  /** Install a new table (for example a freshly allocated L2 table), dirty. */
  create(hostOffset: number, bytes: Uint8Array): L2Table {
    const table: L2Table = { hostOffset, bytes, view: viewOf(bytes), dirty: true };
    this.tables.delete(hostOffset);
    this.tables.set(hostOffset, table);
    return table;
  }

  markDirty(table: L2Table): void {
    table.dirty = true;
  }

  get overCapacity(): boolean {
    return this.tables.size > this.capacity;
  }

  get hasDirty(): boolean {
    for (const t of this.tables.values()) if (t.dirty) return true;
    return false;
  }

  /** Write every dirty table (no flush), in host offset order. */
  async writeBack(): Promise<number> {
    const dirty = [...this.tables.values()].filter((t) => t.dirty).sort((a, b) => a.hostOffset - b.hostOffset);
    for (const t of dirty) {
      t.dirty = false;
      try {
        this.store.debugEvent?.("l2_update");
        await this.store.write(t.hostOffset, t.bytes);
      } catch (e) {
        t.dirty = true;
        throw e;
      }
    }
    return dirty.length;
  }

  /**
   * Drop least recently used clean tables until within capacity. With `reuse`, the owner vouches that no
   * one holds a table of this cache any more (no operation is between its lookup and its last use of the
   * bytes): the dropped tables' bytes are kept for the next loads, so a scan of a huge image reuses a few
   * buffers instead of leaving one per L2 table to the garbage collector.
   */
  trim(reuse = false): void {
    if (this.tables.size <= this.capacity) return;
    for (const [offset, t] of this.tables) {
      if (this.tables.size <= this.capacity) break;
      if (t.dirty) continue;
      this.tables.delete(offset);
      if (reuse && this.spare.length < MAX_SPARE_TABLES && t.bytes.byteLength === this.tableBytes) this.spare.push(t.bytes);
    }
  }

  /** Forget a table (it was freed). */
  delete(hostOffset: number): void {
    this.tables.delete(hostOffset);
  }

  clear(): void {
    this.tables.clear();
  }
}
