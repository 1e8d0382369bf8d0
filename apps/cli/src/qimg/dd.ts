/**
 * qimg dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output
 *
 * As qemu-img 7.2: the output image is created (default format raw) with the size of what will be copied,
 * then the input is copied block by block (every block written, zeros included).
 */
import { createImage, openImage, type BlockImage } from "@qcowkit/core/node";
import { strerror } from "../cli/errno";
import { CliError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { closeQuietly, openCliImage } from "../cli/open";
import { sizeArgument } from "../cli/size";
import { defineObject } from "../cli/secrets";
import type { QimgCommand } from "./context";
import { PROG, helpText } from "./help";
import { isStreamOperand, openStreamOperand, withSpooledInput, type StreamEndpoint } from "../cli/stream-io";
import { writeAllToFd } from "@qcowkit/core/node";

/** dd's output when it is a stream: the blocks are written in order as they come. */
class StreamSink {
  constructor(
    private readonly endpoint: StreamEndpoint,
    readonly size: number,
  ) {}
  async write(_offset: number, data: Uint8Array): Promise<void> {
    await writeAllToFd(this.endpoint.fd, data);
  }
  async close(): Promise<void> {
    this.endpoint.close();
  }
}

const INT_MAX = 2147483647n;

export const ddCommand: QimgCommand = {
  name: "dd",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":hf:O:U",
      argv0: "dd",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    let format: string | undefined;
    let outFormat = "raw";
    let forceShare = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "f":
          format = o.value;
          break;
        case "O":
          outFormat = o.value!;
          break;
        case "U":
          forceShare = true;
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          throw new CliError("--image-opts is not supported by qimg; give the file name (and -f)");
      }
    }
    let bs = 512;
    let count: bigint | undefined;
    let skip: bigint | undefined;
    let input: string | undefined;
    let output: string | undefined;
    for (const arg of operands) {
      const eq = arg.indexOf("=");
      if (eq < 0) throw new CliError(`unrecognized operand ${arg}`);
      const key = arg.slice(0, eq);
      const value = arg.slice(eq + 1);
      switch (key) {
        case "bs":
          bs = Number(sizeArgument("bs", value, { min: 1n, max: INT_MAX, onWarning: ctx.warn }));
          break;
        case "count":
          count = sizeArgument("count", value, { onWarning: ctx.warn });
          break;
        case "skip":
          skip = sizeArgument("skip", value, { onWarning: ctx.warn });
          break;
        case "if":
          input = value;
          break;
        case "of":
          output = value;
          break;
        default:
          // QEMU names the key only (it cut the argument at "=").
          throw new CliError(`unrecognized operand ${key}`);
      }
    }
    if (input === undefined || output === undefined) throw new CliError("Must specify both input and output files");
    if (isStreamOperand(input, "in")) {
      // A stream input is spooled (dd's skip and count need its size); the command runs on the copy.
      const operand = input;
      return withSpooledInput(operand, (t) => ctx.io.err(t), (path) =>
        ddCommand.run(args.map((arg) => (arg === `if=${operand}` ? `if=${path}` : arg)), ctx),
      );
    }
    const toStream = isStreamOperand(output, "out");
    if (toStream && outFormat !== "raw") throw new CliError("A stream output of dd must be raw (use convert for qcow2 streams)");
    const src = await openCliImage(input, {
      readOnly: true,
      forceShare,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    let dst: Pick<BlockImage, "write" | "close"> | undefined;
    try {
      if (outFormat !== "raw" && outFormat !== "qcow2") throw new CliError("Unknown file format");
      let size = BigInt(src.virtualSize);
      const bsz = BigInt(bs);
      if (count !== undefined && count * bsz < size) size = count * bsz;
      const skipBeyond = skip !== undefined && size < bsz * skip;
      const outSize = skipBeyond ? 0n : size - bsz * (skip ?? 0n);
      if (toStream) {
        dst = new StreamSink(openStreamOperand(output, "out"), Number(outSize));
      } else {
        try {
          await createImage(output, { format: outFormat, size: Number(outSize) });
        } catch (e) {
          throw new CliError(`${output}: error while creating output image: ${errorText(e)}`, { cause: e });
        }
        try {
          dst = await openImage(output, { format: outFormat, readOnly: false });
        } catch (e) {
          throw new CliError(`Could not open '${output}': ${errorText(e)}`, { cause: e });
        }
      }
      let inPos: number;
      if (skipBeyond) {
        ctx.io.err(`${PROG}: ${input}: cannot skip to specified offset\n`);
        inPos = Number(size);
      } else {
        inPos = Number(bsz * (skip ?? 0n));
      }
      const end = Number(size);
      const buf = new Uint8Array(bs);
      for (let outPos = 0; inPos < end; ) {
        const n = Math.min(bs, end - inPos);
        const chunk = buf.subarray(0, n);
        try {
          await src.read(inPos, chunk);
        } catch (e) {
          throw new CliError(`error while reading from input image file: ${strerror(e)}`, { cause: e });
        }
        inPos += n;
        try {
          await dst.write(outPos, chunk);
        } catch (e) {
          throw new CliError(`error while writing to output image file: ${strerror(e)}`, { cause: e });
        }
        outPos += n;
      }
    } catch (e) {
      await dst?.close().catch(() => undefined);
      await closeQuietly(src);
      throw e;
    }
    await dst.close();
    await src.close();
    return 0;
  },
};
