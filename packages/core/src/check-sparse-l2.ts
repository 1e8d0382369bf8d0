/**
 * Compact copies of the L2 tables a read-only check has counted, for its second pass (the COPIED flags).
 *
 * Both passes walk every L2 table, as QEMU's check does, and QEMU reads every table from the file twice. On a
 * large sparse image that is most of the check's cost: a 4 TiB image with a few thousand clusters has a few
 * thousand 64 KiB tables holding one entry each. The first pass keeps the used entries of each table that has
 * few of them (their indices and their bytes: a lossless copy, since every other entry is all zeros), and the
 * second pass walks those entries instead of reading and scanning the table again.
 *
 * Only a check that fixes nothing keeps them: it writes nothing between the passes, so what was read is what
 * is on disk. Memory is bounded by a byte budget, whatever the number of tables; tables past it, or with
 * many used entries, are read again as before. A kept table also leaves the check's cache of whole tables
 * (its buffer is read into again, while still in the processor's cache): the first pass rebuilds it from the
 * kept entries when an L1 table names it again.
 */

/** The used (non-zero) entries of one L2 table, packed: entry k is table entry `indices[k]`. */
export interface SparseL2Table {
  indices: Uint32Array;
  entries: Uint8Array;
}

/** Bytes counted for each kept table besides its entries (the objects that hold them). */
const OVERHEAD_BYTES = 256;

export class SparseL2Tables {
  private readonly tables = new Map<number, SparseL2Table>();
  private bytes = 0;

  /**
   * @param entryBytes bytes of one L2 entry (8, or 16 with extended L2 entries)
   * @param maxUsed tables with more used entries than this are not kept
   * @param budget bytes all kept tables may take together
   */
  constructor(
    private readonly entryBytes: number,
    readonly maxUsed: number,
    private readonly budget: number,
  ) {}

  /**
   * Keep the table at `l2Offset`, whose used entries are `used` (ascending), if it is sparse enough and fits;
   * true when it is kept (now or before).
   */
  keep(l2Offset: number, table: Uint8Array, used: readonly number[]): boolean {
    if (this.tables.has(l2Offset)) return true;
    if (used.length > this.maxUsed) return false;
    const size = OVERHEAD_BYTES + used.length * (4 + this.entryBytes);
    if (this.bytes + size > this.budget) return false;
    const n = used.length;
    const indices = new Uint32Array(n);
    const entries = new Uint8Array(n * this.entryBytes);
    for (let k = 0, to = 0; k < n; k++) {
      indices[k] = used[k]!;
      for (let from = used[k]! * this.entryBytes, end = from + this.entryBytes; from < end; ) entries[to++] = table[from++]!;
    }
    this.tables.set(l2Offset, { indices, entries });
    this.bytes += size;
    return true;
  }

  /** Write the kept table at `l2Offset` into `into` (a whole table); false when it is not kept. */
  fill(l2Offset: number, into: Uint8Array): boolean {
    const kept = this.tables.get(l2Offset);
    if (!kept) return false;
    into.fill(0);
    const { indices, entries } = kept;
    for (let k = 0; k < indices.length; k++) {
      into.set(entries.subarray(k * this.entryBytes, (k + 1) * this.entryBytes), indices[k]! * this.entryBytes);
    }
    return true;
  }

  get(l2Offset: number): SparseL2Table | undefined {
    return this.tables.get(l2Offset);
  }
}

/** Bytes of compact L2 tables a check keeps (see SparseL2Tables). */
export const SPARSE_L2_BUDGET_BYTES = 8 * 1024 * 1024;

/** A table is kept when at most this share of its entries (1/n) is used. */
export const SPARSE_L2_SHARE = 16;
