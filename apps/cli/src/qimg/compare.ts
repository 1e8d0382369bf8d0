/**
 * qimg compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2
 *
 * As qemu-img 7.2. Exit codes: 0 identical, 1 different, 2 an image could not be opened (or bad cache mode),
 * 3 block status failed, 4 a read failed.
 */
import { compareImages, type BlockImage, type CompareResult } from "@qcowkit/core/node";
import { strerror } from "../cli/errno";
import { CliError, EXIT, UsageError, reportError } from "../cli/errors";
import { programNames } from "../cli/program";
import { openOperand, usingImage } from "../cli/open";
import { Progress } from "../cli/progress";
import { FORCE_SHARE_OPTION, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, parseCommand, type CommandContext, type QimgCommand } from "./context";

export const CACHE_MODES = ["none", "off", "writeback", "writethrough", "directsync", "unsafe"];

export const compareCommand: QimgCommand = {
  name: "compare",
  async run(args, ctx) {
    const parsed = parseCommand(args, ctx, {
      short: ":hf:F:T:pqsU",
      argv0: "compare",
      long: [HELP_OPTION, OBJECT_OPTION, IMAGE_OPTS_OPTION, FORCE_SHARE_OPTION],
    });
    if (!parsed) return 0;
    let fmt1: string | undefined;
    let fmt2: string | undefined;
    let cache = "writeback";
    let progress = false;
    let quiet = false;
    let strict = false;
    let forceShare = false;
    let imageOpts = false;
    for (const o of parsed.options) {
      if (o.key === "f") fmt1 = o.value;
      else if (o.key === "F") fmt2 = o.value;
      else if (o.key === "T") cache = o.value!;
      else if (o.key === "p") progress = true;
      else if (o.key === "q") quiet = true;
      else if (o.key === "s") strict = true;
      else if (o.key === "U") forceShare = true;
      else if (o.key === "image-opts") imageOpts = true;
    }
    const bar = new Progress(ctx.io, progress && !quiet, 2.0);
    if (parsed.operands.length !== 2) throw new UsageError("Expecting two image file names");
    const [name1, name2] = parsed.operands as [string, string];
    try {
      if (!CACHE_MODES.includes(cache)) throw new CliError(`Invalid source cache option: ${cache}`, { exitCode: EXIT.COMPARE_OPEN_FAILED });
      const open = async (name: string, format: string | undefined) =>
        (
          await openOperand(name, imageOpts, {
            readOnly: true,
            forceShare,
            ...(format !== undefined ? { format } : {}),
            onWarning: (w) => ctx.io.err(`${w}\n`),
            exitCode: EXIT.COMPARE_OPEN_FAILED,
          })
        ).image;
      const image1 = await open(name1, fmt1);
      return await usingImage(image1, async () => {
        const image2 = await open(name2, fmt2);
        return usingImage(image2, () => compare(image1, image2, { name1, name2, strict, quiet, bar }, ctx));
      });
    } finally {
      bar.end();
    }
  },
};

async function compare(
  image1: BlockImage,
  image2: BlockImage,
  o: { name1: string; name2: string; strict: boolean; quiet: boolean; bar: Progress },
  ctx: CommandContext,
): Promise<number> {
  const say = (line: string) => {
    if (!o.quiet) ctx.io.out(`${line}\n`);
  };
  o.bar.print(0, 100);
  // qemu-img's stdout is a buffered stream: its size warning reaches a pipe with the next progress line
  // (each flushes), else only at exit, after an error printed meanwhile (stderr). Printed here in that order.
  const sizeWarningLine = "Warning: Image size mismatch!\n";
  const result: CompareResult = await compareImages(image1, image2, {
    strict: o.strict,
    onEvent: () => {
      o.bar.hold(sizeWarningLine);
    },
    onProgress: (delta) => o.bar.print(delta, 100),
  });
  const sizeWarning = o.bar.takeHeld() === sizeWarningLine;
  const nameOf = (which: 1 | 2) => (which === 1 ? o.name1 : o.name2);
  if (sizeWarning && (result.kind === "status-failed" || result.kind === "read-failed")) {
    const code = reportError(programNames.qimg, failure(result, nameOf), ctx.io);
    say("Warning: Image size mismatch!");
    return code;
  }
  if (sizeWarning) say("Warning: Image size mismatch!");
  switch (result.kind) {
    case "identical":
      say("Images are identical.");
      return EXIT.OK;
    case "strict-size-mismatch":
      say("Strict mode: Image size mismatch!");
      return EXIT.COMPARE_DIFFERENT;
    case "strict-status-mismatch":
      say(`Strict mode: Offset ${result.offset} block status mismatch!`);
      return EXIT.COMPARE_DIFFERENT;
    case "content-mismatch":
      say(`Content mismatch at offset ${result.offset}!`);
      return EXIT.COMPARE_DIFFERENT;
    case "status-failed":
    case "read-failed":
      throw failure(result, nameOf);
  }
}

/** The error of a failed block status or read. */
function failure(result: Extract<CompareResult, { kind: "status-failed" | "read-failed" }>, nameOf: (which: 1 | 2) => string): CliError {
  if (result.kind === "status-failed") {
    return new CliError(`Sector allocation test failed for ${nameOf(result.image)}`, { exitCode: EXIT.COMPARE_STATUS_FAILED });
  }
  return new CliError(`Error while reading offset ${result.offset} of ${nameOf(result.image)}: ${strerror(result.error)}`, {
    exitCode: EXIT.COMPARE_READ_FAILED,
  });
}
