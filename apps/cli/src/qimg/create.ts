/**
 * qimg create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]
 *
 * Follows qemu-img 7.2 step by step: option list parsing, -b/-F into the options, the backing file opened
 * (unless -u) for its format check and its size, "Formatting ..." printed, then the driver: image file and
 * data file created (truncated), QAPI value checks, the engine's checks and layout. A failed qcow2 creation
 * deletes both files, as QEMU does.
 */
import { rm } from "node:fs/promises";
import { createImage, validateCreateOptions, type CreateImageOptions, type Preallocation } from "@qcowkit/core/node";
import { isNbdFilename, isRemoteName } from "@qcowkit/core/internal";
import { imageFilePath, resolveBackingFileName } from "@qcowkit/datafile";
import { FileStore } from "@qcowkit/datafile/node";
import { CliError, UsageError, errorText, withContext } from "../cli/errors";
import { closeQuietly, openCliImage } from "../cli/open";
import { QemuOpts, accumulateOptions, appendDescs, formatHelp, hasHelpOption } from "../cli/qemu-opts";
import { sizeArgument } from "../cli/size";
import { HELP_OPTION, OBJECT_OPTION, parseCommand, type CommandContext, type QimgCommand } from "./context";
import { FILE_CREATE_OPTS, formatCreateOpts, isKnownFormat, uncreatableFormatError, type ImageFormatName } from "./create-options";
import { checkEncryptionAlias, encryptionCreateOptions, luksFormatCreateOptions, withKeySecret } from "./create-encryption";

/** Block drivers QEMU 7.2 knows (the values `backing_fmt` accepts at creation). */
const QEMU_DRIVERS = new Set(
  (
    "blkdebug blklogwrites blkverify bochs cloop compress copy-before-write copy-on-read dmg file ftp ftps gluster " +
    "host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels preallocate qcow qcow2 " +
    "qed quorum raw rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat"
  ).split(" "),
);

const INT64_MAX = (1n << 63n) - 1n;

/** "-o help": the option list of `format` (merged with the file protocol's when a file name is given). */
export function optionHelp(format: ImageFormatName, filename: string | undefined): string {
  const descs = formatCreateOpts(format);
  if (filename === undefined) return formatHelp(descs, `Supported ${format} options:`, true);
  return formatHelp(appendDescs(descs, FILE_CREATE_OPTS), "Supported options:", false);
}

export interface CreateRequest {
  filename: string;
  format: ImageFormatName;
  options: string | undefined;
  size: bigint | undefined;
  backingFile: string | undefined;
  backingFormat: string | undefined;
  unsafe: boolean;
  quiet: boolean;
}

export const createCommand: QimgCommand = {
  name: "create",
  async run(args, ctx) {
    const parsed = parseCommand(args, ctx, {
      short: ":F:b:f:ho:qu",
      argv0: "create",
      long: [
        HELP_OPTION,
        OBJECT_OPTION,
      ],
    });
    if (!parsed) return 0;
    const { options, operands } = parsed;
    let format = "raw";
    let optList: string | undefined;
    let backingFile: string | undefined;
    let backingFormat: string | undefined;
    let quiet = false;
    let unsafe = false;
    for (const o of options) {
      switch (o.key) {
        case "f":
          format = o.value!;
          break;
        case "F":
          backingFormat = o.value!;
          break;
        case "b":
          backingFile = o.value!;
          break;
        case "o":
          optList = accumulateOptions(optList, o.value!);
          break;
        case "q":
          quiet = true;
          break;
        case "u":
          unsafe = true;
          break;
      }
    }
    if (hasHelpOption(optList)) {
      if (!isKnownFormat(format)) throw uncreatableFormatError(format);
      ctx.io.out(optionHelp(format, operands[0]));
      return 0;
    }
    const filename = operands[0];
    if (filename === undefined) throw new UsageError("Expecting image file name");
    let size: bigint | undefined;
    if (operands[1] !== undefined) size = sizeArgument("image size", operands[1], { onWarning: ctx.warn });
    if (operands.length > 2) throw new UsageError(`Unexpected argument: ${operands[2]}`);
    try {
      if (!isKnownFormat(format)) throw uncreatableFormatError(format);
      await createFromOptions(
        { filename, format, options: optList, size, backingFile, backingFormat, unsafe, quiet },
        ctx,
      );
    } catch (e) {
      // Every failure of the creation itself is prefixed with the file name, as qemu-img does.
      if (e instanceof UsageError) throw e;
      throw withContext(`${filename}: `, e);
    }
    return 0;
  },
};

/** -b and -F (qemu-img's add_old_style_options): they override -o backing_file/backing_fmt. */
export function addBackingOptions(opts: QemuOpts, format: ImageFormatName, backingFile: string | undefined, backingFormat: string | undefined): void {
  if (backingFile !== undefined) {
    if (format !== "qcow2") throw new CliError(`Backing file not supported for file format '${format}'`);
    opts.set("backing_file", backingFile);
  }
  if (backingFormat !== undefined) {
    if (format !== "qcow2") throw new CliError(`Backing file format not supported for file format '${format}'`);
    opts.set("backing_fmt", backingFormat);
  }
}

