/**
 * qimg convert with stream operands (see docs/streams.md): a thin frontend over @qcowkit/core's
 * imageToStream and streamToImage.
 *
 * - stream target: the single source goes out as raw (every byte) or as a qcow2 laid out for one forward
 *   write; -c, -o cluster_size/compat/refcount_bits/extended_l2/compression_type and -B/-F (incremental)
 *   carry over; options that need a seekable target are refused in one line;
 * - stream source: a qcow2 stream is converted in one pass (bytes it refers back to are spooled), a raw one
 *   is read in order into a target that grows with it;
 * - both: raw to raw is copied through; otherwise the source is spooled to a temporary file first.
 */
import { statSync } from "node:fs";
import { join, resolve } from "node:path";
import { concatImages, imageToStream, probeStream, streamToImage, type BlockImage, type ImageToStreamOptions, type SnapshotSelector } from "@qcowkit/core/node";
import { loadSnapshotReadOnly } from "@qcowkit/core/internal";
import { CliError, errorText } from "../cli/errors";
import { closeQuietly, openCliImage, openOperand } from "../cli/open";
import { Progress } from "../cli/progress";
import { QemuOpts, appendDescs } from "../cli/qemu-opts";
import { isStreamOperand, lazyScratch, openStreamOperand, readStream, spoolStream, tempDirectory, writeStream, type StreamEndpoint } from "../cli/stream-io";
import type { CommandContext } from "./context";
import { addBackingOptions, createWithDriver } from "./create";
import { FILE_CREATE_OPTS, formatCreateOpts, isKnownFormat, uncreatableFormatError } from "./create-options";

export interface StreamConvertArgs {
  fmt?: string;
  outFmt: string;
  backingFile?: string;
  backingFmt?: string;
  options?: string;
  compressed: boolean;
  progress: boolean;
  quiet: boolean;
  skipCreate: boolean;
  forceShare: boolean;
  imageOpts: boolean;
  bitmaps: boolean;
  targetIsZero: boolean;
  /** -l: a snapshot of the (single) source to read instead of its active image. */
  snapshot?: SnapshotSelector;
}

/** Whether convert's operands involve a stream (then `convertWithStreams` does the work). */
export function involvesStreams(sources: string[], target: string): boolean {
  return isStreamOperand(target, "out") || sources.some((s) => isStreamOperand(s, "in"));
}

/** -l: the single source reads as its snapshot from now on (convert to a file or to a stream). */
export async function loadSourceSnapshot(sources: BlockImage[], snapshot: SnapshotSelector): Promise<void> {
  if (sources.length > 1) throw new CliError("No support for concatenating multiple snapshot");
  try {
    await loadSnapshotReadOnly(sources[0]!, snapshot);
  } catch (e) {
    throw new CliError(`Failed to load snapshot: ${errorText(e)}`, { cause: e });
  }
}

const refuse = (what: string) => new CliError(`${what} cannot be used when the target is a stream`);

/** Create options a forward-written stream cannot honour. */
function checkStreamableOptions(opts: QemuOpts, a: StreamConvertArgs): void {
  if (a.skipCreate) throw refuse("-n");
  if (a.bitmaps) throw refuse("--bitmaps");
  if (a.targetIsZero) throw refuse("--target-is-zero");
  const prealloc = opts.string("preallocation");
  if (prealloc !== undefined && prealloc !== "off") throw refuse("Option 'preallocation'");
  for (const key of ["data_file", "data_file_raw", "encrypt.format", "encryption"]) {
    if (opts.has(key)) throw refuse(`Option '${key}'`);
  }
  if (opts.bool("lazy_refcounts")) throw refuse("Option 'lazy_refcounts'");
}

function progressOnStderr(ctx: CommandContext, a: StreamConvertArgs): Progress {
  return new Progress({ out: (t) => ctx.io.err(t), err: (t) => ctx.io.err(t) }, a.progress && !a.quiet, 1.0);
}

