/**
 * qimg amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename
 *
 * As qemu-img 7.2: -o lists are merged, "help" lists the amend options of the format, options that exist only
 * for creation are refused with QEMU's hint, and the engine applies the rest in QEMU's order.
 */
import { LuksImage, Qcow2Image, amendEncryption, amendQcow2, type AmendOptions, type LuksAmendOptions } from "@qcowkit/core/node";
import { AMEND_BACKING_HINT } from "@qcowkit/core/internal";
import { isQcow2Error } from "@qcowkit/spec";
import { CliError, ExitStatus, UsageError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { blockOpenOptions, closeQuietly, openCliImage, type CliOpenOptions } from "../cli/open";
import { Progress } from "../cli/progress";
import { parseBlockOptions } from "../cli/block-options";
import { QemuOpts, accumulateOptions, formatHelp, hasHelpOption } from "../cli/qemu-opts";
import { defineObject, lookupSecretText } from "../cli/secrets";
import type { CommandContext, QimgCommand } from "./context";
import { LUKS_AMEND_OPTS, LUKS_CREATE_OPTS, QCOW2_AMEND_OPTS, QCOW2_CREATE_OPTS } from "./create-options";
import { PROG, helpText } from "./help";

function printAmendHelp(format: string, ctx: CommandContext): number {
  if (format !== "qcow2" && format !== "luks") throw new CliError(`Format driver '${format}' does not support option amendment`);
  ctx.io.out(formatHelp(format === "luks" ? LUKS_AMEND_OPTS : QCOW2_AMEND_OPTS, `Amend options for '${format}':`, false));
  return 0;
}

/** Parse the -o list against the amend options; an option known only at creation gets QEMU's hint. */
function parseAmendOptions(text: string, ctx: CommandContext, format: string): QemuOpts {
  try {
    return QemuOpts.parse(format === "luks" ? LUKS_AMEND_OPTS : QCOW2_AMEND_OPTS, text, ctx.warn);
  } catch (e) {
    let createOnly = false;
    try {
      QemuOpts.parse(format === "luks" ? LUKS_CREATE_OPTS : QCOW2_CREATE_OPTS, text);
      createOnly = true;
    } catch {
      createOnly = false;
    }
    if (!createOnly) throw e;
    ctx.io.err(`${PROG}: ${errorText(e)}\nThis option is only supported for image creation\n`);
    throw new ExitStatus(1);
  }
}

function toAmendOptions(opts: QemuOpts): AmendOptions {
  const o: AmendOptions = {};
  const s = (n: string) => opts.string(n);
  if (opts.has("compat")) o.compat = s("compat")!;
  if (opts.has("size")) {
    const v = opts.integer("size")!;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CliError("Image sizes above 2^53 bytes are not supported by qimg");
    o.size = Number(v);
  }
  if (opts.has("backing_file")) o.backingFile = s("backing_file")!;
  if (opts.has("backing_fmt")) o.backingFormat = s("backing_fmt")!;
  if (opts.has("lazy_refcounts")) o.lazyRefcounts = opts.bool("lazy_refcounts")!;
  if (opts.has("refcount_bits")) o.refcountBits = Number(BigInt.asIntN(64, opts.integer("refcount_bits")!));
  if (opts.has("data_file")) o.dataFile = s("data_file")!;
  if (opts.has("data_file_raw")) o.dataFileRaw = opts.bool("data_file_raw")!;
  return o;
}

/** The key slot options (qcow2: encrypt.state and so on; luks: state). */
function keyslotOptions(opts: QemuOpts, prefix: string): LuksAmendOptions {
  const state = opts.string(`${prefix}state`);
  if (state === undefined) throw new CliError("Parameter 'state' is missing");
  if (state !== "active" && state !== "inactive") throw new CliError(`Parameter 'state' does not accept value '${state}'`);
  const o: LuksAmendOptions = { state };
  const keyslot = opts.integer(`${prefix}keyslot`);
  if (keyslot !== undefined) o.keyslot = Number(BigInt.asIntN(64, keyslot));
  const oldSecret = opts.string(`${prefix}old-secret`);
  if (oldSecret !== undefined) o.oldSecret = () => lookupSecretText(oldSecret);
  const newSecret = opts.string(`${prefix}new-secret`);
  if (newSecret !== undefined) o.newSecret = () => lookupSecretText(newSecret);
  const iterTime = opts.integer(`${prefix}iter-time`);
  if (iterTime !== undefined) o.iterTimeMs = Number(BigInt.asIntN(64, iterTime));
  return o;
}

export const amendCommand: QimgCommand = {
  name: "amend",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":ho:f:t:pqU",
      argv0: "amend",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force", hasArg: false, key: "force" },
      ],
    });
    let format: string | undefined;
    let optionText: string | undefined;
    let progress = false;
    let quiet = false;
    let imageOpts = false;
    let force = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "o":
          optionText = accumulateOptions(optionText, o.value!);
          break;
        case "f":
          format = o.value;
          break;
        case "p":
          progress = true;
          break;
        case "q":
          quiet = true;
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          imageOpts = true;
          break;
        case "force":
          force = true;
          break;
      }
    }
    if (optionText === undefined) throw new UsageError("Must specify options (-o)");
    if (quiet) progress = false;
    if (format !== undefined && hasHelpOption(optionText)) return printAmendHelp(format, ctx);
    if (operands.length !== 1) throw new CliError("Expecting one image file name");
    let filename = operands[0]!;
    let given: Partial<CliOpenOptions> = {};
    const operand = filename;
    if (imageOpts) {
      const o = parseBlockOptions(filename, { imageOpts: true });
      if (o.filename === undefined) throw new CliError('A block device must be specified for "file"');
      filename = o.filename;
      const { readOnly: _readOnly, ...rest } = blockOpenOptions(o);
      given = { ...rest, errorPrefix: `Could not open '${operand}': ` };
    }
    const image = await openCliImage(filename, {
      ...given,
      readOnly: false,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    const bar = new Progress(ctx.io, progress);
    try {
      if (hasHelpOption(optionText)) return printAmendHelp(image.format, ctx);
      if (!(image instanceof Qcow2Image) && !(image instanceof LuksImage)) {
        throw new CliError(`Format driver '${image.format}' does not support option amendment`);
      }
      const parsed = parseAmendOptions(optionText, ctx, image.format);
      const prefix = image instanceof LuksImage ? "" : "encrypt.";
      const changesKeyslots = parsed.names().some((n) => n.startsWith(prefix));
      bar.print(0);
      try {
        // QEMU changes the key slots first (a refusal there leaves the rest of the image as it was).
        if (changesKeyslots) await amendEncryption(image, () => keyslotOptions(parsed, prefix), force);
        if (image instanceof Qcow2Image) await amendQcow2(image, { ...toAmendOptions(parsed), onProgress: (done, total) => bar.status(done, total) });
      } catch (e) {
        const message = errorText(e);
        // QEMU's driver reports a damaged table itself before the step that failed on it.
        if (isQcow2Error(e) && isQcow2Error(e.cause) && e.cause.code === "INVALID_IMAGE") ctx.io.err(`${PROG}: ${e.cause.message}\n`);
        if (message === "Cannot amend the backing file") {
          ctx.io.err(`${PROG}: ${message}\n${AMEND_BACKING_HINT.replace("qemu-img", PROG)}\n`);
          throw new ExitStatus(1);
        }
        throw new CliError(message, { cause: e });
      }
      bar.print(100);
    } catch (e) {
      bar.end();
      await closeQuietly(image);
      throw e;
    }
    bar.end();
    await image.close();
    return 0;
  },
};
