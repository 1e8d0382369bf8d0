/**
 * What qio opens: a file name, or block driver options ("driver=qcow2,file.filename=x.qcow2,
 * data-file.filename=x.raw") given to --image-opts or to the open command's -o. The keys qcowkit understands
 * are listed in OPTION_KEYS; others are refused in QEMU's words.
 */
import { CliError } from "../cli/errors";
import { splitOptionList } from "../cli/qemu-opts";

export interface OpenRequest {
  filename: string;
  format?: string;
  readOnly: boolean;
  forceShare: boolean;
  discard: "ignore" | "unmap";
  dataFile?: string;
  backing?: string | null;
  backingFormat?: string;
}

const BOOL: Record<string, boolean> = { on: true, yes: true, true: true, y: true, off: false, no: false, false: false, n: false };

/** Block driver option keys qio takes (with --image-opts and `open -o`). */
export const OPTION_KEYS = [
  "driver",
  "file",
  "file.filename",
  "file.driver",
  "data-file",
  "data-file.filename",
  "data-file.driver",
  "backing",
  "backing.file.filename",
  "backing.driver",
  "read-only",
  "force-share",
  "discard",
  "cache.direct",
  "cache.no-flush",
];

export function parseDiscard(mode: string): "ignore" | "unmap" {
  if (mode === "ignore" || mode === "off") return "ignore";
  if (mode === "unmap" || mode === "on") return "unmap";
  throw new CliError(`Invalid discard option: ${mode}`);
}

function parseBool(key: string, value: string): boolean {
  const b = BOOL[value];
  if (b === undefined) throw new CliError(`Parameter '${key}' expects 'on' or 'off'`);
  return b;
}

/**
 * Apply "key=value,..." to `req`. `imageOpts`: the string is the whole description (--image-opts), so
 * driver or file must be given.
 */
export function applyBlockOptions(req: OpenRequest, text: string, imageOpts: boolean): OpenRequest {
  const out: OpenRequest = { ...req };
  let sawFile = false;
  const options: Array<[string, string]> = [];
  for (const element of splitOptionList(text)) {
    if (element === "") continue;
    const eq = element.indexOf("=");
    // A bare word is a short-form boolean ("x" means "x=on").
    options.push(eq < 0 ? [element, "on"] : [element.slice(0, eq), element.slice(eq + 1)]);
  }
  let driver: string | undefined = out.format;
  for (const [key, value] of options) if (key === "driver") driver = value;
  for (const [key, value] of options) {
    switch (key) {
      case "driver":
        out.format = value;
        break;
      case "file":
      case "file.filename":
        out.filename = value;
        sawFile = true;
        break;
      case "data-file":
      case "data-file.filename":
        out.dataFile = value;
        break;
      case "backing":
        if (value !== "" && value !== "null") throw new CliError("qio takes backing=null, or backing.file.filename=NAME");
        out.backing = null;
        break;
      case "backing.file.filename":
        out.backing = value;
        break;
      case "backing.driver":
        out.backingFormat = value;
        break;
      case "file.driver":
      case "data-file.driver":
        if (value !== "file") throw new CliError(`Unknown protocol '${value}' (qio opens local files only)`);
        break;
      case "read-only":
        out.readOnly = parseBool(key, value);
        break;
      case "force-share":
        out.forceShare = parseBool(key, value);
        break;
      case "discard":
        out.discard = parseDiscard(value);
        break;
      case "cache.direct":
      case "cache.no-flush":
        parseBool(key, value);
        break;
      default:
        throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
    }
  }
  if (imageOpts && !sawFile && driver === undefined) throw new CliError("Must specify either driver or file");
  return out;
}
