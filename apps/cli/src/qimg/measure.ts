/**
 * qimg measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]
 *
 * As qemu-img 7.2: the default target format is raw; the numbers are QEMU's ("required size", "fully
 * allocated size", and "bitmaps size" when the source and the target keep persistent bitmaps).
 */
import { measureImage, type SnapshotSelector, type BlockImage, type MeasureTarget, type Preallocation, toQemuJson } from "@qcowkit/core/node";
import { loadSnapshotReadOnly } from "@qcowkit/core/internal";
import { CliError, ExitStatus, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { openOperand, usingImage } from "../cli/open";
import { QemuOpts, accumulateOptions, appendDescs } from "../cli/qemu-opts";
import { sizeArgument } from "../cli/size";
import { defineObject } from "../cli/secrets";
import type { CommandContext, QimgCommand } from "./context";
import { FILE_CREATE_OPTS, QCOW2_CREATE_OPTS, RAW_CREATE_OPTS } from "./create-options";
import { PROG, helpText } from "./help";
import { encryptionCreateOptions } from "./create-encryption";
import { parseSnapshotParam } from "./convert";
import { outputFormat } from "./output-format";

const INT64_MAX = (1n << 63n) - 1n;

function targetOptions(format: "qcow2" | "raw", text: string | undefined, ctx: CommandContext): MeasureTarget {
  const descs = appendDescs(format === "qcow2" ? QCOW2_CREATE_OPTS : RAW_CREATE_OPTS, FILE_CREATE_OPTS);
  let opts: QemuOpts;
  try {
    opts = QemuOpts.parse(descs, text, ctx.warn);
  } catch (e) {
    ctx.io.err(`${PROG}: ${(e as Error).message}\n${PROG}: Invalid options for file format '${format}'\n`);
    throw new ExitStatus(1);
  }
  const t: MeasureTarget = { format };
  const prealloc = opts.string("preallocation");
  if (prealloc !== undefined) {
    if (!["off", "metadata", "falloc", "full"].includes(prealloc)) throw new CliError(`Invalid parameter '${prealloc}'`);
    t.preallocation = prealloc as Preallocation;
  }
  if (format === "raw") return t;
  const cs = opts.integer("cluster_size");
  if (cs !== undefined) {
    const n = Number(cs);
    if (n < 512 || n > 2 * 1024 * 1024 || (n & (n - 1)) !== 0) throw new CliError("Cluster size must be a power of two between 512 and 2048k");
    t.clusterSize = n;
  }
  const bits = opts.integer("refcount_bits");
  if (bits !== undefined) t.refcountBits = Number(BigInt.asIntN(64, bits));
  if (opts.bool("extended_l2")) {
    t.extendedL2 = true;
    if ((t.clusterSize ?? 65536) < 16384) throw new CliError("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  }
  if (opts.string("backing_file") !== undefined) t.backingFile = true;
  const encrypt = encryptionCreateOptions(opts);
  if (encrypt?.format === "luks") t.luks = encrypt;
  const compat = opts.string("compat");
  if (compat !== undefined) {
    if (compat === "0.10" || compat === "v2") t.version = 2;
    else if (compat === "1.1" || compat === "v3") t.version = 3;
    else throw new CliError(`Invalid parameter value for 'compat': ${compat}`);
  }
  return t;
}

export const measureCommand: QimgCommand = {
  name: "measure",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":hf:O:o:l:U",
      argv0: "measure",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "object", hasArg: true, key: "object" },
        { name: "output", hasArg: true, key: "output" },
        { name: "size", hasArg: true, key: "size" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    let format: string | undefined;
    let outFormat = "raw";
    let optionText: string | undefined;
    let output = "human";
    let size: bigint | undefined;
    let forceShare = false;
    let imageOpts = false;
    let snapshot: SnapshotSelector | undefined;
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
        case "o":
          optionText = accumulateOptions(optionText, o.value!);
          break;
        case "output":
          output = o.value!;
          break;
        case "size":
          size = sizeArgument("image size", o.value!, { max: INT64_MAX, onWarning: ctx.warn });
          break;
        case "U":
          forceShare = true;
          break;
        case "l":
          snapshot = parseSnapshotParam(o.value!);
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          imageOpts = true;
          break;
      }
    }
    const mode = outputFormat(output);
    if (operands.length > 1) throw new CliError("At most one filename argument is allowed.");
    const filename = operands[0];
    if (filename === undefined && (imageOpts || format !== undefined || snapshot !== undefined)) {
      throw new CliError("--image-opts, -f, and -l require a filename argument.");
    }
    if (filename !== undefined && size !== undefined) throw new CliError("--size N cannot be used together with a filename.");
    if (filename === undefined && size === undefined) throw new CliError("Either --size N or one filename must be specified.");
    const measure = async (source: BlockImage | undefined) => {
      if (outFormat !== "qcow2" && outFormat !== "raw") throw new CliError(`Unknown file format '${outFormat}'`);
      const target = targetOptions(outFormat, optionText, ctx);
      if (size !== undefined && size > BigInt(Number.MAX_SAFE_INTEGER)) {
        if (outFormat === "qcow2") throw new CliError("The image size is too large (try using a larger cluster size)");
        throw new CliError("Image sizes above 2^53 bytes are not supported by qimg");
      }
      return measureImage(target, source ? { source } : { size: Number(size) });
    };
    const result =
      filename === undefined
        ? await measure(undefined)
        : await usingImage(
            (
              await openOperand(filename, imageOpts, {
                readOnly: true,
                forceShare,
                ...(format !== undefined ? { format } : {}),
                onWarning: (w) => ctx.io.err(`${w}\n`),
              })
            ).image,
            async (source) => {
              if (snapshot !== undefined) {
                try {
                  await loadSnapshotReadOnly(source, snapshot);
                } catch (e) {
                  throw new CliError(`Failed to load snapshot: ${errorText(e)}`, { cause: e });
                }
              }
              return measure(source);
            },
          );
    if (mode === "human") {
      let out = `required size: ${result.required}\nfully allocated size: ${result.fullyAllocated}\n`;
      if (result.bitmaps !== undefined) out += `bitmaps size: ${result.bitmaps}\n`;
      ctx.io.out(out);
    } else {
      const value: Record<string, number> = {};
      if (result.bitmaps !== undefined) value.bitmaps = result.bitmaps;
      value.required = result.required;
      value["fully-allocated"] = result.fullyAllocated;
      ctx.io.out(`${toQemuJson(value)}\n`);
    }
    return 0;
  },
};
