/**
 * Block driver options as a string ("driver=qcow2,file.filename=x.qcow2,data-file.filename=x.raw"): what
 * --image-opts takes in qimg and qio, and qio's `open -o`. The keys qcowkit understands are BLOCK_OPTION_KEYS;
 * others are refused in QEMU's words.
 */
import { CliError } from "./errors";
import { splitOptionList } from "./qemu-opts";
import { takeRemoteOptions } from "./remote-options";

export interface BlockOptions {
  filename?: string;
  format?: string;
  dataFile?: string;
  /** null: open without the backing file. */
  backing?: string | null;
  backingFormat?: string;
  readOnly?: boolean;
  forceShare?: boolean;
  discard?: "ignore" | "unmap";
  /** encrypt.*: the key secret's id, the format, and the names (after "encrypt.") of any other encrypt option. */
  encrypt?: EncryptOptions;
}

export interface EncryptOptions {
  keySecret?: string;
  format?: string;
  unexpected: string[];
}

const BOOL: Record<string, boolean> = { on: true, yes: true, true: true, y: true, off: false, no: false, false: false, n: false };

/** Keys understood (with --image-opts and `open -o`). */
export const BLOCK_OPTION_KEYS = [
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
  "encrypt.key-secret",
  "encrypt.format",
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
 * Parse `text`. `imageOpts`: the string describes the whole image (--image-opts): a bare word is a node name
 * (refused), and either driver or file must be given.
 */
export function parseBlockOptions(
  text: string,
  opts: {
    imageOpts: boolean;
    /** A first word without "=" names a node (qemu-img), or is a short-form boolean (qemu-io, with a warning). */
    bareWord?: "node-name" | "boolean";
    defaultFormat?: string;
    onWarning?: (w: string) => void;
  },
): BlockOptions {
  const out: BlockOptions = {};
  const options: Array<[string, string]> = [];
  for (const element of splitOptionList(text)) {
    if (element === "") continue;
    const eq = element.indexOf("=");
    if (eq < 0 && opts.imageOpts && options.length === 0 && opts.bareWord !== "boolean") {
      throw new CliError(`Cannot find device='${element}' nor node-name='${element}'`);
    }
    if (eq < 0 && opts.bareWord === "boolean") {
      opts.onWarning?.(`short-form boolean option '${element}' deprecated\nPlease use ${element}=on instead`);
    }
    // A bare word is a short-form boolean ("x" means "x=on").
    options.push(eq < 0 ? [element, "on"] : [element.slice(0, eq), element.slice(eq + 1)]);
  }
  // http(s) protocol options become a json: name (remote-options.ts).
  const remote = takeRemoteOptions(options);
  if (remote.names["file."] !== undefined) out.filename = remote.names["file."];
  if (remote.names["data-file."] !== undefined) out.dataFile = remote.names["data-file."];
  options.splice(0, options.length, ...remote.rest);
  let driver = opts.defaultFormat;
  for (const [key, value] of options) if (key === "driver") driver = value;
  const hasFile = out.filename !== undefined || options.some(([key]) => key === "file" || key === "file.filename");
  if (opts.imageOpts && !hasFile && driver === undefined) throw new CliError("Must specify either driver or file");
  for (const [key, value] of options) {
    switch (key) {
      case "driver":
        out.format = value;
        break;
      case "file":
      case "file.filename":
        out.filename = value;
        break;
      case "data-file":
      case "data-file.filename":
        out.dataFile = value;
        break;
      case "backing":
        if (value !== "" && value !== "null") throw new CliError("Only backing=null (or backing.file.filename=NAME) is supported");
        if (value === "") opts.onWarning?.('Use of "backing": "" is deprecated; use "backing": null instead');
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
        if (value !== "file") throw new CliError(`Unknown protocol '${value}' (only local files are supported)`);
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
      default: {
        if (key.startsWith("encrypt.")) {
          // Checked against the image when it is opened (only encrypted images look at them).
          const e = (out.encrypt ??= { unexpected: [] });
          const name = key.slice("encrypt.".length);
          if (name === "key-secret") e.keySecret = value;
          else if (name === "format") e.format = value;
          else e.unexpected.push(name);
          break;
        }
        throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
      }
    }
  }
  return out;
}
