/**
 * Reading the internal snapshot table: entries are variable-sized, so the table is read in chunks as the
 * entries are decoded, bounded by QEMU's 64 MiB limit on the whole table.
 */
import {
  MAX_SNAPSHOT_TABLE_BYTES,
  Qcow2Error,
  SNAPSHOT_HEADER_BYTES,
  decodeSnapshotEntry,
  viewOf,
  type ByteStore,
  type SnapshotEntry,
} from "@qcowkit/spec";

export interface SnapshotInfo extends SnapshotEntry {
  /** Encoded size of the entry in the table, padding included. */
  entryBytes: number;
}

export async function readSnapshotTable(store: ByteStore, offset: number, count: number): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = [];
  let pos = offset;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const head = new Uint8Array(SNAPSHOT_HEADER_BYTES);
    await store.read(pos, head);
    const v = viewOf(head);
    const entryRaw = SNAPSHOT_HEADER_BYTES + v.getUint32(36) + v.getUint16(12) + v.getUint16(14);
    if (v.getUint32(36) > 1024) throw new Qcow2Error("INVALID_IMAGE", "Too much extra metadata in snapshot table entry");
    const entryBytes = (entryRaw + 7) & ~7;
    total += entryBytes;
    if (total > MAX_SNAPSHOT_TABLE_BYTES) throw new Qcow2Error("INVALID_IMAGE", "Snapshot table too large");
    const bytes = new Uint8Array(entryBytes);
    await store.read(pos, bytes);
    const { entry } = decodeSnapshotEntry(bytes, 0);
    out.push({ ...entry, entryBytes });
    pos += entryBytes;
  }
  return out;
}
