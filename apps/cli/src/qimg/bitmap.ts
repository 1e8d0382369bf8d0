/**
 * qimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]]
 *             [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap
 *
 * As qemu-img 7.2: the actions run in the order given on the persistent bitmaps of the image (opened
 * read-write without its backing chain); the bitmaps are stored when the image is closed.
 */
import {
  Qcow2Image,
  addBitmap,
  clearBitmap,
  disableBitmap,
  enableBitmap,
  mergeBitmap,
  removeBitmap,
  type BlockImage,
} from "@qcowkit/core/node";
import { CliError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { closeQuietly, openCliImage } from "../cli/open";
import { sizeArgument } from "../cli/size";
import { defineObject } from "../cli/secrets";
import type { QimgCommand } from "./context";
import { helpText } from "./help";

type Action = { op: "add" | "remove" | "clear" | "enable" | "disable" } | { op: "merge"; source: string };

export const bitmapCommand: QimgCommand = {
  name: "bitmap",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":b:f:F:g:hq",
      argv0: "bitmap",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "add", hasArg: false, key: "add" },
        { name: "remove", hasArg: false, key: "remove" },
        { name: "clear", hasArg: false, key: "clear" },
        { name: "enable", hasArg: false, key: "enable" },
        { name: "disable", hasArg: false, key: "disable" },
        { name: "merge", hasArg: true, key: "merge" },
        { name: "granularity", hasArg: true, key: "g" },
        { name: "source-file", hasArg: true, key: "b" },
        { name: "source-format", hasArg: true, key: "F" },
      ],
    });
    let format: string | undefined;
    let srcFile: string | undefined;
    let srcFormat: string | undefined;
    let granularity = 0n;
    const actions: Action[] = [];
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "b":
          srcFile = o.value;
          break;
        case "f":
          format = o.value;
          break;
        case "F":
          srcFormat = o.value;
          break;
        case "g":
          granularity = sizeArgument("granularity", o.value!, { onWarning: ctx.warn });
          break;
        case "add":
        case "remove":
        case "clear":
        case "enable":
        case "disable":
          actions.push({ op: o.key });
          break;
        case "merge":
          actions.push({ op: "merge", source: o.value! });
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          throw new CliError("--image-opts is not supported by qimg; give the file name (and -f)");
      }
    }
    if (actions.length === 0) throw new CliError("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    if (granularity !== 0n && !actions.some((a) => a.op === "add")) throw new CliError("granularity only supported with --add");
    if (srcFormat !== undefined && srcFile === undefined) throw new CliError("-F only supported with -b");
    if (srcFile !== undefined && !actions.some((a) => a.op === "merge")) {
      throw new CliError("Merge bitmap source file only supported with --merge");
    }
    if (operands.length !== 2) throw new CliError("Expecting filename and bitmap name");
    const [filename, name] = operands as [string, string];
    const onWarning = (w: string) => ctx.io.err(`${w}\n`);
    const image = await openCliImage(filename, { readOnly: false, backing: null, ...(format !== undefined ? { format } : {}), onWarning });
    let source: BlockImage | undefined;
    try {
      if (srcFile !== undefined) {
        source = await openCliImage(srcFile, { readOnly: true, backing: null, ...(srcFormat !== undefined ? { format: srcFormat } : {}), onWarning });
      }
      for (const a of actions) {
        try {
          if (!(image instanceof Qcow2Image)) throw new Error(a.op === "add" ? `Can't make bitmap '${name}' persistent in '#block1': Not supported` : `Dirty bitmap '${name}' not found`);
          switch (a.op) {
            case "add":
              await addBitmap(image, name, {
                ...(granularity !== 0n ? { granularity: Number(granularity & 0xffffffffn) } : {}),
                nodeName: "#block1",
              });
              break;
            case "remove":
              await removeBitmap(image, name);
              break;
            case "clear":
              await clearBitmap(image, name);
              break;
            case "enable":
              await enableBitmap(image, name);
              break;
            case "disable":
              await disableBitmap(image, name);
              break;
            case "merge": {
              const src = source ?? image;
              if (!(src instanceof Qcow2Image)) throw new Error(`Dirty bitmap '${a.source}' not found`);
              await mergeBitmap(image, name, src, a.source);
              break;
            }
          }
        } catch (e) {
          throw new CliError(`Operation ${a.op} on bitmap ${name} failed: ${errorText(e)}`, { cause: e });
        }
      }
    } catch (e) {
      await closeQuietly(source);
      await closeQuietly(image);
      throw e;
    }
    await source?.close();
    await image.close();
    return 0;
  },
};
