/**
 * Opening an image for a command: the format as given (-f) or probed, QEMU's warning for a probed raw image
 * opened for writing, engine warnings passed through, open failures prefixed the way the tool prefixes
 * them ("Could not open 'x': ..." for qemu-img, "can't open device x: ..." for qemu-io).
 */
import { CompressFilter, ImageStore, openImage, type BlockImage, type JsonValue, type OpenImageOptions } from "@qcowkit/core/node";
import { isRemoteName, toQemuJsonLine } from "@qcowkit/core/internal";
import { readFileSync } from "node:fs";
import { BlkdebugStore, NullStore, QuorumStore, parseBlkdebugConfig, type BlkdebugConfig, type BlkdebugLimits, type ByteStore } from "@qcowkit/datafile";
import { withBlkdebugLimits } from "./blkdebug-limits";
import { Qcow2Error, errnoText, type Errno } from "@qcowkit/spec";
import {
  blockOptionsFromPairs,
  checkQcow2Cache,
  parseBlockOptions,
  type BlkdebugNodeOptions,
  type BlockOptions,
  type EncryptOptions,
  type NullCoOptions,
  type Qcow2CacheOptions,
  type QuorumOptions,
} from "./block-options";
import { FileStore, type FileDriver } from "@qcowkit/datafile/node";
import { jsonFilenameOptions } from "./json-filename";
import { isFilterDriver, isProtocolDriver } from "./layered-options";
import { encryptOpenOptions } from "./secrets";
import { programNames } from "./program";
import { CliError, errorText } from "./errors";

export interface CliOpenOptions {
  format?: string;
  readOnly: boolean;
  /** -U: do not take the image lock. */
  forceShare?: boolean;
  /** file.locking: "off" takes no image lock. */
  locking?: "on" | "off";
  /** Metadata only (qemu-img info): neither the data file nor the backing chain are opened. */
  noIo?: boolean;
  /** Use this external data file instead of the stored name. */
  dataFile?: string;
  /** null: open without the backing chain. */
  backing?: string | null;
  backingFormat?: string;
  /** What discard requests do (qemu-io -d); the engine's default otherwise. */
  discard?: "ignore" | "unmap";
  /** Receives warning lines (printed as they come). */
  onWarning: (line: string) => void;
  /** Program name put before the engine's "warning: ..." lines (default "qimg"). */
  program?: string;
  /** Text before the engine's message when the open fails (default "Could not open 'NAME': "). */
  errorPrefix?: string;
  /** Exit code when the open fails. */
  exitCode?: number;
  /** Open for check/repair (qemu-img check): a corrupt image may be opened read-write, no dirty repair. */
  checkMode?: boolean;
  /** encrypt.* options (the key secret's id is looked up among the --object secrets). */
  encrypt?: EncryptOptions;
  /** backing.encrypt.* options. */
  backingEncrypt?: EncryptOptions;
  /** False for an image this command has just created: no warnings about the names it stores (see core). */
  warnOutsideReferences?: boolean;
  /** qcow2's lazy-refcounts runtime option. */
  lazyRefcounts?: boolean;
  /** qcow2's overlap-check.inactive-l2 runtime option. */
  overlapCheckInactiveL2?: boolean;
  /** The data file is a null-co node with these options. */
  dataFileNullCo?: NullCoOptions;
  /** The options of a null-co image. */
  nullCo?: NullCoOptions;
  /** The data file is opened under blkdebug with these rules. */
  dataFileBlkdebug?: BlkdebugNodeOptions;
  /** The image file is opened under blkdebug with these rules (merged with those of a `blkdebug:` name). */
  fileBlkdebug?: BlkdebugNodeOptions;
  /** A blkdebug node over the image with these request limits. */
  topBlkdebug?: BlkdebugLimits;
  /** qcow2's cache options: checked against the image (l2-cache-entry-size against its cluster size). */
  qcow2Cache?: Qcow2CacheOptions;
  /** The file child is an image of its own (file.driver=qcow2), or `format` is a filter over it (compress). */
  fileImage?: BlockOptions;
  /** The file child is a quorum of files. */
  fileQuorum?: QuorumOptions;
}

export { cliOpenDefaults } from "./open-defaults";
import { cliOpenDefaults } from "./open-defaults";

