/**
 * Byte stores and external data file handling, runtime-agnostic.
 * The Node file backend is in "@qcowkit/datafile/node"; test helpers (a fault-injecting store, a seeded
 * random generator) are in "@qcowkit/datafile/testing".
 *
 * @module @qcowkit/datafile
 */
export { MemoryStore, isAllZero, type MemoryStoreOptions } from "./memory-store";
export { BlkdebugStore, BLKDEBUG_IO_TYPES, type BlkdebugInjectError, type BlkdebugIoType } from "./blkdebug-store";
export {
  backingProtocol,
  checkSafeReference,
  referenceLeavingFolder,
  resolveBackingFileName,
  resolveDataFileName,
  type ReferenceKind,
  type ResolvedReference,
  type SafeReferenceOptions,
} from "./resolve";
export { directoryPrefix } from "./posix-path";
export { printableName } from "./printable-name";
export type { ByteStore, StorePreallocation } from "@qcowkit/spec";