/** bdrv_img_create: everything after the command line is parsed. Throws messages without the file prefix. */
export async function createFromOptions(req: CreateRequest, ctx: CommandContext): Promise<void> {
  const { filename, format } = req;
  const opts = QemuOpts.parse(appendDescs(formatCreateOpts(format), FILE_CREATE_OPTS), req.options, ctx.warn);
  if (req.size !== undefined) {
    if (opts.has("size")) throw new CliError("The image size must be specified only once");
    opts.set("size", String(req.size));
  }
  addBackingOptions(opts, format, req.backingFile, req.backingFormat);
  const backingFile = opts.string("backing_file");
  const backingFormat = opts.string("backing_fmt");
  if (backingFile !== undefined) {
    if (backingFile === filename) throw new CliError("Error: Trying to create an image with the same filename as the backing file");
    if (backingFile === "") throw new CliError("Expected backing file name, got empty string");
  }
  let size = opts.integer("size");
  if (backingFile !== undefined && !req.unsafe) {
    const backingSize = await probeBacking(filename, backingFile, backingFormat, ctx);
    if (size === undefined) {
      size = BigInt(backingSize);
      opts.set("size", String(backingSize));
    }
  } else if (backingFile !== undefined && backingFormat === undefined) {
    throw new CliError("Backing file specified without backing format");
  }
  if (size === undefined) throw new CliError("Image creation needs a size parameter");
  if (!req.quiet) ctx.io.out(`Formatting '${filename}', fmt=${format} ${opts.print()}\n`);
  await createWithDriver(filename, format, opts, size);
}

/** bdrv_create: the format driver creates the image from parsed options (no "Formatting" line, no backing probe). */
export async function createWithDriver(filename: string, format: ImageFormatName, opts: QemuOpts, size: bigint): Promise<void> {
  if (format === "raw") await createRaw(filename, opts, size);
  else if (format === "luks") await createLuksFile(filename, opts, size);
  else await createQcow2File(filename, opts, size);
}

/** A standalone LUKS image (QEMU's block_crypto_co_create_opts_luks); a failed creation deletes the file. */
async function createLuksFile(filename: string, opts: QemuOpts, size: bigint): Promise<void> {
  try {
    await truncateFile(filename);
    const luks = luksFormatCreateOptions(opts);
    const preallocation = opts.string("preallocation") ?? "off";
    if (!["off", "metadata", "falloc", "full"].includes(preallocation)) throw new CliError(`invalid parameter value: ${preallocation}`);
    const bytes = checkedSize(size);
    const encrypt = withKeySecret(luks, opts, "key-secret");
    await createImage(filename, { format: "luks", size: bytes, preallocation: preallocation as Preallocation, encrypt });
  } catch (e) {
    await rm(filename, { force: true }).catch(() => undefined);
    throw e;
  }
}

/** Open the backing file as qemu-img create does (metadata only); returns its size. */
async function probeBacking(
  filename: string,
  backingFile: string,
  backingFormat: string | undefined,
  ctx: CommandContext,
): Promise<number> {
  let path = backingFile;
  try {
    const resolved = resolveBackingFileName(filename, backingFile);
    if (resolved?.path !== undefined) path = resolved.path;
  } catch (e) {
    throw new CliError(errorText(e));
  }
  let image;
  try {
    image = await openCliImage(path, {
      readOnly: true,
      noIo: true,
      forceShare: true,
      ...(backingFormat !== undefined ? { format: backingFormat } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
      errorPrefix: "",
    });
  } catch (e) {
    throw new CliError(errorText(e), { hint: "Could not open backing image." });
  }
  try {
    if (backingFormat === undefined) {
      throw new CliError("Backing file specified without backing format", { hint: `Detected format of ${image.format}.` });
    }
    // QEMU sees raw files in whole sectors.
    return image.format === "raw" ? Math.ceil(image.virtualSize / 512) * 512 : image.virtualSize;
  } finally {
    await closeQuietly(image);
  }
}

function checkedSize(size: bigint): number {
  if (size > INT64_MAX) throw new CliError("Could not resize image: Image size cannot be negative");
  const rounded = ((size + 511n) / 512n) * 512n;
  if (rounded > BigInt(Number.MAX_SAFE_INTEGER)) throw new CliError("Image sizes above 2^53 bytes are not supported by qimg");
  return Number(rounded);
}

async function createRaw(filename: string, opts: QemuOpts, size: bigint): Promise<void> {
  const prealloc = opts.string("preallocation") ?? "off";
  if (!["off", "metadata", "falloc", "full"].includes(prealloc)) throw new CliError(`invalid parameter value: ${prealloc}`);
  const bytes = checkedSize(size);
  if (prealloc === "metadata") {
    await truncateFile(filename);
    throw new CliError("Unsupported preallocation mode: metadata");
  }
  await createImage(filename, { format: "raw", size: bytes, preallocation: prealloc as "off" | "falloc" | "full" });
}

/** Create (or empty) a file as the file protocol does before the format driver runs. */
async function truncateFile(path: string): Promise<void> {
  // An NBD export is not a file: createImage writes over it. A remote object is written whole by createImage.
  if (isNbdFilename(path) || isRemoteName(path)) return;
  const store = await FileStore.open(imageFilePath(path), { create: true, truncate: true });
  await store.close();
}

function enumValue<T extends string>(value: string | undefined, allowed: readonly T[], qapiName: string): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) throw new CliError(`Parameter '${qapiName}' does not accept value '${value}'`);
  return value as T;
}