export async function convertWithStreams(sources: string[], target: string, a: StreamConvertArgs, ctx: CommandContext): Promise<number> {
  if (!isKnownFormat(a.outFmt)) throw uncreatableFormatError(a.outFmt);
  const toStream = isStreamOperand(target, "out");
  const fromStream = sources.some((s) => isStreamOperand(s, "in"));
  // Several files concatenate into a stream target; a stream source has to be the only one.
  if (sources.length > 1 && fromStream) throw new CliError("Concatenating several images is not supported with a stream source");
  const source = sources[0]!;
  const bar = progressOnStderr(ctx, a);
  bar.print(0, 100);
  try {
    if (fromStream && toStream) {
      const input = openStreamOperand(source, "in");
      const probed = await probeSource(source, input);
      const format = a.fmt ?? probed.format;
      if (format === "raw" && a.outFmt === "raw" && !a.compressed && a.options === undefined && a.backingFile === undefined) {
        await writeStream(probed.stream, openStreamOperand(target, "out"));
        bar.print(100, 0);
        return 0;
      }
      if (format !== "qcow2") {
        const spool = await spoolStream(probed.stream, source, (t) => ctx.io.err(t));
        try {
          await toStreamTarget([spool.path], format, target, a, ctx, bar);
        } finally {
          spool.remove();
        }
      } else {
        // Through streamToImage into a temporary qcow2 (not a byte copy opened as qcow2, which would read a
        // truncated stream's missing end as zeros), then out as a stream.
        checkStreamFormat(probed, source, format);
        const tmp = tempDirectory();
        try {
          const path = join(tmp.dir, "spool");
          ctx.io.err(`qimg: ${source}: spooling the stream to ${path}\n`);
          const { options: _options, backingFile: _backingFile, backingFmt: _backingFmt, ...rest } = a;
          const copy: StreamConvertArgs = { ...rest, outFmt: "qcow2", compressed: false, skipCreate: false };
          await streamIntoFile(probed, source, format, path, copy, ctx, progressOnStderr(ctx, { ...a, progress: false }), true);
          await toStreamTarget([path], format, target, a, ctx, bar, true);
        } finally {
          tmp.remove();
        }
      }
    } else if (toStream) {
      await toStreamTarget(sources, a.fmt, target, a, ctx, bar);
    } else {
      await fromStreamSource(source, target, a, ctx, bar);
    }
    bar.print(100, 0);
    return 0;
  } finally {
    bar.end();
  }
}

/** A regular file or block device named by a path (not a protocol name, not a stream). */
function isLocalFile(name: string): boolean {
  try {
    const st = statSync(name);
    return st.isFile() || st.isBlockDevice();
  } catch {
    return false;
  }
}

/** Parse -o for the output format; -B/-F go in as backing_file/backing_fmt. */
function createOpts(a: StreamConvertArgs, ctx: CommandContext): QemuOpts {
  const opts = QemuOpts.parse(appendDescs(formatCreateOpts(a.outFmt as "raw" | "qcow2"), FILE_CREATE_OPTS), a.options, ctx.warn);
  addBackingOptions(opts, a.outFmt as "raw" | "qcow2", a.backingFile, a.backingFmt);
  return opts;
}

