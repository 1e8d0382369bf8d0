/**
 * qimg convert to an s3:// object: the object is written whole, in one forward pass, through a multipart
 * upload (no temporary file; memory bounded by the upload's part buffers). A raw target gets the sources'
 * guest bytes in order; a qcow2 target gets the image laid out for one forward write by @qcowkit/core's
 * stream writer (`imageToStream`, docs/streams.md). Options that need to seek in the target are refused.
 */
import * as core from "@qcowkit/core/node";
import { concatImages, s3ConfigFromEnv, type BlockImage } from "@qcowkit/core/node";
import { isS3Name, nodeFetch, uploadS3Object } from "@qcowkit/datafile/node";
import { CliError, errorText } from "../cli/errors";
import { closeQuietly, openOperand } from "../cli/open";
import { QemuOpts, appendDescs } from "../cli/qemu-opts";
import { lazyScratch } from "../cli/stream-io";
import type { CommandContext } from "./context";
import { FILE_CREATE_OPTS, formatCreateOpts, isKnownFormat, uncreatableFormatError } from "./create-options";

export interface S3ConvertArgs {
  fmt?: string;
  outFmt: string;
  backingFile?: string;
  options?: string;
  compressed: boolean;
  skipCreate: boolean;
  forceShare: boolean;
  imageOpts: boolean;
  bitmaps: boolean;
  targetIsZero: boolean;
}

/** The stream writer's signature (docs/streams.md). */
type ImageToStream = (image: BlockImage, options: Record<string, unknown>) => ReadableStream<Uint8Array>;

export function isS3Target(name: string | undefined): name is string {
  return name !== undefined && isS3Name(name);
}

const PIECE = 2 << 20;

/** The guest bytes of `images` one after the other, in pieces of at most 2 MiB. */
async function* rawBytes(images: BlockImage[]): AsyncGenerator<Uint8Array> {
  for (const image of images) {
    for (let at = 0; at < image.virtualSize; at += PIECE) {
      const piece = new Uint8Array(Math.min(PIECE, image.virtualSize - at));
      await image.read(at, piece);
      yield piece;
    }
  }
}

const refuse = (what: string): CliError => new CliError(`${what} cannot be used when the target is an S3 object (it is written once, front to back)`);

export async function convertToS3(sources: string[], target: string, a: S3ConvertArgs, ctx: CommandContext): Promise<number> {
  if (!isKnownFormat(a.outFmt)) throw uncreatableFormatError(a.outFmt);
  if (a.skipCreate) throw refuse("-n");
  if (a.bitmaps) throw refuse("--bitmaps");
  if (a.targetIsZero) throw refuse("--target-is-zero");
  if (a.backingFile !== undefined) throw refuse("-B");
  if (a.compressed && a.outFmt !== "qcow2") throw new CliError("Compression not supported for this file format");
  const opts = QemuOpts.parse(appendDescs(formatCreateOpts(a.outFmt as "raw" | "qcow2"), FILE_CREATE_OPTS), a.options, ctx.warn);
  for (const key of ["backing_file", "data_file", "data_file_raw", "encrypt.format", "encryption", "lazy_refcounts"]) {
    if (opts.has(key)) throw refuse(`Option '${key}'`);
  }
  const prealloc = opts.string("preallocation");
  if (prealloc !== undefined && prealloc !== "off") throw refuse("Option 'preallocation'");
  const images: BlockImage[] = [];
  // As for a stream target: what the plan reads past its memory cache waits here, so sources are read once.
  const scratch = lazyScratch(sources.join(" "), (t) => ctx.io.err(t), "the planned data exceeds the memory cache; keeping the rest in");
  try {
    for (const name of sources) {
      const opened = await openOperand(name, a.imageOpts, {
        readOnly: true,
        forceShare: a.forceShare,
        ...(a.fmt !== undefined ? { format: a.fmt } : {}),
        onWarning: (w) => ctx.io.err(`${w}\n`),
      });
      images.push(opened.image);
    }
    let stream: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>;
    if (a.outFmt === "raw") {
      stream = rawBytes(images);
    } else {
      const imageToStream = (core as unknown as Record<string, unknown>)["imageToStream"] as ImageToStream | undefined;
      if (imageToStream === undefined) throw new CliError("qcow2 output to S3 needs the stream writer (imageToStream), which this build lacks");
      const compat = opts.string("compat");
      const cluster = opts.integer("cluster_size");
      const refcountBits = opts.integer("refcount_bits");
      const extendedL2 = opts.bool("extended_l2");
      const compressionType = opts.string("compression_type");
      try {
        // Several sources are one disk, one after the other (as qemu-img convert concatenates them).
        stream = imageToStream(concatImages(images), {
          format: "qcow2",
          scratch: () => scratch.make(),
          compress: a.compressed,
          ...(cluster !== undefined ? { clusterSize: Number(cluster) } : {}),
          ...(refcountBits !== undefined ? { refcountBits: Number(refcountBits) } : {}),
          ...(extendedL2 !== undefined ? { extendedL2 } : {}),
          ...(compat !== undefined ? { version: compat === "0.10" || compat === "v2" ? 2 : 3 } : {}),
          ...(compressionType !== undefined ? { compressionType } : {}),
        });
      } catch (e) {
        throw new CliError(`${target}: error while converting ${a.outFmt}: ${errorText(e)}`, { cause: e });
      }
    }
    try {
      await uploadS3Object(target, s3ConfigFromEnv(), stream, { fetch: nodeFetch() });
    } catch (e) {
      throw new CliError(`${target}: error while converting ${a.outFmt}: ${errorText(e)}`, { cause: e });
    }
    return 0;
  } finally {
    await scratch.remove();
    for (const image of images) await closeQuietly(image);
  }
}
