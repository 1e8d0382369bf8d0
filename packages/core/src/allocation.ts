/** Whole-range allocation maps from stores that answer in bounded pieces. */
import type { ByteStore } from "@qcowkit/spec";

export interface AllocationRun {
  offset: number;
  length: number;
  data: boolean;
}

/** The store's data/hole runs covering [offset, offset+length) completely (undefined: store cannot tell). */
export async function allocationRuns(store: ByteStore, offset: number, length: number): Promise<AllocationRun[] | undefined> {
  if (!store.allocationStatus) return undefined;
  const out: AllocationRun[] = [];
  let pos = offset;
  const end = offset + length;
  while (pos < end) {
    const runs = await store.allocationStatus(pos, end - pos);
    if (runs.length === 0) break;
    for (const r of runs) {
      const last = out[out.length - 1];
      if (last && last.data === r.data && last.offset + last.length === r.offset) last.length += r.length;
      else out.push({ ...r });
      pos = r.offset + r.length;
    }
  }
  if (pos < end) out.push({ offset: pos, length: end - pos, data: true });
  return out;
}
