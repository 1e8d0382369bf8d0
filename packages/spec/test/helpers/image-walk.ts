/// <reference types="node" />
/** A tiny read-only walker over a whole qcow2 file in memory, built on the codecs under test. */
import { readFileSync } from "node:fs";
import {
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTL2,
  decodeImageHeader,
  getRefcount,
  l1EntryL2Offset,
  l2BitmapAlloc,
  l2BitmapZero,
  l2EntriesPerTable,
  l2Hi,
  l2Lo,
  refcountBlockEntries,
  reftableEntryOffset,
  viewOf,
  type ImageHeader,
  type L2Format,
} from "../../src/index";

export interface WalkedImage {
  bytes: Uint8Array;
  img: ImageHeader;
  clusterSize: number;
  format: L2Format;
}

export function loadImage(path: string): WalkedImage {
  const bytes = new Uint8Array(readFileSync(path));
  const img = decodeImageHeader(bytes);
  const h = img.header;
  return {
    bytes,
    img,
    clusterSize: 2 ** h.clusterBits,
    format: {
      extendedL2: (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n,
      dataFile: (h.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n,
    },
  };
}

export interface L2Slot {
  guestOffset: number;
  l2Offset: number;
  index: number;
  hi: number;
  lo: number;
  allocBits: number;
  zeroBits: number;
}

/** Every L2 entry reachable from the active L1 table (allocated L2 tables only). */
export function l2Slots(w: WalkedImage): L2Slot[] {
  const h = w.img.header;
  const l1 = viewOf(w.bytes.subarray(h.l1TableOffset, h.l1TableOffset + h.l1Size * 8));
  const perTable = l2EntriesPerTable(h.clusterBits, w.format.extendedL2);
  const out: L2Slot[] = [];
  for (let i = 0; i < h.l1Size; i++) {
    const l2Offset = l1EntryL2Offset(l1, i);
    if (l2Offset === 0) continue;
    const l2 = viewOf(w.bytes.subarray(l2Offset, l2Offset + w.clusterSize));
    for (let j = 0; j < perTable; j++) {
      const guestOffset = (i * perTable + j) * w.clusterSize;
      if (guestOffset >= h.size) break;
      out.push({
        guestOffset,
        l2Offset,
        index: j,
        hi: l2Hi(l2, j, w.format.extendedL2),
        lo: l2Lo(l2, j, w.format.extendedL2),
        allocBits: w.format.extendedL2 ? l2BitmapAlloc(l2, j) : 0,
        zeroBits: w.format.extendedL2 ? l2BitmapZero(l2, j) : 0,
      });
    }
  }
  return out;
}

/** The refcount of host cluster `cluster` of the qcow2 file. */
export function refcountOf(w: WalkedImage, cluster: number): number {
  const h = w.img.header;
  const perBlock = refcountBlockEntries(h.clusterBits, h.refcountOrder);
  const tableIndex = Math.floor(cluster / perBlock);
  if (tableIndex >= (h.refcountTableClusters * w.clusterSize) / 8) return 0;
  const table = viewOf(w.bytes.subarray(h.refcountTableOffset, h.refcountTableOffset + h.refcountTableClusters * w.clusterSize));
  const block = reftableEntryOffset(table, tableIndex);
  if (block === 0) return 0;
  return getRefcount(w.bytes.subarray(block, block + w.clusterSize), cluster % perBlock, h.refcountOrder);
}
