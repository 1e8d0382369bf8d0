/**
 * What every cluster of an image's files holds, from one consistency check: the check already walks every
 * structure and counts each reference, so the map takes its kinds from those counts (no second walk that
 * could disagree with the check). Clusters with a refcount but no reference are leaked, clusters with
 * neither are free, and clusters claimed by two different structures are overlaps. The result is
 * run-length encoded, so a multi-GiB file of one kind is one run.
 */
import { checkImage, type CheckReport, type ClusterUse } from "./check";
import type { Qcow2Image } from "./qcow2-image";

export type ClusterKind = ClusterUse | "free" | "leaked" | "overlap";

/** Kinds by code (0 = free); the order is the legend's. */
export const CLUSTER_KINDS: readonly ClusterKind[] = [
  "free",
  "header",
  "l1",
  "l2",
  "refcount-table",
  "refcount-block",
  "snapshot-table",
  "snapshot-l1",
  "data",
  "compressed",
  "bitmap-directory",
  "bitmap-table",
  "bitmap-data",
  "encryption",
  "leaked",
  "overlap",
  "data-file",
];

/** A run of `count` clusters of one kind starting at cluster `start`. */
export interface ClusterRun {
  start: number;
  count: number;
  kind: ClusterKind;
}

export interface ClusterMapFile {
  /** The file's name (the qcow2 file, then its external data file). */
  name: string;
  /** Clusters covering the file (the last may be partial). */
  clusters: number;
  /** Runs covering [0, clusters) in order. */
  runs: ClusterRun[];
}

export interface ClusterMap {
  clusterSize: number;
  /** The qcow2 file, then the external data file when the image has one. */
  files: ClusterMapFile[];
  /** The check that produced the map (what `qemu-img check` prints, through `checkReportHuman`). */
  report: CheckReport;
}

/** Clusters past this many per file are not classified (the check's own limit is 2^31). */
const MAX_MAPPED_CLUSTERS = 2 ** 30;

class KindArray {
  readonly codes: Uint8Array;
  constructor(readonly clusters: number) {
    this.codes = new Uint8Array(Math.min(clusters, MAX_MAPPED_CLUSTERS));
  }

  mark(kind: ClusterKind, first: number, last: number): void {
    const code = CLUSTER_KINDS.indexOf(kind);
    const overlap = CLUSTER_KINDS.indexOf("overlap");
    const end = Math.min(last + 1, this.codes.length);
    for (let c = Math.max(0, first); c < end; c++) {
      const old = this.codes[c]!;
      this.codes[c] = old === 0 || old === code ? code : overlap;
    }
  }

  runs(): ClusterRun[] {
    const runs: ClusterRun[] = [];
    const codes = this.codes;
    for (let c = 0; c < codes.length; ) {
      const code = codes[c]!;
      let e = c + 1;
      while (e < codes.length && codes[e] === code) e++;
      runs.push({ start: c, count: e - c, kind: CLUSTER_KINDS[code]! });
      c = e;
    }
    return runs;
  }
}

/**
 * Check `image` (opened read-only in check mode, as for qemu-img check) and classify every cluster of its
 * qcow2 file and external data file.
 */
export async function clusterMap(image: Qcow2Image): Promise<ClusterMap> {
  const cs = image.clusterSize;
  const meta = new KindArray(Math.ceil((await image.metadata.meta.size()) / cs));
  const dataStore = image.hasDataFile && image.metadata.data !== image.metadata.meta ? image.metadata.data : undefined;
  const data = dataStore ? new KindArray(Math.ceil((await dataStore.size()) / cs)) : undefined;
  const report = await checkImage(image, {
    onReference(kind, offset, size) {
      const target = kind === "data-file" ? data : meta;
      target?.mark(kind, Math.floor(offset / cs), Math.floor((offset + size - 1) / cs));
    },
    onLeak(cluster) {
      meta.mark("leaked", cluster, cluster);
    },
  });
  const files: ClusterMapFile[] = [{ name: image.metadata.meta.name, clusters: meta.clusters, runs: meta.runs() }];
  if (data && dataStore) files.push({ name: dataStore.name, clusters: data.clusters, runs: data.runs() });
  return { clusterSize: cs, files, report };
}
