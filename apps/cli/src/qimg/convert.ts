/**
 * qimg convert [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt]
 *              [-B backing_file [-F backing_fmt]] [-o options] [-S sparse_size] [-r rate_limit]
 *              [-m num_coroutines] [-W] [--target-is-zero] filename [filename2 [...]] output_filename
 *
 * As qemu-img 7.2: checks in its order, sources opened, the target created by the format driver (unless -n)
 * and opened, then @qcowkit/core's convertImages copies. -C, -m, -W, -r and the cache modes are checked and
 * otherwise ignored (the copy always reads ahead and writes in order).
 */
import {
  ConvertFailure,
  NbdImage,
  Qcow2Image,
  addBitmap,
  convertImages,
  listBitmaps,
  mergeBitmap,
  type BlockImage,
  type SnapshotSelector,
} from "@qcowkit/core/node";
import { convertToS3, isS3Target } from "./convert-s3";
import { strerror } from "../cli/errno";
import { CliError, UsageError, errorText } from "../cli/errors";
import type { LongOption } from "../cli/getopt";
import { closeQuietly, openCliImage, openOperand } from "../cli/open";
import { Progress } from "../cli/progress";
import { QemuOpts, accumulateOptions, appendDescs, hasHelpOption, splitOptionList } from "../cli/qemu-opts";
import { sizeArgument } from "../cli/size";
import { CACHE_MODES } from "./compare";
import { FORCE_SHARE_OPTION, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, parseCommand, type CommandContext, type QimgCommand } from "./context";
import { addBackingOptions, createWithDriver, optionHelp } from "./create";
import { FILE_CREATE_OPTS, formatCreateOpts, isKnownFormat, uncreatableFormatError } from "./create-options";
import { convertWithStreams, involvesStreams, loadSourceSnapshot } from "./convert-stream";

/** -l: "snapshot.id=ID,snapshot.name=NAME" or "ID_OR_NAME". */
export function parseSnapshotParam(text: string): SnapshotSelector {
  if (!text.startsWith("snapshot.")) return { idOrName: text };
  const out: { id?: string; name?: string } = {};
  for (const element of splitOptionList(text)) {
    const eq = element.indexOf("=");
    const key = eq < 0 ? element : element.slice(0, eq);
    const value = eq < 0 ? "on" : element.slice(eq + 1);
    if (key === "snapshot.id") out.id = value;
    else if (key === "snapshot.name") out.name = value;
    // Two error lines (QEMU reports both; each gets the program name).
    else throw new CliError(`Invalid parameter '${key}'\nFailed in parsing snapshot param '${text}'`);
  }
  return out;
}

/** MAX_BUF_SECTORS in bytes: the largest -S. */
const MAX_SPARSE_BYTES = 16 * 1024 * 1024;
const MAX_COROUTINES = 16;

const LONG: LongOption[] = [
  HELP_OPTION,
  OBJECT_OPTION,
  IMAGE_OPTS_OPTION,
  FORCE_SHARE_OPTION,
  { name: "target-image-opts", hasArg: false, key: "target-image-opts" },
  { name: "salvage", hasArg: false, key: "salvage" },
  { name: "target-is-zero", hasArg: false, key: "target-is-zero" },
  { name: "bitmaps", hasArg: false, key: "bitmaps" },
  { name: "skip-broken-bitmaps", hasArg: false, key: "skip-broken-bitmaps" },
];

interface ConvertArgs {
  fmt?: string;
  outFmt?: string;
  backingFile?: string;
  backingFmt?: string;
  options?: string;
  compressed: boolean;
  copyRange: boolean;
  /** --salvage: unreadable sectors are copied as zeros, with a warning each. */
  salvage: boolean;
  sparseBytes: number;
  explicitSparse: boolean;
  progress: boolean;
  quiet: boolean;
  skipCreate: boolean;
  targetIsZero: boolean;
  forceShare: boolean;
  imageOpts: boolean;
  /** -l: a snapshot to read instead of the active image. */
  snapshot?: SnapshotSelector;
  bitmaps: boolean;
  skipBrokenBitmaps: boolean;
  cache: string;
  srcCache: string;
  /** -m: requests in flight (QEMU's default 8); compressed targets compress that many clusters at once. */
  coroutines: number;
}