/** `ownSource`: the source is a temporary copy qimg made, whose backing file name is qimg's own too. */
async function toStreamTarget(sources: string[], fmt: string | undefined, target: string, a: StreamConvertArgs, ctx: CommandContext, bar: Progress, ownSource = false): Promise<void> {
  const opts = createOpts(a, ctx);
  checkStreamableOptions(opts, a);
  if (a.compressed && a.outFmt !== "qcow2") throw new CliError("Compression not supported for this file format");
  const backingFile = opts.string("backing_file");
  const backingFmt = opts.string("backing_fmt");
  if (backingFile !== undefined && sources.length > 1) {
    throw new CliError("Having a backing file for the target makes no sense when concatenating multiple input images");
  }
  if (backingFile !== undefined && backingFmt === undefined) throw new CliError("Use of backing file requires explicit backing format");
  const images: BlockImage[] = [];
  let endpoint: StreamEndpoint | undefined;
  // Data read while planning the stream waits here once past the planning cache, so the source is read once:
  // for compressed streams (nothing is compressed twice) and sources that are not local files (NBD, HTTP, S3,
  // --image-opts). Local files are read again instead: cheaper than writing the data under TMPDIR and reading
  // it back (a 1 GiB raw file to `| cat`: 2.4 s spooled to tmpfs, far more on a disk), and no disk space used.
  const scratch = lazyScratch(sources.join(" "), (t) => ctx.io.err(t), "the planned data exceeds the memory cache; keeping the rest in");
  const readAgain = !a.compressed && !a.imageOpts && sources.every(isLocalFile);
  try {
    for (const source of sources) {
      const opened = await openOperand(source, a.imageOpts && !ownSource, {
        readOnly: true,
        ...(ownSource ? { warnOutsideReferences: false } : {}),
        forceShare: a.forceShare,
        ...(fmt !== undefined ? { format: fmt } : {}),
        onWarning: (w) => ctx.io.err(`${w}\n`),
      });
      images.push(opened.image);
    }
    if (a.snapshot !== undefined) await loadSourceSnapshot(images, a.snapshot);
    // Several sources are one disk, one after the other (as qemu-img convert concatenates them).
    const src = concatImages([...images]);
    let base: BlockImage | undefined;
    if (backingFile !== undefined) {
      // The stream has no folder: the backing file name is taken as given, from the current directory.
      base = await openCliImage(backingFile, { readOnly: true, forceShare: true, format: backingFmt!, onWarning: (w) => ctx.io.err(`${w}\n`) });
      images.push(base);
    }
    const compat = opts.string("compat");
    if (compat !== undefined && !["0.10", "1.1", "v2", "v3"].includes(compat)) throw new CliError(`Parameter 'version' does not accept value '${compat}'`);
    const compressionType = opts.string("compression_type");
    if (compressionType !== undefined && compressionType !== "zlib" && compressionType !== "zstd") {
      throw new CliError(`Parameter 'compression-type' does not accept value '${compressionType}'`);
    }
    const streamOpts: ImageToStreamOptions = {
      format: a.outFmt as "raw" | "qcow2",
      ...(a.outFmt === "qcow2"
        ? {
            compress: a.compressed,
            ...(opts.integer("cluster_size") !== undefined ? { clusterSize: Number(opts.integer("cluster_size")) } : {}),
            ...(opts.integer("refcount_bits") !== undefined ? { refcountBits: Number(opts.integer("refcount_bits")) } : {}),
            ...(opts.bool("extended_l2") !== undefined ? { extendedL2: opts.bool("extended_l2")! } : {}),
            ...(compat !== undefined ? { version: compat === "0.10" || compat === "v2" ? (2 as const) : (3 as const) } : {}),
            ...(compressionType !== undefined ? { compressionType } : {}),
            ...(backingFile !== undefined ? { backingFile, backingFormat: backingFmt!, base: base! } : {}),
            ...(readAgain ? {} : { scratch: () => scratch.make() }),
          }
        : {}),
      ...(bar.enabled ? { onProgress: (done: number, total: number) => bar.status(done, total) } : {}),
    };
    let stream: ReadableStream<Uint8Array>;
    try {
      stream = imageToStream(src, streamOpts);
    } catch (e) {
      throw new CliError(`${target}: error while converting ${a.outFmt}: ${errorText(e)}`, { cause: e });
    }
    endpoint = openStreamOperand(target, "out");
    try {
      await writeStream(stream, endpoint);
    } catch (e) {
      if (e instanceof CliError) throw e;
      throw new CliError(`${target}: error while converting ${a.outFmt}: ${errorText(e)}`, { cause: e });
    }
  } finally {
    endpoint?.close();
    await scratch.remove();
    for (const img of images) await closeQuietly(img);
  }
}

