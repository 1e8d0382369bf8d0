/**
 * The block device the NBD server serves: the `BlockImage` surface of `@qcowkit/core` (docs/core-api.md),
 * implemented by core's qcow2 and raw images and, for tests, by `MemoryDevice`.
 */
export type { BlockImage, BlockStatusExtent } from "@qcowkit/core";
