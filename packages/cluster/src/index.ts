/**
 * @module @qcowkit/cluster
 */
export { L1Table } from "./l1-table";
export { L2Cache } from "./l2-cache";
export type { L2Table } from "./l2-cache";
export { ClusterMap } from "./mapping";
export type { MappedRun } from "./mapping";
export {
  classifyL2Entry,
  encodeL2Entry,
  entryHasHostCluster,
  entryIsAllocated,
  readL2Entry,
  referencedClusters,
  setL2Copied,
  writeL2Bitmap,
  writeL2Entry,
} from "./entry";
export type { ClusterGeometry, CompressedLocation, L2Entry, L2EntryKind, L2EntryValue } from "./entry";
export { ClusterWriter } from "./writer";
export type { ClusterAllocator, CowFill, CowSource, ExtendedWritePlan, ReferenceOrdering, StandardWritePlan } from "./writer";