async function createQcow2File(filename: string, opts: QemuOpts, size: bigint): Promise<void> {
  const dataFile = opts.string("data_file");
  const created: string[] = [];
  try {
    await truncateFile(filename);
    created.push(filename);
    if (dataFile !== undefined) {
      if (dataFile === "") throw new CliError("Could not create '': No such file or directory");
      await truncateFile(dataFile);
      created.push(dataFile);
    }
    checkEncryptionAlias(opts);
    // QAPI's checks of the values, in BlockdevCreateOptionsQcow2 member order.
    const compat = opts.string("compat");
    const version = enumValue(compat === "0.10" ? "v2" : compat === "1.1" ? "v3" : compat, ["v2", "v3"] as const, "version");
    const backingFormat = opts.string("backing_fmt");
    if (backingFormat !== undefined && !QEMU_DRIVERS.has(backingFormat)) {
      throw new CliError(`Parameter 'backing-fmt' does not accept value '${backingFormat}'`);
    }
    const encrypt = encryptionCreateOptions(opts);
    const preallocation = enumValue(opts.string("preallocation"), ["off", "metadata", "falloc", "full"] as const, "preallocation");
    const compressionType = enumValue(opts.string("compression_type"), ["zlib", "zstd"] as const, "compression-type");
    const clusterSize = opts.integer("cluster_size") ?? 65536n;
    const extendedL2 = opts.bool("extended_l2") ?? false;
    if (size > INT64_MAX) throw new CliError("Could not resize image: Image size cannot be negative");
    const rounded = ((size + 511n) / 512n) * 512n;
    const huge = rounded > BigInt(Number.MAX_SAFE_INTEGER);
    const request: CreateImageOptions = {
      format: "qcow2",
      size: huge ? 0 : Number(rounded),
      clusterSize: Number(clusterSize),
      extendedL2,
      refcountBits: Number(BigInt.asIntN(64, opts.integer("refcount_bits") ?? 16n)),
      lazyRefcounts: opts.bool("lazy_refcounts") ?? false,
      ...(version !== undefined ? { version: version === "v2" ? 2 : 3 } : {}),
      ...(preallocation !== undefined ? { preallocation } : {}),
      ...(compressionType !== undefined ? { compressionType } : {}),
      ...(dataFile !== undefined ? { dataFile } : {}),
      ...(opts.bool("data_file_raw") !== undefined ? { dataFileRaw: opts.bool("data_file_raw")! } : {}),
      ...(opts.string("backing_file") !== undefined ? { backingFile: opts.string("backing_file")! } : {}),
      ...(backingFormat !== undefined ? { backingFormat } : {}),
      ...(encrypt ? { encrypt } : {}),
    };
    if (huge) {
      // Beyond what the engine takes: its other checks first (on a stand-in size), then QEMU's size limit.
      validateCreateOptions(request);
      checkL1Size(rounded, clusterSize, extendedL2);
      throw new CliError("Image sizes above 2^53 bytes are not supported by qimg");
    }
    if (request.encrypt) {
      // The key secret is looked up once the image options passed the engine's checks (as QEMU does).
      validateCreateOptions(request);
      request.encrypt = withKeySecret(request.encrypt, opts);
    }
    await createImage(filename, request);
  } catch (e) {
    for (const path of created) await rm(path, { force: true }).catch(() => undefined);
    throw e;
  }
}

/**
 * QEMU refuses images whose L1 table would exceed 32 MiB ("too large for file format 'qcow2'"); checked here
 * on the exact size so sizes beyond 2^53 get QEMU's message too. Invalid cluster sizes are left to the engine.
 */
function checkL1Size(size: bigint, clusterSize: bigint, extendedL2: boolean): void {
  if (clusterSize < 512n || clusterSize > 2n * 1024n * 1024n || (clusterSize & (clusterSize - 1n)) !== 0n) return;
  if (extendedL2 && clusterSize < 16384n) return;
  const coverage = clusterSize * (clusterSize / (extendedL2 ? 16n : 8n));
  const entries = (size + coverage - 1n) / coverage;
  if (entries * 8n > 32n * 1024n * 1024n) {
    throw new CliError("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  }
}
