/**
 * qimg resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size
 *
 * As qemu-img 7.2: the last argument is the size (taken out before option parsing, so "-1M" is not an
 * option), "+"/"-" make it relative, shrinking needs --shrink, preallocation only when growing.
 */
import type { Preallocation } from "@qcowkit/core/node";
import { CliError, UsageError } from "../cli/errors";
import { openOperand, usingImage } from "../cli/open";
import { parseOptValue } from "../cli/qemu-opts";
import { HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, parseCommand, type QimgCommand, PROG } from "./context";

const PREALLOCATION_MODES = ["off", "metadata", "falloc", "full"];

export const resizeCommand: QimgCommand = {
  name: "resize",
  async run(args, ctx) {
    if (args.length < 2) throw new UsageError("Not enough arguments");
    let sizeText = args[args.length - 1]!;
    const parsed = parseCommand(args.slice(0, -1), ctx, {
      short: ":f:hq",
      argv0: "resize",
      long: [
        HELP_OPTION,
        OBJECT_OPTION,
        IMAGE_OPTS_OPTION,
        { name: "preallocation", hasArg: true, key: "preallocation" },
        { name: "shrink", hasArg: false, key: "shrink" },
      ],
    });
    if (!parsed) return 0;
    const { options, operands } = parsed;
    let format: string | undefined;
    let quiet = false;
    let shrink = false;
    let preallocation: Preallocation = "off";
    let imageOpts = false;
    for (const o of options) {
      switch (o.key) {
        case "f":
          format = o.value;
          break;
        case "q":
          quiet = true;
          break;
        case "shrink":
          shrink = true;
          break;
        case "image-opts":
          imageOpts = true;
          break;
        case "preallocation":
          if (!PREALLOCATION_MODES.includes(o.value!)) throw new CliError(`Invalid preallocation mode '${o.value}'`);
          preallocation = o.value as Preallocation;
          break;
      }
    }
    if (operands.length !== 1) throw new UsageError("Expecting image file name and size");
    const filename = operands[0]!;
    let relative = 0;
    if (sizeText.startsWith("+")) relative = 1;
    else if (sizeText.startsWith("-")) relative = -1;
    if (relative !== 0) sizeText = sizeText.slice(1);
    const n = BigInt.asIntN(64, parseOptValue({ name: "size", type: "size", help: "" }, sizeText, ctx.warn).parsed as bigint);
    const { image: opened } = await openOperand(filename, imageOpts, {
      readOnly: false,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    return usingImage(opened, async (image) => {
      const current = BigInt(image.virtualSize);
      const total = BigInt.asIntN(64, relative === 0 ? n : current + n * BigInt(relative));
      if (total <= 0n) throw new CliError("New image size must be positive");
      if (total <= current && preallocation !== "off") throw new CliError("Preallocation can only be used for growing images");
      if (total < current && !shrink) {
        ctx.io.err(`${PROG}: Use the --shrink option to perform a shrink operation.\n`);
        ctx.warn(
          "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        );
        return 1;
      }
      if (total > BigInt(Number.MAX_SAFE_INTEGER)) throw new CliError("Image sizes above 2^53 bytes are not supported by qimg");
      await image.resize(Number(total), { shrink, preallocation });
      await image.flush();
      if (!quiet) ctx.io.out("Image resized.\n");
      return 0;
    });
  },
};