async function fromStreamSource(source: string, target: string, a: StreamConvertArgs, ctx: CommandContext, bar: Progress): Promise<void> {
  if (a.snapshot !== undefined) throw new CliError("-l cannot be used with a stream source");
  if (a.bitmaps) throw new CliError("--bitmaps cannot be used with a stream source");
  const input = openStreamOperand(source, "in");
  try {
    const probed = await probeSource(source, input);
    await streamIntoFile(probed, source, a.fmt ?? probed.format, target, a, ctx, bar);
  } finally {
    input.close();
  }
}

/** The stream's format and header (its bytes kept); an error names the operand. */
function probeSource(source: string, input: StreamEndpoint): ReturnType<typeof probeStream> {
  return probeStream(readStream(input)).catch((e) => {
    throw new CliError(`Could not open '${source}': ${errorText(e)}`, { cause: e });
  });
}

function checkStreamFormat(probed: Awaited<ReturnType<typeof probeStream>>, source: string, format: string): asserts format is "raw" | "qcow2" {
  if (format !== "raw" && format !== "qcow2") throw new CliError(`Streams of format '${format}' are not supported`);
  if (format === "qcow2" && probed.format !== "qcow2") throw new CliError(`Could not open '${source}': Image is not in qcow2 format`);
}

/**
 * Convert a probed stream into the file `target` (created unless -n). A backing file the stream names is kept:
 * as stored, or for `temporary` (a target under TMPDIR) resolved from the current directory.
 */
async function streamIntoFile(
  probed: Awaited<ReturnType<typeof probeStream>>,
  source: string,
  format: string,
  target: string,
  a: StreamConvertArgs,
  ctx: CommandContext,
  bar: Progress,
  temporary = false,
): Promise<void> {
  checkStreamFormat(probed, source, format);
  const stored = probed.header?.backingFile;
  const streamBacking = stored === undefined || !temporary ? stored : resolve(stored);
  const opts = createOpts(a, ctx);
  let backingFile = opts.string("backing_file");
  if (streamBacking !== undefined && backingFile === undefined) {
    if (a.outFmt !== "qcow2") throw new CliError(`The stream has a backing file (${streamBacking}): convert it to qcow2, or give -B`);
    // The target keeps the stream's backing file: its unallocated clusters read from there.
    backingFile = streamBacking;
    opts.set("backing_file", streamBacking);
    const fmt = probed.header?.extensions.backingFormat;
    if (fmt !== undefined) opts.set("backing_fmt", fmt);
  }
  if (a.compressed && a.outFmt !== "qcow2") throw new CliError("Compression not supported for this file format");
  const size = format === "qcow2" ? probed.header!.header.size : 0;
  if (!a.skipCreate) {
    try {
      await createWithDriver(target, a.outFmt as "raw" | "qcow2", opts, BigInt(size));
    } catch (e) {
      throw new CliError(`${target}: error while converting ${a.outFmt}: ${errorText(e)}`, { cause: e });
    }
  }
  const image = await openCliImage(target, { readOnly: false, format: a.outFmt, ...(temporary ? { warnOutsideReferences: false } : {}), onWarning: (w) => ctx.io.err(`${w}\n`) });
  const scratch = lazyScratch(source, (t) => ctx.io.err(t));
  try {
    await streamToImage(probed.stream, image, {
      format,
      targetZeroInit: !a.skipCreate && backingFile === undefined,
      growTarget: format === "raw",
      compress: a.compressed,
      scratch: () => scratch.make(),
      ...(bar.enabled ? { onProgress: (done: number, total: number) => bar.status(done, total) } : {}),
    });
    await image.flush();
  } catch (e) {
    throw new CliError(`error while converting '${source}': ${errorText(e)}`, { cause: e });
  } finally {
    await scratch.remove();
    await closeQuietly(image);
  }
}
