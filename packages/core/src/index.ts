/**
 * @module @qcowkit/core
 */
export { Qcow2Image } from "./qcow2-image";
export type { Qcow2OpenOptions } from "./qcow2-image";
export { StoreSlice, type StoreRun, type Payload } from "./store-slice";
export type {
  BlockImage,
  BlockStatusExtent,
  WriteOptions,
  ZeroOptions,
  ResizeOptions,
  Preallocation,
  BitmapInfo,
} from "./block-image";
export type { ImageResolver, ResolveContext } from "./resolver";
export { getCodec, registerCodec, registerCodecLoader, zlibCodec } from "./compression";
export type { CompressionCodec } from "./compression";
export type { SnapshotInfo } from "./snapshots";
export { checkFailureText } from "./check";
export type { CheckReport, CheckOptions, CheckMessageKind, CheckFailure, ClusterUse } from "./check";
export { clusterMap } from "./cluster-map";
export { headerView } from "./header-view";
export type { HeaderView, FeatureBit, HeaderExtensionView } from "./header-view";
export type { ClusterMap, ClusterMapFile, ClusterRun, ClusterKind } from "./cluster-map";
export type { CheckResult, RepairMode, RepairOptions } from "./repair";
export { createQcow2, validateCreateOptions } from "./create";
export type { Qcow2CreateOptions, CreateContext } from "./create";
export { RawImage } from "./raw-image";
export { LuksImage, type LuksOpenOptions, type LuksImageCreateOptions } from "./luks-image";
export { amendEncryption } from "./encryption-amend";
export { readVmState, writeVmState } from "./vm-state";
export type { LuksAmendOptions } from "./crypto/luks-keyslots";
export { ImageStore } from "./image-store";
export { CompressFilter } from "./compress-filter";
export { probeFormatName, type ProbedFormat } from "./probe";
export { imageInfo } from "./info";
export type { ImageInfo, ImageInfoOptions, ImageInfoSpecificQcow2, Qcow2BitmapInfo, SnapshotInfoQapi } from "./info";
export { mapExtents } from "./map";
export type { MapEntry } from "./map";
export { toQemuJson } from "./qemu-json";
export type { JsonValue } from "./qemu-json";
export { mapEntryPairs, mapJsonEntry, mapJson, checkReportJson, checkReportHuman } from "./qemu-output";
export type { NewSnapshotOptions } from "./snapshot-ops";
export { amendQcow2 } from "./amend";
export type { AmendOptions } from "./amend";
export { commitLayers } from "./commit";
export type { CommitOptions } from "./commit";
export { changeBackingFile, copyBackingDifferences } from "./rebase";
export type { RebaseOptions } from "./rebase";
export { measureImage } from "./measure";
export type { MeasureTarget, MeasureResult } from "./measure";
export {
  listSnapshots,
  findSnapshot,
  createSnapshot,
  applySnapshot,
  deleteSnapshot,
  addBitmap,
  removeBitmap,
  clearBitmap,
  enableBitmap,
  disableBitmap,
  mergeBitmap,
  listBitmaps,
  bitmapStatus,
  checkImage,
  repairImage,
  checkAndRepairImage,
} from "./qcow2-ops";
export type { AddBitmapOptions } from "./bitmaps";
export { compareImages } from "./compare";
export type { CompareEvent, CompareOptions, CompareResult } from "./compare";
export { convertImages, ConvertFailure } from "./convert";
export type { ConvertFailureKind, ConvertOptions } from "./convert";
export type { SnapshotSelector } from "./snapshot-view";
export { NbdClient } from "./nbd/client";
export type { NbdClientOptions, NbdStatusRun } from "./nbd/client";
export type { NbdExportInfo, NbdHandshakeOptions } from "./nbd/handshake";
export type { NbdTransport, NbdReceiver } from "./nbd/transport";
export { NbdImage } from "./nbd/nbd-image";
export type { NbdImageOptions } from "./nbd/nbd-image";
export { NbdStore } from "./nbd/nbd-store";
export { parseNbdFilename } from "./nbd/uri";
export type { NbdAddress, NbdLocation } from "./nbd/uri";
export type { EncryptionOpenOptions, EncryptionFormat, EncryptionInfo } from "./crypto/image-encryption";
export type { EncryptionCreateOptions } from "./crypto/create-encryption";
export type { LuksInfo, LuksSlotInfo, LuksCreateOptions } from "./crypto/luks";
export { validateEncryptionCreateOptions } from "./crypto/create-encryption";
export { registerAesEngine } from "./crypto/aes-engine";
export type { AesBlocks, AesEngine } from "./crypto/aes-engine";
export { imageToStream } from "./stream-out";
export type { ImageToStreamOptions } from "./stream-out";
export { concatImages } from "./concat-image";
export { streamToImage, probeStream, StreamBytes } from "./stream-in";
export { type OperationOptions } from "./operation";
export type { StreamToImageOptions, StreamToImageResult } from "./stream-in";
export { type RemoteName } from "./remote/remote-name";
