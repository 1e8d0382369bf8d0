/**
 * falloc/full preallocation of a qcow2 image without a data file, as QEMU's truncate path does it (used by
 * create and by resize): refcount structures able to cover the whole new area are built first at the end of
 * the used part of the file (a new refcount table is always written), the data clusters follow them and are
 * reserved in one piece, then L2 tables are allocated and the new clusters linked.
 */
import type { Refcounts } from "@qcowkit/refcount";
import type { EngineImage } from "./engine-image";

export async function preallocateHostSpace(
  image: EngineImage,
  fromGuestOffset: number,
  toGuestOffset: number,
  mode: "falloc" | "full",
  /** Extended L2: mark every subcluster of the new clusters allocated (when the new area must hide a backing file). */
  allocateSubclusters = false,
): Promise<void> {
  const cs = image.clusterSize;
  const refcounts: Refcounts = image.metadata.refcounts;
  await image.metadata.writeback();
  await image.metadata.commitRefcounts("settle", { flush: false });
  // The used part of the file ends after the last cluster with a reference.
  const fileClusters = Math.ceil((await image.metadata.meta.size()) / cs);
  const lastCluster = await refcounts.lastReferenced(fileClusters);
  const usedClusters = lastCluster >= 0 ? lastCluster + 1 : fileClusters;
  const firstGuestCluster = Math.floor(fromGuestOffset / cs);
  const dataClusters = Math.ceil(toGuestOffset / cs) - firstGuestCluster;
  if (dataClusters <= 0) return;
  // An overestimate: the L2 tables only need to be covered, and the range may straddle one more table.
  const l2Tables = Math.ceil(dataClusters / image.metadata.map.l2Entries) + 1;
  const allocationStart = await refcounts.refcountArea(usedClusters, dataClusters + l2Tables, true);
  await refcounts.allocateAt(allocationStart, dataClusters);
  await image.metadata.commitRefcounts("before-reference");
  const newFileSize = (allocationStart + dataClusters) * cs;
  await image.metadata.meta.resize(Math.max(await image.metadata.meta.size(), newFileSize), mode);
  await image.linkPreallocated(fromGuestOffset, toGuestOffset, allocationStart * cs, allocateSubclusters);
}
