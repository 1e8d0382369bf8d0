/**
 * `@qcowkit/core/internal`: helpers qcowkit's own frontends (qimg, qio, qnbd) share with the core: QEMU's text
 * formatting (the qdict dump order, printf's %0.2f), option and name checks the command lines make before opening,
 * constants of QEMU's messages and chunk sizes, and engine pieces behind single commands (make-empty, snapshot
 * views, the VM state offset). Not part of the public API: names here may change in any release. Everything a
 * library user needs is exported from `@qcowkit/core`, `@qcowkit/core/node` or `@qcowkit/core/browser`.
 *
 * (This comment carries no internal tag: the declaration build strips what does, and it leads the first export.)
 *
 * @module @qcowkit/core/internal
 */
export { AMEND_BACKING_HINT } from "./amend";
export { mergeExtents } from "./block-image";
export { CLUSTER_KINDS } from "./cluster-map";
export { makeEmpty } from "./commit";
export { tableAesEngine } from "./crypto/aes-engine";
export { qcow2SpecificInfo, readBitmapInfo } from "./info";
export { LUKS_KEY_REQUIRED } from "./luks-image";
export { entryMergeable } from "./map";
export { persistentBitmapsSize, qcow2PreallocatedSize } from "./measure";
export { displayName as nbdDisplayName, isNbdFilename } from "./nbd/uri";
export { abortError } from "./operation";
export { PROBE_BYTES } from "./probe";
export { dumpHuman, jsonString, printfFixed2, qdictBucket, qdictEntries, toQemuJsonLine } from "./qemu-json";
export { REBASE_CHUNK_BYTES } from "./rebase";
export { isRemoteName, parseRemoteName, remoteFromOptions } from "./remote/remote-name";
export { checkExitCode } from "./repair";
export { findSnapshotByIdAndName } from "./qcow2-ops";
export { loadSnapshotReadOnly } from "./snapshot-view";
export { readSnapshotTable } from "./snapshots";
export { readQcow2StreamHeader } from "./stream-in";
export { vmStateOffset } from "./vm-state";
