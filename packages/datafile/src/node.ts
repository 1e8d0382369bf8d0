/**
 * @qcowkit/datafile/node: everything from "@qcowkit/datafile" plus the Node file backend.
 */
export * from "./index";
export { FileStore, zeroBufferBytes, type FileHandleLike, type FileStoreOpenOptions } from "./node/file-store";
export { removeFile } from "./node/remove-file";
export { fromSystemError, systemErrorText } from "./node/system-error";