/** QEMU's warning when a raw image was probed and is opened for writing (3 lines, on stderr). */
export function probedRawWarning(filename: string): string {
  return (
    `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
    "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
    "         Specify the 'raw' format explicitly to remove the restrictions."
  );
}

/**
 * `blkdebug:CONFIG:FILE` (QEMU's name of a blkdebug node over FILE, CONFIG its rules file, possibly empty):
 * the file's name and the node's options, or undefined for another name.
 */
export function parseBlkdebugFilename(filename: string): { file: string; node: BlkdebugNodeOptions } | undefined {
  if (!filename.startsWith("blkdebug:")) return undefined;
  const rest = filename.slice("blkdebug:".length);
  const colon = rest.indexOf(":");
  if (colon < 0) throw new CliError("blkdebug requires both config file and image path");
  const config = rest.slice(0, colon);
  return { file: rest.slice(colon + 1), node: { injectError: [], setState: [], ...(config !== "" ? { configFile: config } : {}) } };
}

/** A blkdebug node's rules: those of its config file (read here), then those given inline. */
export function blkdebugConfig(node: BlkdebugNodeOptions): BlkdebugConfig {
  let fromFile: ReturnType<typeof parseBlkdebugConfig> = { injectError: [], setState: [] };
  if (node.configFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(node.configFile, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const errno = code !== undefined && code in errnoText ? (code as Errno) : undefined;
      throw new Qcow2Error("IO_ERROR", `Could not read blkdebug config file: ${errno ? errnoText[errno] : errorText(e)}`, errno ? { errno } : {});
    }
    fromFile = parseBlkdebugConfig(text);
  }
  const { configFile: _c, injectError, setState, ...limits } = node;
  return { ...limits, injectError: [...fromFile.injectError, ...injectError], setState: [...fromFile.setState, ...setState] };
}

/** Merge two blkdebug nodes' options (a `blkdebug:` name and file.* options): rules of both, `b`'s limits win. */
function mergeBlkdebug(a: BlkdebugNodeOptions | undefined, b: BlkdebugNodeOptions | undefined): BlkdebugNodeOptions | undefined {
  if (!a || !b) return a ?? b;
  return { ...a, ...b, injectError: [...a.injectError, ...b.injectError], setState: [...a.setState, ...b.setState] };
}

export async function openCliImage(filename: string, opts: CliOpenOptions): Promise<BlockImage> {
  // json: names of the curl driver (http/https) are remote images, which the core opens itself.
  if (filename.startsWith("json:") && !isRemoteName(filename)) return openJsonFilename(filename, opts);
  if (opts.fileImage) return openOverImage(filename, opts, opts.fileImage);
  if (opts.fileQuorum) return openOverQuorum(filename, opts, opts.fileQuorum);
  // driver=file (host_device, host_cdrom) at the top: the file's bytes as they are, nothing probed.
  if (isProtocolDriver(opts.format)) return openOnFile(filename, { ...opts, format: "raw" }, undefined, opts.format as FileDriver);
  return openOnFile(filename, opts);
}

/** openCliImage for a node over a file (or the core's other stores), or over `file` when given. */
async function openOnFile(filename: string, opts: CliOpenOptions, file?: ByteStore, fileDriver?: FileDriver): Promise<BlockImage> {
  let fileNode = opts.fileBlkdebug;
  let path = filename;
  let dataNode = opts.dataFileBlkdebug;
  let fileConfig: BlkdebugConfig | undefined;
  let dataConfig: BlkdebugConfig | undefined;
  try {
    const named = parseBlkdebugFilename(filename);
    if (named) {
      path = named.file;
      fileNode = mergeBlkdebug(named.node, fileNode);
    }
    if (fileNode) fileConfig = blkdebugConfig(fileNode);
    if (dataNode) dataConfig = blkdebugConfig(dataNode);
  } catch (e) {
    const prefix = opts.errorPrefix ?? `Could not open '${filename}': `;
    throw new CliError(`${prefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
  }
  const o: OpenImageOptions = {
    readOnly: opts.readOnly,
    // "qcow2: ..." lines go out as they are; "warning: ..." ones get the program name, as QEMU's warn_report.
    // "error: ..." lines are QEMU's error_report: the program name and the message.
    onWarning: (message) =>
      opts.onWarning(
        message.startsWith("warning: ")
          ? `${opts.program ?? programNames.qimg}: ${message}`
          : message.startsWith("error: ")
            ? `${opts.program ?? programNames.qimg}: ${message.slice("error: ".length)}`
            : message,
      ),
    ...(opts.format !== undefined ? { format: opts.format } : {}),
    ...(opts.forceShare ? { shareRW: true } : {}),
    ...(opts.locking !== undefined ? { locking: opts.locking } : {}),
    ...(opts.noIo ? { noIo: true } : {}),
    ...(opts.dataFile !== undefined ? { dataFile: opts.dataFile } : {}),
    ...(opts.backing !== undefined ? { backing: opts.backing } : {}),
    ...(opts.backingFormat !== undefined ? { backingFormat: opts.backingFormat } : {}),
    ...(opts.discard !== undefined ? { discard: opts.discard } : {}),
    ...(opts.checkMode ? { checkMode: true } : {}),
    ...(opts.warnOutsideReferences === false ? { warnOutsideReferences: false } : {}),
    ...(opts.lazyRefcounts !== undefined ? { lazyRefcounts: opts.lazyRefcounts } : {}),
    ...(opts.overlapCheckInactiveL2 ? { overlapCheckInactiveL2: true } : {}),
    ...(opts.nullCo !== undefined ? { nullCo: opts.nullCo } : {}),
    ...(opts.dataFileNullCo ? { dataFileStore: new NullStore(opts.dataFileNullCo.size, "null-co://", opts.readOnly, opts.dataFileNullCo.readZeroes) } : {}),
    ...(dataConfig ? { wrapDataFile: (store: ByteStore) => new BlkdebugStore(store, dataConfig) } : {}),
    ...(fileConfig ? { wrapFile: (store: ByteStore) => (fileStore = new BlkdebugStore(store, fileConfig)) } : {}),
    // A json: backing file name describes its node (blkdebug over the file, say): opened as a json: name.
    openBackingName: (name: string, format: string | undefined) =>
      name.startsWith("json:") && !isRemoteName(name)
        ? openCliImage(name, { readOnly: true, onWarning: opts.onWarning, ...(format !== undefined ? { format } : {}), errorPrefix: `Could not open '${name}': ` })
        : undefined,
    ...(cliOpenDefaults.safe ? { safe: true } : {}),
    ...(cliOpenDefaults.cacheSize !== undefined ? { cacheSize: cliOpenDefaults.cacheSize } : {}),
    ...(opts.encrypt ? { encrypt: encryptOpenOptions(opts.encrypt) } : {}),
    ...(opts.backingEncrypt ? { backingEncrypt: encryptOpenOptions(opts.backingEncrypt) } : {}),
    ...(file ? { file } : {}),
    ...(fileDriver ? { fileDriver } : {}),
    // One request at a time: small file I/O is cheaper done synchronously than through the thread pool.
    syncIoBytes: 64 * 1024,
  };
  let image: BlockImage;
  let fileStore: BlkdebugStore | undefined;
  try {
    // NBD names (nbd://, nbd+unix://, nbd:) are opened by the core's NBD client.
    image = await openImage(path, o);
  } catch (e) {
    const prefix = opts.errorPrefix ?? `Could not open '${filename}': `;
    throw new CliError(`${prefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
  }
  if (opts.qcow2Cache && image.format === "qcow2") {
    try {
      checkQcow2Cache(opts.qcow2Cache, image.clusterSize);
    } catch (e) {
      await closeQuietly(image);
      const prefix = opts.errorPrefix ?? `Could not open '${filename}': `;
      throw new CliError(`${prefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
    }
  }
  if (opts.topBlkdebug) image = withBlkdebugLimits(image, opts.topBlkdebug);
  // QEMU names the image by its canonical name here (an NBD export's, however it was given).
  if (opts.format === undefined && image.format === "raw" && !opts.readOnly) opts.onWarning(probedRawWarning(image.filename));
  if (fileStore) blkdebugNodes.set(image, fileStore);
  return image;
}

/**
 * A format over an image (file.driver=qcow2: its file is the other image's guest disk) or the compress filter
 * over one: the child opens first, with the parent's access mode; the parent closes it.
 */
async function openOverImage(filename: string, opts: CliOpenOptions, child: BlockOptions): Promise<BlockImage> {
  const prefix = opts.errorPrefix ?? `Could not open '${filename}': `;
  const fail = (e: unknown): CliError => new CliError(`${prefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
  // A filter over a plain file: the file protocol has no clusters to compress.
  if (isFilterDriver(opts.format) && child.format === undefined) throw fail(new CliError(`Compression is not supported for underlying format: file`));
  const { readOnly: _childReadOnly, ...given } = blockOpenOptions(child);
  const image = await openCliImage(child.filename ?? "", {
    readOnly: opts.readOnly,
    onWarning: opts.onWarning,
    errorPrefix: prefix,
    ...(opts.program !== undefined ? { program: opts.program } : {}),
    ...(opts.forceShare !== undefined ? { forceShare: opts.forceShare } : {}),
    ...(opts.locking !== undefined ? { locking: opts.locking } : {}),
    ...given,
  });
  if (isFilterDriver(opts.format)) {
    try {
      return CompressFilter.open(image);
    } catch (e) {
      await closeQuietly(image);
      throw fail(e);
    }
  }
  return openOnFile(image.filename, opts, new ImageStore(image));
}

/** A format over a quorum of files (file.driver=quorum): the children open first; the image closes them. */
async function openOverQuorum(filename: string, opts: CliOpenOptions, quorum: QuorumOptions): Promise<BlockImage> {
  const prefix = opts.errorPrefix ?? `Could not open '${filename}': `;
  const children: ByteStore[] = [];
  let store: QuorumStore;
  try {
    for (const child of quorum.children) children.push(await FileStore.open(child, { readOnly: opts.readOnly }));
    store = new QuorumStore(children, quorum.voteThreshold, filename);
  } catch (e) {
    await Promise.all(children.map((c) => c.close().catch(() => undefined)));
    throw new CliError(`${prefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
  }
  return openOnFile(filename, opts, store);
}

const blkdebugNodes = new WeakMap<BlockImage, BlkdebugStore>();

/** The blkdebug node under an image opened here (its file), for qemu-io's break/resume commands. */
export function blkdebugNodeOf(image: BlockImage): BlkdebugStore | undefined {
  return blkdebugNodes.get(image);
}

/** The open options that block options (--image-opts, json:, open -o) give. */
export function blockOpenOptions(o: BlockOptions): Partial<CliOpenOptions> {
  return {
    ...(o.format !== undefined ? { format: o.format } : {}),
    ...(o.dataFile !== undefined ? { dataFile: o.dataFile } : {}),
    ...(o.backing !== undefined ? { backing: o.backing } : {}),
    ...(o.backingFormat !== undefined ? { backingFormat: o.backingFormat } : {}),
    ...(o.forceShare !== undefined ? { forceShare: o.forceShare } : {}),
    ...(o.locking !== undefined ? { locking: o.locking } : {}),
    ...(o.readOnly !== undefined ? { readOnly: o.readOnly } : {}),
    ...(o.discard !== undefined ? { discard: o.discard } : {}),
    ...(o.encrypt !== undefined ? { encrypt: o.encrypt } : {}),
    ...(o.backingEncrypt !== undefined ? { backingEncrypt: o.backingEncrypt } : {}),
    ...(o.lazyRefcounts !== undefined ? { lazyRefcounts: o.lazyRefcounts } : {}),
    ...(o.overlapCheckInactiveL2 ? { overlapCheckInactiveL2: true } : {}),
    ...(o.qcow2Cache !== undefined ? { qcow2Cache: o.qcow2Cache } : {}),
    ...(o.dataFileBlkdebug !== undefined ? { dataFileBlkdebug: o.dataFileBlkdebug } : {}),
    ...(o.fileBlkdebug !== undefined ? { fileBlkdebug: o.fileBlkdebug } : {}),
    ...(o.topBlkdebug !== undefined ? { topBlkdebug: o.topBlkdebug } : {}),
    ...(o.nullCo !== undefined ? { nullCo: o.nullCo } : {}),
    ...(o.dataFileNullCo !== undefined ? { dataFileNullCo: o.dataFileNullCo } : {}),
    ...(o.fileImage !== undefined ? { fileImage: o.fileImage } : {}),
    ...(o.fileQuorum !== undefined ? { fileQuorum: o.fileQuorum } : {}),
    ...(o.backingEncrypt !== undefined ? { backingEncrypt: o.backingEncrypt } : {}),
  };
}

/** A json:{...} filename: the node it describes, opened; messages name the whole json: filename, as QEMU's. */
async function openJsonFilename(filename: string, opts: CliOpenOptions): Promise<BlockImage> {
  const errorPrefix = opts.errorPrefix ?? `Could not open '${filename}': `;
  let o: BlockOptions;
  try {
    o = blockOptionsFromPairs(jsonFilenameOptions(filename), { imageOpts: true, onWarning: opts.onWarning });
  } catch (e) {
    throw new CliError(`${errorPrefix}${errorText(e)}`, { exitCode: opts.exitCode ?? 1, cause: e });
  }
  const { readOnly, ...given } = blockOpenOptions(o);
  // Options given directly (the format of -f or of `open -o driver=`) win over those in the name.
  return openCliImage(o.filename ?? "", { ...opts, ...given, ...(opts.format !== undefined ? { format: opts.format } : {}), readOnly: opts.readOnly || readOnly === true, errorPrefix });
}

/**
 * The name QEMU gives an image opened as `name` (bdrv_refresh_filename): a json: name whose options only say
 * where the file is and tune the format (driver, file.filename, runtime options) is the file's name; one
 * that stacks nodes (an image on an image, a filter, blkdebug) or carries secrets stays as given.
 */
export function shownImageName(name: string): string {
  if (!name.startsWith("json:") || isRemoteName(name)) return name;
  let o: BlockOptions;
  try {
    o = blockOptionsFromPairs(jsonFilenameOptions(name), { imageOpts: true });
  } catch {
    return name;
  }
  const reconstructable = o.fileImage === undefined && o.encrypt === undefined && o.backingEncrypt === undefined && o.dataFileBlkdebug === undefined && o.fileBlkdebug === undefined && o.topBlkdebug === undefined && o.fileQuorum === undefined && o.nullCo === undefined;
  return reconstructable && o.filename !== undefined ? o.filename : name;
}

/** Close, ignoring a failure when another error is already being reported. */
export async function closeQuietly(image: BlockImage | undefined): Promise<void> {
  if (!image) return;
  await image.close().catch(() => undefined);
}

/** Run `fn` on an open image and close it; a close failure is reported only when `fn` succeeded. */
export async function usingImage<T>(image: BlockImage, fn: (image: BlockImage) => Promise<T>): Promise<T> {
  let result: T;
  try {
    result = await fn(image);
  } catch (e) {
    await closeQuietly(image);
    throw e;
  }
  await image.close();
  return result;
}

/**
 * Open an image described by block driver options (--image-opts: "driver=qcow2,file.filename=x.qcow2,
 * data-file.filename=x.raw"). Failures, the options' own included, read "Could not open 'OPTIONS': ...".
 */
export async function openImageOpts(
  operand: string,
  opts: Omit<CliOpenOptions, "format" | "dataFile" | "backing" | "backingFormat" | "errorPrefix">,
): Promise<{ image: BlockImage; filename: string }> {
  const errorPrefix = `Could not open '${operand}': `;
  let o;
  try {
    o = parseBlockOptions(operand, { imageOpts: true, onWarning: opts.onWarning });
  } catch (e) {
    throw new CliError(`${errorPrefix}${errorText(e)}`, { ...(opts.exitCode !== undefined ? { exitCode: opts.exitCode } : {}), cause: e });
  }
  const filename = o.filename ?? "";
  const { readOnly: _ignored, ...given } = blockOpenOptions(o);
  const image = await openCliImage(filename, { ...opts, ...given, errorPrefix });
  return { image, filename: imageOptsDisplayName(o, filename) };
}

/**
 * The name QEMU gives a node opened from options (bdrv_refresh_filename): the file name, unless a "strong"
 * runtime option was given (the key secret of qcow2's encryption or of a luks image), which only a json:
 * filename can carry.
 */
export function imageOptsDisplayName(o: BlockOptions, filename: string): string {
  const secret = o.encrypt?.keySecret;
  if (secret === undefined || o.format === undefined) return filename;
  const node: { [key: string]: JsonValue } = { driver: o.format, file: { driver: "file", filename } };
  node[o.format === "luks" ? "key-secret" : "encrypt.key-secret"] = secret;
  return `json:${toQemuJsonLine(node)}`;
}

/** Open a command's image operand: a file name, or block driver options with --image-opts. */
export async function openOperand(
  operand: string,
  imageOpts: boolean,
  opts: Omit<CliOpenOptions, "dataFile" | "backing" | "backingFormat" | "errorPrefix">,
): Promise<{ image: BlockImage; filename: string }> {
  if (!imageOpts) return { image: await openCliImage(operand, opts), filename: shownImageName(operand) };
  const { format, ...rest } = opts;
  if (format !== undefined) {
    throw new CliError("--image-opts and --format are mutually exclusive", { ...(opts.exitCode !== undefined ? { exitCode: opts.exitCode } : {}) });
  }
  return openImageOpts(operand, rest);
}