function parseArgs(options: Array<{ key: string; value: string | undefined }>, ctx: CommandContext): ConvertArgs {
  const a: ConvertArgs = {
    compressed: false,
    copyRange: false,
    salvage: false,
    sparseBytes: 4096,
    explicitSparse: false,
    progress: false,
    quiet: false,
    skipCreate: false,
    targetIsZero: false,
    forceShare: false,
    imageOpts: false,
    bitmaps: false,
    skipBrokenBitmaps: false,
    cache: "unsafe",
    srcCache: "writeback",
    coroutines: 8,
  };
  for (const o of options) {
    const v = o.value!;
    switch (o.key) {
      case "f":
        a.fmt = v;
        break;
      case "O":
        a.outFmt = v;
        break;
      case "B":
        a.backingFile = v;
        break;
      case "F":
        a.backingFmt = v;
        break;
      case "C":
        a.copyRange = true;
        break;
      case "c":
        a.compressed = true;
        break;
      case "o":
        a.options = accumulateOptions(a.options, v);
        break;
      case "l":
        a.snapshot = parseSnapshotParam(v);
        break;
      case "S": {
        const bytes = sizeArgument("buffer size for sparse output", v, { onWarning: ctx.warn });
        if (bytes % 512n !== 0n || bytes > BigInt(MAX_SPARSE_BYTES)) {
          throw new CliError(
            `Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to ${MAX_SPARSE_BYTES}. Select 0 to disable sparse detection (fully allocates output).`,
          );
        }
        a.sparseBytes = Number(bytes);
        a.explicitSparse = true;
        break;
      }
      case "p":
        a.progress = true;
        break;
      case "t":
        a.cache = v;
        break;
      case "T":
        a.srcCache = v;
        break;
      case "q":
        a.quiet = true;
        break;
      case "n":
        a.skipCreate = true;
        break;
      case "m": {
        const n = /^[0-9]+$/.test(v) ? Number(v) : Number.NaN;
        if (!(n >= 1 && n <= MAX_COROUTINES)) {
          throw new CliError(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COROUTINES}`);
        }
        a.coroutines = n;
        break;
      }
      case "W":
        // Out-of-order writes: accepted. Writes in flight still take their clusters in the order they were
        // issued (the engine allocates under one lock, first come first served), so the target is the same
        // file with or without -W; QEMU's may differ in layout with -W, never in content.
        break;
      case "U":
        a.forceShare = true;
        break;
      case "r":
        sizeArgument("rate limit", v, { onWarning: ctx.warn });
        break;
      case "target-is-zero":
        a.targetIsZero = true;
        break;
      case "image-opts":
        a.imageOpts = true;
        break;
      case "target-image-opts":
        throw new CliError("--target-image-opts is not supported by qimg");
      case "salvage":
        a.salvage = true;
        break;
      case "bitmaps":
        a.bitmaps = true;
        break;
      case "skip-broken-bitmaps":
        a.skipBrokenBitmaps = true;
        break;
    }
  }
  return a;
}

export const convertCommand: QimgCommand = {
  name: "convert",
  async run(args, ctx) {
    const parsed = parseCommand(args, ctx, { short: ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", argv0: "convert", long: LONG });
    if (!parsed) return 0;
    const a = parseArgs(parsed.options, ctx);
    const outFmt = a.outFmt ?? "raw";
    if (a.compressed && a.copyRange) throw new CliError("Cannot enable copy offloading when -c is used");
    if (a.explicitSparse && a.copyRange) throw new CliError("Cannot enable copy offloading when -S is used");
    if (a.copyRange && a.salvage) throw new CliError("Cannot use copy offloading in salvaging mode");
    if (a.skipCreate && a.options !== undefined) throw new CliError("-o has no effect when skipping image creation");
    if (a.targetIsZero && !a.skipCreate) throw new CliError("--target-is-zero requires use of -n flag");
    const operands = parsed.operands;
    const outFilename = operands.length >= 2 ? operands[operands.length - 1] : undefined;
    // An s3:// target is written whole, front to back (convert-s3.ts).
    if (operands.length >= 2 && isS3Target(outFilename) && !hasHelpOption(a.options)) return convertToS3(operands.slice(0, -1), outFilename, { ...a, outFmt }, ctx);
    if (hasHelpOption(a.options)) {
      if (!isKnownFormat(outFmt)) throw uncreatableFormatError(outFmt);
      ctx.io.out(optionHelp(outFmt, outFilename));
      return 0;
    }
    if (operands.length < 2) throw new CliError("Must specify image file name");
    if (!CACHE_MODES.includes(a.srcCache)) throw new CliError(`Invalid source cache option: ${a.srcCache}`);
    if (involvesStreams(operands.slice(0, -1), outFilename!)) {
      return convertWithStreams(operands.slice(0, -1), outFilename!, { ...a, outFmt }, ctx);
    }
    const bar = new Progress(ctx.io, a.progress && !a.quiet, 1.0);
    bar.print(0, 100);
    const sources: BlockImage[] = [];
    let target: BlockImage | undefined;
    try {
      for (const name of operands.slice(0, -1)) {
        const opened = await openOperand(name, a.imageOpts, {
          readOnly: true,
          forceShare: a.forceShare,
          ...(a.fmt !== undefined ? { format: a.fmt } : {}),
          onWarning: (w) => ctx.io.err(`${w}\n`),
        });
        sources.push(opened.image);
      }
      if (a.snapshot !== undefined) await loadSourceSnapshot(sources, a.snapshot);
      if (a.bitmaps) await checkBitmaps(sources, a.skipBrokenBitmaps);
      const prepared = await prepareTarget(outFilename!, outFmt, a, sources, ctx);
      target = prepared.target;
      await copy(sources, target, prepared, a, bar, ctx);
      if (a.bitmaps) await copyBitmaps(sources[0]!, target, ctx);
      bar.print(100, 0);
      const t = target;
      target = undefined;
      await t.close();
      return 0;
    } finally {
      bar.end();
      await closeQuietly(target);
      for (const s of sources) await closeQuietly(s);
    }
  },
};

interface PreparedTarget {
  target: BlockImage;
  hasBacking: boolean;
  /**
   * False when a new target does not read as zeros (QEMU's has_zero_init): an encrypted one whose clusters
   * are preallocated (zero bytes on disk are not encrypted zeros), and a luks one (its payload likewise).
   */
  zeroInit: boolean;
}

/** Create (unless -n) and open the target; QEMU's checks on the way. */
async function prepareTarget(
  outFilename: string,
  outFmt: string,
  a: ConvertArgs,
  sources: BlockImage[],
  ctx: CommandContext,
): Promise<PreparedTarget> {
  const totalBytes = sources.reduce((n, s) => n + s.virtualSize, 0);
  let backingFile = a.backingFile;
  // QEMU opens the new target with the key secret its creation options name (img_add_key_secrets).
  let keySecret: string | undefined;
  let zeroInit = true;
  if (!a.skipCreate) {
    if (!isKnownFormat(outFmt)) throw uncreatableFormatError(outFmt);
    const opts = QemuOpts.parse(appendDescs(formatCreateOpts(outFmt), FILE_CREATE_OPTS), a.options, ctx.warn);
    opts.set("size", String(totalBytes));
    addBackingOptions(opts, outFmt, a.backingFile, a.backingFmt);
    backingFile = opts.string("backing_file") ?? backingFile;
    checkBacking(backingFile, sources.length, opts.string("backing_fmt") !== undefined);
    keySecret = opts.string(outFmt === "luks" ? "key-secret" : "encrypt.key-secret");
    const preallocated = (opts.string("preallocation") ?? "off") !== "off";
    if (outFmt === "luks" || (preallocated && (opts.bool("encryption") || opts.has("encrypt.format")))) zeroInit = false;
    if (a.compressed) {
      if (outFmt !== "qcow2") throw new CliError("Compression not supported for this file format");
      if (opts.bool("encryption") || opts.has("encrypt.format")) throw new CliError("Compression and encryption not supported at the same time");
      const prealloc = opts.string("preallocation");
      if (prealloc !== undefined && prealloc !== "off") throw new CliError("Compression and preallocation not supported at the same time");
    }
    try {
      await createWithDriver(outFilename, outFmt, opts, BigInt(totalBytes));
    } catch (e) {
      throw new CliError(`${outFilename}: error while converting ${outFmt}: ${errorText(e)}`, { cause: e });
    }
  } else {
    checkBacking(backingFile, sources.length, true);
  }
  if (!CACHE_MODES.includes(a.cache)) throw new CliError(`Invalid cache option: ${a.cache}`);
  const target = await openCliImage(outFilename, {
    readOnly: false,
    format: outFmt,
    ...(keySecret !== undefined ? { encrypt: { keySecret, unexpected: [] } } : {}),
    onWarning: (w) => ctx.io.err(`${w}\n`),
    // A target made by this command names the backing file given with -B / -o backing_file.
    ...(a.skipCreate ? {} : { warnOutsideReferences: false }),
  });
  try {
    if (a.compressed && target.format !== "qcow2") throw new CliError("Compression not supported for this file format");
    if (a.skipCreate && target.virtualSize < Math.ceil(totalBytes / 512) * 512) {
      throw new CliError("output file is smaller than input file");
    }
  } catch (e) {
    await closeQuietly(target);
    throw e;
  }
  return { target, hasBacking: backingFile !== undefined, zeroInit };
}

function checkBacking(backingFile: string | undefined, sourceCount: number, hasFormat: boolean): void {
  if (backingFile === undefined) return;
  if (sourceCount > 1) throw new CliError("Having a backing file for the target makes no sense when concatenating multiple input images");
  if (!hasFormat) throw new CliError("Use of backing file requires explicit backing format");
}

/** How convert's -m requests are spent (`readAhead`, `writesInFlight` of convertImages). */
function inFlight(a: ConvertArgs): { readAhead: number; writesInFlight: number } {
  if (a.compressed) return { readAhead: 2, writesInFlight: a.coroutines };
  return { readAhead: Math.max(2, Math.ceil(a.coroutines / 2)), writesInFlight: Math.max(1, Math.floor(a.coroutines / 2)) };
}

async function copy(sources: BlockImage[], target: BlockImage, prepared: PreparedTarget, a: ConvertArgs, bar: Progress, ctx: CommandContext): Promise<void> {
  const targetHasBacking = prepared.hasBacking;
  try {
    await convertImages(sources, target, {
      sparseBytes: a.sparseBytes,
      compressed: a.compressed,
      // -m requests in flight, as QEMU's coroutines. Compressed: -m clusters compress at once on the thread
      // pool (placed in order). Uncompressed copies through memory: the -m buffers are shared between reads
      // ahead and writes in flight. Either way the target is the one an in-order copy makes (see -W).
      ...inFlight(a),
      targetHasBacking,
      targetIsNew: !a.skipCreate,
      // A new target without a backing file reads as zeros; with -n only when the user says so.
      // An NBD export keeps its old contents when "created" (QEMU: no zero init), so zeros are written there.
      targetZeroInit:
        a.targetIsZero || (!a.skipCreate && prepared.zeroInit && a.sparseBytes !== 0 && !targetHasBacking && !(target instanceof NbdImage)),
      ...(bar.enabled ? { onProgress: (done: number, total: number) => bar.print(total > 0 ? (100 * done) / total : 100, 0) } : {}),
      ...(a.salvage ? { onSalvage: (offset: number, e: unknown) => ctx.warn(`error while reading offset ${offset}: ${strerror(e)}`) } : {}),
    });
  } catch (e) {
    if (!(e instanceof ConvertFailure)) throw e;
    if (e.kind === "status") throw new CliError(`error while reading block status of sector ${e.offset}: ${strerror(e.cause)}`, { cause: e });
    throw new CliError(`error while ${e.kind === "read" ? "reading" : "writing"} at byte ${e.offset}: ${strerror(e.cause)}`, { cause: e });
  }
}


/** --bitmaps: a single qcow2 source whose bitmaps are all consistent (unless they are to be skipped). */
async function checkBitmaps(sources: BlockImage[], skipBroken: boolean): Promise<void> {
  if (sources.length > 1) throw new CliError("Copying bitmaps only possible with single source");
  const src = sources[0]!;
  if (!(src instanceof Qcow2Image)) throw new CliError("Source lacks bitmap support");
  if (skipBroken) return;
  for (const bm of await listBitmaps(src)) {
    if (bm.flags.includes("in-use")) {
      throw new CliError(`Cannot copy inconsistent bitmap '${bm.name}'`, {
        hint: "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it",
      });
    }
  }
}

/** Copy the persistent bitmaps of `source` into `target` (same names, granularity and enabled state). */
async function copyBitmaps(source: BlockImage, target: BlockImage, ctx: CommandContext): Promise<void> {
  if (!(target instanceof Qcow2Image)) throw new CliError("Destination lacks bitmap support");
  for (const bm of await listBitmaps(source as Qcow2Image)) {
    if (bm.flags.includes("in-use")) {
      ctx.warn(`Skipping inconsistent bitmap '${bm.name}'`);
      continue;
    }
    await addBitmap(target, bm.name, { granularity: bm.granularity, disabled: !bm.flags.includes("auto") });
    await mergeBitmap(target, bm.name, source as Qcow2Image, bm.name);
  }
}
