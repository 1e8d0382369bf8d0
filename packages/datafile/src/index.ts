/**
 * @qcowkit/datafile: byte stores and external data file handling, runtime-agnostic.
 * The Node file backend is in "@qcowkit/datafile/node".
 */
export { MemoryStore, isAllZero, type MemoryStoreOptions } from "./memory-store";
export {
  FaultInjectingStore,
  type CountedOperation,
  type FaultInjectingStoreOptions,
  type UnflushedKeepOptions,
} from "./fault-store";
export { BlkdebugStore, BLKDEBUG_IO_TYPES, type BlkdebugInjectError, type BlkdebugIoType } from "./blkdebug-store";
export { NullStore, NULL_CO_DEFAULT_SIZE } from "./null-store";
export {
  backingProtocol,
  checkSafeReference,
  resolveBackingFileName,
  resolveDataFileName,
  type ReferenceKind,
  type ResolvedReference,
  type SafeReferenceOptions,
} from "./resolve";
export {
  absolutePosixPath,
  directoryPrefix,
  isAbsolutePosixPath,
  normalizePosixPath,
} from "./posix-path";
export { assertByteRange, assertByteSize } from "./store-checks";
export { seededRandom } from "./seeded-random";
export type { ByteStore, StorePreallocation } from "@qcowkit/spec";
