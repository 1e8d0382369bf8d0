/**
 * The allocation map as qemu-img map (QEMU 7.2) reports it: for each run of guest bytes, the first layer of
 * the backing chain that allocates it (`depth`), whether it is allocated at all (`present`), reads as zeros,
 * holds data, and where (host `offset` in `filename`).
 *
 * The engine's block status already has what QEMU's block layer adds from the files (holes of raw files,
 * holes under metadata-preallocated clusters); this is its presentation as qemu-img map entries.
 */
import type { BlockImage, BlockStatusExtent } from "./block-image";
import { Qcow2Image } from "./qcow2-image";

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Host offset, when QEMU knows one. */
  offset?: number;
  /** The file holding the data at `offset`. */
  filename?: string;
  /** Compressed clusters (no offset; qemu-img map's human output refuses them). */
  compressed?: boolean;
}

/** The layers of a chain: the image, its backing image, ... */
export function chainLayers(image: BlockImage): BlockImage[] {
  const out: BlockImage[] = [];
  let cur: BlockImage | null = image;
  while (cur) {
    out.push(cur);
    cur = cur instanceof Qcow2Image ? cur.backing : null;
  }
  return out;
}

function toEntry(x: BlockStatusExtent): MapEntry {
  const e: MapEntry = {
    start: x.offset,
    length: x.length,
    depth: x.depth,
    present: x.present,
    zero: x.zero,
    data: x.data,
  };
  if (x.hostOffset !== undefined) e.offset = x.hostOffset;
  if (x.hostOffset !== undefined && x.hostFile !== undefined) e.filename = x.hostFile;
  if (x.compressed) e.compressed = true;
  return e;
}

/** The map entries of [start, start + length), not merged across calls (see `entryMergeable`). */
export async function mapExtents(image: BlockImage, start: number, length: number): Promise<MapEntry[]> {
  if (length <= 0) return [];
  return (await image.blockStatus(start, length)).map(toEntry);
}

/** qemu-img map's merge rule for two consecutive entries. */
export function entryMergeable(cur: MapEntry, next: MapEntry): boolean {
  if (cur.length === 0) return false;
  if (
    cur.zero !== next.zero ||
    cur.data !== next.data ||
    cur.depth !== next.depth ||
    cur.present !== next.present ||
    (cur.filename === undefined) !== (next.filename === undefined) ||
    (cur.offset === undefined) !== (next.offset === undefined)
  ) {
    return false;
  }
  if (cur.filename !== undefined && cur.filename !== next.filename) return false;
  if (cur.offset !== undefined && cur.offset + cur.length !== next.offset) return false;
  return true;
}
