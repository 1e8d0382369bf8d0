/**
 * @module @qcowkit/spec
 */
export { Qcow2Error, isQcow2Error, errnoText } from "./errors";
export type { Qcow2ErrorCode, Errno, Qcow2ErrorOptions } from "./errors";
export type { ByteStore, StorePreallocation } from "./byte-store";
export { viewOf, getU64, setU64, encodeText, decodeText, alignUp, isAligned, isAllZero, firstNonZeroByte, rechunk } from "./bytes";
export * from "./constants";
export { decodeHeader, encodeHeader, encodeHeaderFields, encodedHeaderLength, HEADER_LAYOUT, HEADER_PROBE_BYTES } from "./header";
export type { HeaderFieldName, Qcow2Header } from "./header";
export {
  decodeFeatureTable,
  encodeFeatureTable,
  unsupportedFeaturesMessage,
  QEMU_FEATURE_TABLE,
  FEATURE_TABLE_ENTRY_BYTES,
} from "./feature-table";
export type { FeatureName, FeatureKind } from "./feature-table";
export {
  readRawExtensions,
  decodeExtensions,
  encodeExtensions,
  alignExtension,
  checkExtensions,
  scanExtensionArea,
} from "./extensions";
export type {
  HeaderExtensions,
  BitmapsExtension,
  CryptoHeaderExtension,
  RawExtension,
  ExtensionContext,
} from "./extensions";
export {
  decodeImageHeader,
  encodeImageHeader,
  qemuWritesFeatureTable,
  decodeBackingFileName,
  extensionAreaEnd,
} from "./image-header";
export type { ImageHeader } from "./image-header";
export {
  l2EntryBytes,
  l2EntriesPerTable,
  bytesPerL2Table,
  l1EntriesForSize,
  refcountBlockEntries,
  maxRefcount,
  subclusterSize,
  sizeToClusters,
} from "./geometry";
export {
  L1_ENTRY_BYTES,
  l1EntryL2Offset,
  l1EntryCopied,
  l1EntryHasReservedBits,
  l1EntryRaw,
  setL1Entry,
} from "./l1-entry";
export {
  SubclusterType,
  l2EntryPosition,
  l2Hi,
  l2Lo,
  l2HostOffset,
  l2IsCompressed,
  l2IsCopied,
  l2HasZeroFlag,
  l2HasReservedBits,
  l2BitmapAlloc,
  l2BitmapZero,
  classifyCluster,
  classifySubcluster,
  setL2Entry,
  setL2Raw,
  setL2Bitmap,
  l2EntryRaw,
  subclusterMask,
} from "./l2-entry";
export type { L2Format, ClusterKind } from "./l2-entry";
export { compressedOffsetBits, decodeCompressedDescriptor, encodeCompressedDescriptor } from "./compressed";
export type { CompressedDescriptor } from "./compressed";
export {
  REFTABLE_ENTRY_BYTES,
  reftableEntryOffset,
  reftableEntryHasReservedBits,
  setReftableEntry,
  getRefcount,
  refcountDecimal,
  setRefcount,
  firstUsedRefcount,
  fillRefcounts,
} from "./refcount-entry";
export {
  SNAPSHOT_HEADER_BYTES,
  decodeSnapshotEntry,
  decodeSnapshotTable,
  encodeSnapshotTable,
  snapshotEntryBytes,
} from "./snapshot";
export type { SnapshotEntry } from "./snapshot";
export {
  BITMAP_FLAG_IN_USE,
  BITMAP_FLAG_AUTO,
  BITMAP_FLAG_EXTRA_DATA_COMPATIBLE,
  BITMAP_FLAGS_KNOWN,
  BITMAP_TYPE_DIRTY_TRACKING,
  BITMAP_DIRECTORY_ENTRY_HEADER_BYTES,
  decodeBitmapDirectory,
  encodeBitmapDirectory,
  bitmapDirectoryEntryBytes,
  bitmapTableEntries,
  bitmapTableEntryOffset,
  bitmapTableEntryAllOnes,
  bitmapTableEntryHasReservedBits,
  setBitmapTableEntry,
} from "./bitmap";
export type { BitmapDirectoryEntry } from "./bitmap";
export { validateImageHeader, validateTable } from "./validate";
export { openImageHeader } from "./open-header";
export type { OpenedImageHeader } from "./open-header";
export type { HeaderValidationOptions, HeaderValidationResult } from "./validate";
