/**
 * Snapshot table entries (docs/interop/qcow2.txt, "Snapshots"). Each entry:
 *   0- 7 l1_table_offset   8-11 l1_size   12-13 id_str_size   14-15 name_size
 *  16-19 date_sec        20-23 date_nsec 24-31 vm_clock_nsec 32-35 vm_state_size
 *  36-39 extra_data_size  40-   extra data (v3: at least vm_state_size_large and disk_size; then icount)
 *  then the id string, the name string (not NUL-terminated), padding to a multiple of 8.
 */
import { decodePaddedText, encodeText, getU64, setU64, viewOf } from "./bytes";
import { MAX_SNAPSHOT_EXTRA_DATA } from "./constants";
import { Qcow2Error } from "./errors";

export const SNAPSHOT_HEADER_BYTES = 40;

export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSeconds: number;
  dateNanoseconds: number;
  vmClockNanoseconds: number;
  /** VM state size (the 64-bit extra field when present, else the 32-bit field). */
  vmStateSize: number;
  /** Virtual disk size when the snapshot was taken (extra data), if recorded. */
  diskSize?: number;
  /** icount (extra data), -1 when not recording; absent when not stored. */
  icount?: bigint;
  /** Extra data bytes past the fields known here, kept on rewrite. */
  unknownExtraData: Uint8Array;
}

/**
 * Decode one entry at `offset` of `table`; returns the entry and the offset of the next one. `index` (the
 * entry's number, for messages) defaults to 0.
 */
export function decodeSnapshotEntry(
  table: Uint8Array,
  offset: number,
  index = 0,
): { entry: SnapshotEntry; next: number } {
  if (offset + SNAPSHOT_HEADER_BYTES > table.byteLength) {
    throw new Qcow2Error("INVALID_IMAGE", "Snapshot table is truncated");
  }
  const v = viewOf(table);
  const idSize = v.getUint16(offset + 12);
  const nameSize = v.getUint16(offset + 14);
  const extraSize = v.getUint32(offset + 36);
  if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
    throw new Qcow2Error("INVALID_IMAGE", `Too much extra metadata in snapshot table entry ${index}`, {
      errno: "EFBIG",
    });
  }
  const extraStart = offset + SNAPSHOT_HEADER_BYTES;
  const idStart = extraStart + extraSize;
  const end = idStart + idSize + nameSize;
  if (end > table.byteLength) throw new Qcow2Error("INVALID_IMAGE", "Snapshot table is truncated");
  const entry: SnapshotEntry = {
    l1TableOffset: getU64(v, offset),
    l1Size: v.getUint32(offset + 8),
    // C strings in QEMU: a NUL ends them (and a rewritten table keeps only that much).
    id: decodePaddedText(table.subarray(idStart, idStart + idSize)),
    name: decodePaddedText(table.subarray(idStart + idSize, end)),
    dateSeconds: v.getUint32(offset + 16),
    dateNanoseconds: v.getUint32(offset + 20),
    vmClockNanoseconds: getU64(v, offset + 24),
    vmStateSize: v.getUint32(offset + 32),
    unknownExtraData: new Uint8Array(0),
  };
  if (extraSize >= 8) entry.vmStateSize = getU64(v, extraStart);
  if (extraSize >= 16) entry.diskSize = getU64(v, extraStart + 8);
  if (extraSize >= 24) entry.icount = v.getBigInt64(extraStart + 16);
  if (extraSize > 24) entry.unknownExtraData = table.slice(extraStart + 24, extraStart + extraSize);
  return { entry, next: (end + 7) & ~7 };
}

/** Decode `count` entries; throws INVALID_IMAGE when the table is shorter than the entries claim. */
export function decodeSnapshotTable(table: Uint8Array, count: number): SnapshotEntry[] {
  const out: SnapshotEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    const { entry, next } = decodeSnapshotEntry(table, at, i);
    out.push(entry);
    at = next;
  }
  return out;
}

/** Encoded size of one entry, padding included. */
export function snapshotEntryBytes(entry: SnapshotEntry): number {
  const extra = snapshotExtraBytes(entry);
  const raw = SNAPSHOT_HEADER_BYTES + extra + encodeText(entry.id).byteLength + encodeText(entry.name).byteLength;
  return (raw + 7) & ~7;
}

/** QEMU always writes the 24 bytes of extra data it knows, then any unknown extra data it read. */
function snapshotExtraBytes(entry: SnapshotEntry): number {
  return 24 + entry.unknownExtraData.byteLength;
}

export function encodeSnapshotTable(entries: readonly SnapshotEntry[]): Uint8Array {
  const total = entries.reduce((n, e) => n + snapshotEntryBytes(e), 0);
  const out = new Uint8Array(total);
  const v = viewOf(out);
  let at = 0;
  for (const e of entries) {
    const id = encodeText(e.id);
    const name = encodeText(e.name);
    const extra = snapshotExtraBytes(e);
    setU64(v, at, e.l1TableOffset);
    v.setUint32(at + 8, e.l1Size);
    v.setUint16(at + 12, id.byteLength);
    v.setUint16(at + 14, name.byteLength);
    v.setUint32(at + 16, e.dateSeconds);
    v.setUint32(at + 20, e.dateNanoseconds);
    setU64(v, at + 24, e.vmClockNanoseconds);
    v.setUint32(at + 32, e.vmStateSize > 0xffffffff ? 0 : e.vmStateSize);
    v.setUint32(at + 36, extra);
    const x = at + SNAPSHOT_HEADER_BYTES;
    setU64(v, x, e.vmStateSize);
    setU64(v, x + 8, e.diskSize ?? 0);
    v.setBigInt64(x + 16, e.icount ?? -1n);
    if (e.unknownExtraData.byteLength) out.set(e.unknownExtraData, x + 24);
    out.set(id, x + extra);
    out.set(name, x + extra + id.byteLength);
    at += snapshotEntryBytes(e);
  }
  return out;
}
