/**
 * @module @qcowkit/cluster
 */
export { L1Table } from "./l1-table";
export { L2Cache } from "./l2-cache";
export type { L2Table } from "./l2-cache";
export { ClusterMap } from "./mapping";
export type { ClusterGeometry, MappedRun } from "./mapping";
