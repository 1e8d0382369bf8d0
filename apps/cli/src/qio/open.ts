/**
 * What qio opens: a file name, or block driver options given to --image-opts or to the open command's -o
 * (see cli/block-options.ts).
 */
import type { BlkdebugLimits } from "@qcowkit/datafile";
import { parseBlockOptions, type BlkdebugNodeOptions, type BlockOptions, type QuorumOptions, type EncryptOptions, type Qcow2CacheOptions } from "../cli/block-options";

export { parseDiscard } from "../cli/block-options";

export interface OpenRequest {
  filename: string;
  format?: string;
  readOnly: boolean;
  forceShare: boolean;
  locking?: "on" | "off";
  discard: "ignore" | "unmap";
  dataFile?: string;
  backing?: string | null;
  backingFormat?: string;
  /** encrypt.* options (key secret id, format). */
  encrypt?: EncryptOptions;
  /** lazy-refcounts runtime option (the image's own setting otherwise). */
  lazyRefcounts?: boolean;
  /** overlap-check.inactive-l2 runtime option (on with overlap-check=all). */
  overlapCheckInactiveL2?: boolean;
  /** qcow2's cache options. */
  qcow2Cache?: Qcow2CacheOptions;
  /** node-name given when opened (reopen refuses to change it). */
  nodeName?: string;
  /** The children's node names given when opened (file, backing, data-file: reopen refuses to change them). */
  childNodeNames?: Record<string, string>;
  /** The file child is an image of its own, or the format a filter over one (see cli/layered-options.ts). */
  fileImage?: BlockOptions;
  /** file.driver=quorum: its children and threshold. */
  fileQuorum?: QuorumOptions;
  /** backing.encrypt.* options. */
  backingEncrypt?: EncryptOptions;
  /** -s: writes go to a temporary overlay, deleted on close; the image itself is only read. */
  snapshot?: boolean;
  /** blkdebug nodes under the image file and over the data file. */
  fileBlkdebug?: BlkdebugNodeOptions;
  dataFileBlkdebug?: BlkdebugNodeOptions;
  /** A blkdebug node over the image: its request limits. */
  topBlkdebug?: BlkdebugLimits;
  /** Described by --image-opts: QEMU names no device when the open fails ("can't open: ..."). */
  imageOpts?: boolean;
}

/** Apply "key=value,..." to `req` (`imageOpts`: the string is the whole description, as with --image-opts). */
export function applyBlockOptions(req: OpenRequest, text: string, imageOpts: boolean, onWarning?: (w: string) => void): OpenRequest {
  const o = parseBlockOptions(text, {
    imageOpts,
    bareWord: "boolean",
    ...(req.format !== undefined ? { defaultFormat: req.format } : {}),
    ...(onWarning ? { onWarning } : {}),
  });
  const out: OpenRequest = { ...req };
  if (o.filename !== undefined) out.filename = o.filename;
  if (o.format !== undefined) out.format = o.format;
  if (o.dataFile !== undefined) out.dataFile = o.dataFile;
  if (o.backing !== undefined) out.backing = o.backing;
  if (o.backingFormat !== undefined) out.backingFormat = o.backingFormat;
  if (o.readOnly !== undefined) out.readOnly = o.readOnly;
  if (o.forceShare !== undefined) out.forceShare = o.forceShare;
  if (o.locking !== undefined) out.locking = o.locking;
  if (o.discard !== undefined) out.discard = o.discard;
  if (o.encrypt !== undefined) out.encrypt = o.encrypt;
  if (o.backingEncrypt !== undefined) out.backingEncrypt = o.backingEncrypt;
  if (o.lazyRefcounts !== undefined) out.lazyRefcounts = o.lazyRefcounts;
  if (o.overlapCheckInactiveL2 !== undefined) out.overlapCheckInactiveL2 = o.overlapCheckInactiveL2;
  if (o.nodeName !== undefined) out.nodeName = o.nodeName;
  if (o.childNodeNames !== undefined) out.childNodeNames = { ...out.childNodeNames, ...o.childNodeNames };
  if (o.fileImage !== undefined) out.fileImage = o.fileImage;
  if (o.fileQuorum !== undefined) out.fileQuorum = o.fileQuorum;
  if (o.qcow2Cache !== undefined) out.qcow2Cache = o.qcow2Cache;
  if (o.fileBlkdebug !== undefined) out.fileBlkdebug = o.fileBlkdebug;
  if (o.dataFileBlkdebug !== undefined) out.dataFileBlkdebug = o.dataFileBlkdebug;
  if (o.topBlkdebug !== undefined) out.topBlkdebug = o.topBlkdebug;
  if (imageOpts) out.imageOpts = true;
  return out;
}
