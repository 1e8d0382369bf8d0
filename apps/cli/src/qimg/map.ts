/**
 * qimg map [-f fmt] [--start-offset=offset] [--max-length=len] [--output=human|json] [-U] filename
 *
 * Entries are produced and printed as qemu-img 7.2 does: probed 1 GiB at a time, merged while mergeable,
 * printed as soon as they are complete (so the human output can stop at a compressed cluster after printing
 * what came before).
 */
import { mapEntryPairs, mapJsonEntry, type MapEntry } from "@qcowkit/core/node";
import { CliError, UsageError } from "../cli/errors";
import { openOperand, usingImage } from "../cli/open";
import { sizeArgument } from "../cli/size";
import { FORCE_SHARE_OPTION, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, parseCommand, type QimgCommand } from "./context";
import { outputFormat, type OutputFormat } from "./output-format";

/** Offsets beyond 2^53 are past the end of any image qimg opens. */
const clampSafe = (v: bigint) => Number(v > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(Number.MAX_SAFE_INTEGER) : v);

const hex = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`);

export const mapCommand: QimgCommand = {
  name: "map",
  async run(args, ctx) {
    const parsed = parseCommand(args, ctx, {
      short: ":f:hU",
      argv0: "map",
      long: [
        HELP_OPTION,
        { name: "format", hasArg: true, key: "f" },
        { name: "output", hasArg: true, key: "output" },
        OBJECT_OPTION,
        IMAGE_OPTS_OPTION,
        FORCE_SHARE_OPTION,
        { name: "start-offset", hasArg: true, key: "start-offset" },
        { name: "max-length", hasArg: true, key: "max-length" },
      ],
    });
    if (!parsed) return 0;
    const { options, operands } = parsed;
    let format: string | undefined;
    let output = "human";
    let forceShare = false;
    let imageOpts = false;
    let startOffset = 0;
    let maxLength: number | undefined;
    for (const o of options) {
      switch (o.key) {
        case "f":
          format = o.value;
          break;
        case "output":
          output = o.value!;
          break;
        case "U":
          forceShare = true;
          break;
        case "image-opts":
          imageOpts = true;
          break;
        case "start-offset":
          startOffset = clampSafe(sizeArgument("start offset", o.value!, { onWarning: ctx.warn }));
          break;
        case "max-length":
          maxLength = clampSafe(sizeArgument("max length", o.value!, { onWarning: ctx.warn }));
          break;
      }
    }
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    const mode = outputFormat(output);
    const { image: opened } = await openOperand(operands[0]!, imageOpts, {
      readOnly: true,
      forceShare,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    return usingImage(opened, async (image) => {
      let length = image.virtualSize;
      if (maxLength !== undefined) length = Math.min(startOffset + maxLength, length);
      const printer = new MapPrinter(mode, (t) => ctx.io.out(t));
      const pairs = mapEntryPairs(image, startOffset, length);
      for (;;) {
        let step: IteratorResult<[MapEntry, MapEntry | undefined]>;
        try {
          step = await pairs.next();
        } catch (e) {
          throw new CliError(`Could not read file metadata: ${e instanceof Error ? e.message : String(e)}`);
        }
        if (step.done) break;
        printer.dump(...step.value);
      }
      return 0;
    });
  },
};

/** dump_map_entry of qemu-img 7.2. */
class MapPrinter {
  constructor(
    private readonly mode: OutputFormat,
    private readonly out: (text: string) => void,
  ) {
    this.out(mode === "human" ? `${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n` : "[");
  }

  dump(e: MapEntry, next: MapEntry | undefined): void {
    if (this.mode === "human") {
      if (e.data && e.offset === undefined) {
        throw new CliError("File contains external, encrypted or compressed clusters.");
      }
      if (e.data && !e.zero) {
        this.out(`${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset ?? 0).padEnd(16)}${e.filename ?? ""}\n`);
      }
      // The human format does not tell zero from unallocated: let such neighbours merge.
      if (next && (!next.data || next.zero) && (!e.data || e.zero)) {
        next.data = false;
        next.zero = true;
      }
      return;
    }
    this.out(mapJsonEntry(e, next === undefined));
  }
}

