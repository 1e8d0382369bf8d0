/**
 * @module @qcowkit/refcount
 */
export { Refcounts } from "./refcounts";
export type { RefcountOptions } from "./refcounts";
export { BlockCache } from "./block-cache";
export type { CachedBlock } from "./block-cache";
export { RangeList } from "./range-list";
