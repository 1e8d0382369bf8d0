/**
 * Everything from "@qcowkit/datafile" plus the Node file backend.
 *
 * @module @qcowkit/datafile/node
 */
export * from "./index";
export {
  FileStore,
  zeroBufferBytes,
  type FileHandleLike,
  type FileStoreOpenOptions,
  type FileStoreLockMode,
  type FileDriver,
} from "./node/file-store";
export {
  nativeAvailable,
  nativeUnavailableReason,
  nativeFs,
  setNativeEnabled,
  type NativeFs,
  type NativeFeatures,
  type NativeLockInfo,
  type FallocateMode,
} from "./node/native";
export { allocationExtents, maxExtentsPerCall, type AllocationExtent } from "./node/sparse";
export {
  lockImage,
  lockPermissions,
  probeImageLocks,
  imagePermissions,
  lockConflictHint,
  lockingUnavailableReason,
  lockingUnavailableError,
  blockPermission,
  allBlockPermissions,
  lockPermissionBase,
  lockSharedBase,
  type ImageLock,
  type ImageLockError,
  type ImageLockOptions,
  type LockTarget,
} from "./node/lock";
export { removeFile } from "./node/remove-file";
export { fromSystemError, systemErrorText } from "./node/system-error";
export { nodeFetch, type NodeFetchOptions } from "./node/http-fetch";
