/**
 * qemu-img's printed output for `map` and `check`, shared by every frontend (qimg prints it, the web page
 * shows it): the same text from the same code, so the two cannot drift apart.
 */
import type { BlockImage } from "./block-image";
import type { CheckReport } from "./check";
import { entryMergeable, mapExtents, type MapEntry } from "./map";
import { printfFixed2, type JsonValue } from "./qemu-json";

/** qemu-img map probes the block status 1 GiB at a time. */
const MAP_PROBE_BYTES = 1024 * 1024 * 1024;

/**
 * qemu-img map's entries of [start, end) as they become complete: each merged entry with the entry that
 * follows it (undefined after the last). The consumer may change `next` before asking for more (qemu-img's
 * human output does, to merge zero and unallocated runs): merging continues from it.
 */
export async function* mapEntryPairs(image: BlockImage, start: number, end: number): AsyncGenerator<[MapEntry, MapEntry | undefined]> {
  let cur: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false };
  while (cur.start + cur.length < end) {
    const offset = cur.start + cur.length;
    const extents = await mapExtents(image, offset, Math.min(MAP_PROBE_BYTES, end - offset));
    for (const next of extents) {
      if (entryMergeable(cur, next)) {
        cur.length += next.length;
        continue;
      }
      if (cur.length > 0) yield [cur, next];
      cur = next;
    }
  }
  yield [cur, undefined];
}

/** One entry of `qemu-img map --output=json`, with the separator that follows it (",\n", or "]\n" after the last). */
export function mapJsonEntry(e: MapEntry, last: boolean): string {
  let line =
    `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, ` +
    `"zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) line += `, "offset": ${e.offset}`;
  line += "}";
  return last ? `${line}]\n` : `${line},\n`;
}

/** The whole of `qemu-img map --output=json` for an image. */
export async function mapJson(image: BlockImage): Promise<string> {
  let out = "[";
  for await (const [entry, next] of mapEntryPairs(image, 0, image.virtualSize)) out += mapJsonEntry(entry, next === undefined);
  return out;
}

/** QAPI ImageCheck (`qemu-img check --output=json`): counters that are 0 are left out. */
export function checkReportJson(filename: string, r: CheckReport): JsonValue {
  const optional = (n: number) => (n !== 0 ? n : undefined);
  return {
    filename,
    format: "qcow2",
    "check-errors": r.checkErrors,
    "image-end-offset": optional(r.imageEndOffset),
    corruptions: optional(r.corruptions),
    leaks: optional(r.leaks),
    "corruptions-fixed": optional(r.corruptionsFixed),
    "leaks-fixed": optional(r.leaksFixed),
    "total-clusters": optional(r.totalClusters),
    "allocated-clusters": optional(r.allocatedClusters),
    "fragmented-clusters": optional(r.fragmentedClusters),
    "compressed-clusters": optional(r.compressedClusters),
  };
}

/** qemu-img check's human summary (dump_human_image_check), as printed on stdout. */
export function checkReportHuman(r: CheckReport): string {
  let s = "";
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    s += "No errors were found on the image.\n";
  } else {
    if (r.corruptions) {
      s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (r.leaks) {
      s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (r.checkErrors) s += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    const pct = (n: number, d: number) => printfFixed2((n * 100) / d);
    s +=
      `${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)}% allocated, ` +
      `${pct(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${pct(r.compressedClusters, r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) s += `Image end offset: ${r.imageEndOffset}\n`;
  return s;
}
