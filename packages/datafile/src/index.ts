/**
 * Byte stores and external data file handling, runtime-agnostic.
 * The Node file backend is in "@qcowkit/datafile/node"; test helpers (a fault-injecting store, a seeded
 * random generator) are in "@qcowkit/datafile/testing".
 *
 * @module @qcowkit/datafile
 */
export { MemoryStore, isAllZero, type MemoryStoreOptions } from "./memory-store";
export {
  BlkdebugStore,
  BLKDEBUG_EVENTS,
  BLKDEBUG_IO_TYPES,
  checkBlkdebugLimits,
  parseBlkdebugConfig,
  type BlkdebugConfig,
  type BlkdebugInjectError,
  type BlkdebugIoType,
  type BlkdebugLimits,
  type BlkdebugSetState,
} from "./blkdebug-store";
export { BlobStore, type BlobLike } from "./blob-store";
export { SyncHandleStore, type SyncAccessHandleLike } from "./sync-handle-store";
export { NullStore, NULL_CO_DEFAULT_SIZE } from "./null-store";
export { QuorumStore } from "./quorum-store";
export {
  backingProtocol,
  checkSafeReference,
  referenceLeavingFolder,
  imageDisplayName,
  imageFilePath,
  resolveBackingFileName,
  resolveDataFileName,
  type ReferenceKind,
  type ResolvedReference,
  type SafeReferenceOptions,
} from "./resolve";
export { directoryPrefix } from "./posix-path";
export { printableName } from "./printable-name";
export type { ByteStore, StorePreallocation } from "@qcowkit/spec";
export {
  RemoteStore,
  type RemoteFetch,
  type RemoteIdentity,
  type RemoteResponse,
  type RemoteSigner,
  type RemoteStoreOptions,
} from "./remote-store";
export {
  isS3Name,
  openS3Store,
  parseS3Name,
  s3ObjectUrl,
  s3Signer,
  uploadS3Object,
  type S3Config,
  type S3Location,
  type S3UploadOptions,
  type S3UploadResult,
  type UploadFetch,
} from "./s3";
