/**
 * Block driver options as a string ("driver=qcow2,file.filename=x.qcow2,data-file.filename=x.raw"): what
 * --image-opts takes in qimg and qio, and qio's `open -o`. The keys qcowkit understands are BLOCK_OPTION_KEYS;
 * others are refused in QEMU's words.
 */
import { BLKDEBUG_IO_TYPES, checkBlkdebugLimits, type BlkdebugInjectError, type BlkdebugIoType, type BlkdebugLimits, type BlkdebugSetState } from "@qcowkit/datafile";
import { CliError } from "./errors";
import { parseOptValue, splitOptionList } from "./qemu-opts";
import { takeRemoteOptions } from "./remote-options";
import { takeNetworkOptions } from "./network-options";
import { isProtocolDriver, takeFileImageOptions } from "./layered-options";

export interface BlockOptions {
  filename?: string;
  format?: string;
  dataFile?: string;
  /** null: open without the backing file. */
  backing?: string | null;
  backingFormat?: string;
  readOnly?: boolean;
  forceShare?: boolean;
  /** file.locking: off opens without QEMU's image lock. */
  locking?: "on" | "off";
  discard?: "ignore" | "unmap";
  /** lazy-refcounts: overrides the image's compatible feature bit for this open. */
  lazyRefcounts?: boolean;
  /**
   * overlap-check.inactive-l2, or overlap-check=all without it: writes are checked against the snapshots' L2
   * tables (the other overlap checks are always made).
   */
  overlapCheckInactiveL2?: boolean;
  /** qcow2's cache options (bytes), checked as QEMU checks them; qcowkit sizes its caches itself. */
  qcow2Cache?: Qcow2CacheOptions;
  /** data-file.driver=null-co: the data file is a null-co node (size: 1 GiB by default). */
  dataFileNullCo?: NullCoOptions;
  /** driver=null-co: its options. */
  nullCo?: NullCoOptions;
  /** The data file is under a blkdebug node with these rules. */
  dataFileBlkdebug?: BlkdebugNodeOptions;
  /** The image file is under a blkdebug node (`file.driver=blkdebug`, or a `blkdebug:` filename). */
  fileBlkdebug?: BlkdebugNodeOptions;
  /** `driver=blkdebug` over the format node: its request limits (checked; the bytes are the same). */
  topBlkdebug?: BlkdebugLimits;
  /** file.driver=quorum: the children's file names and the vote threshold. */
  fileQuorum?: QuorumOptions;
  /** node-name: accepted (QEMU's graph name; qcowkit has one node per image). */
  nodeName?: string;
  /** file.node-name, backing.node-name, data-file.node-name: the names given to the children (reopen keeps them). */
  childNodeNames?: Record<string, string>;
  /**
   * The file child is itself an image (file.driver=qcow2: a format on a format), or this node is a filter over
   * one (driver=compress): the child's options, opened first (see layered-options.ts).
   */
  fileImage?: BlockOptions;
  /** encrypt.*: the key secret's id, the format, and the names (after "encrypt.") of any other encrypt option. */
  encrypt?: EncryptOptions;
  /** backing.encrypt.*: the backing image's. */
  backingEncrypt?: EncryptOptions;
}

/** A blkdebug node's options: rules given inline, a config file's name, request limits. */
export interface BlkdebugNodeOptions extends BlkdebugLimits {
  configFile?: string;
  injectError: BlkdebugInjectError[];
  setState: BlkdebugSetState[];
  /** A raw format node sits on it (`data-file.driver=raw,data-file.file.driver=blkdebug`). */
  rawAbove?: boolean;
}

const BLKDEBUG_LIMIT_KEYS: Record<string, keyof BlkdebugLimits> = {
  align: "align",
  "max-transfer": "maxTransfer",
  "opt-write-zero": "optWriteZero",
  "max-write-zero": "maxWriteZero",
  "opt-discard": "optDiscard",
  "max-discard": "maxDiscard",
};

/**
 * Take the options of the blkdebug node at `prefix` ("", "file.", "data-file.", "data-file.file.") out of
 * `options`, when that node's driver is blkdebug. Its image's name and (for the top node) its image's
 * options come back separately: `imageKeys` are the image node's own keys without "image.".
 */
function takeBlkdebug(
  options: Array<[string, string]>,
  prefix: string,
): { node: BlkdebugNodeOptions; image?: string; imageKeys: Array<[string, string]> } | undefined {
  if (!options.some(([k, v]) => k === `${prefix}driver` && v === "blkdebug")) return undefined;
  const node: BlkdebugNodeOptions = { injectError: [], setState: [] };
  let image: string | undefined;
  const imageKeys: Array<[string, string]> = [];
  const rest: Array<[string, string]> = [];
  for (const [key, value] of options) {
    if (!key.startsWith(prefix)) {
      rest.push([key, value]);
      continue;
    }
    const k = key.slice(prefix.length);
    const rule = /^(inject-error|set-state)\.(\d+)\.([\w-]+)$/.exec(k);
    if (k === "driver") continue;
    else if (k === "config") node.configFile = value;
    else if (k === "image" || k === "x-image" || k === "image.filename") image = value;
    else if (BLKDEBUG_LIMIT_KEYS[k] !== undefined) {
      node[BLKDEBUG_LIMIT_KEYS[k]] = Number(parseOptValue({ name: k, type: "size", help: "" }, value).parsed as bigint);
    } else if (rule) blkdebugRuleField(node, rule[1]!, Number(rule[2]), rule[3]!, key, value);
    else if (k === "node-name" || k.startsWith("take-child-perms.") || k.startsWith("unshare-child-perms.")) continue;
    else if (k.startsWith("image.")) imageKeys.push([k.slice("image.".length), value]);
    else if (prefix === "" && (k === "read-only" || k === "force-share" || k === "discard" || k.startsWith("cache."))) rest.push([key, value]);
    else throw new CliError(`Block format 'blkdebug' does not support the option '${k}'`);
  }
  options.splice(0, options.length, ...rest);
  checkBlkdebugLimitsCli(node);
  return { node, ...(image !== undefined ? { image } : {}), imageKeys };
}

function blkdebugRuleField(node: BlkdebugNodeOptions, list: string, index: number, field: string, key: string, value: string): void {
  const number = (): number => {
    if (!/^\d+$/.test(value)) throw new CliError(`Parameter '${key}' expects a number`);
    return Number(value);
  };
  if (list === "set-state") {
    const rule = (node.setState[index] ??= { event: "" });
    if (field === "event") rule.event = value;
    else if (field === "state") rule.state = number();
    else if (field === "new_state") rule.newState = number();
    else throw new CliError(`Invalid parameter '${field}'`);
    return;
  }
  const rule = (node.injectError[index] ??= { event: "" });
  if (field === "event") rule.event = value;
  else if (field === "state") rule.state = number();
  else if (field === "iotype") {
    if (!(BLKDEBUG_IO_TYPES as readonly string[]).includes(value)) throw new CliError(`Invalid parameter '${value}'`);
    rule.iotype = value as BlkdebugIoType;
  } else if (field === "errno") rule.errno = number();
  else if (field === "sector") rule.offset = number() * 512;
  else if (field === "once") rule.once = parseBool(key, value);
  else if (field === "immediately") rule.immediately = parseBool(key, value);
  else throw new CliError(`Invalid parameter '${field}'`);
}

export interface QuorumOptions {
  children: string[];
  voteThreshold: number;
}

/** `file.driver=quorum` with `file.children.N.filename` (file children) and `file.vote-threshold`: taken out. */
function takeQuorum(options: Array<[string, string]>): QuorumOptions | undefined {
  if (!options.some(([k, v]) => k === "file.driver" && v === "quorum")) return undefined;
  const children: string[] = [];
  let voteThreshold: number | undefined;
  const rest: Array<[string, string]> = [];
  for (const [key, value] of options) {
    if (!key.startsWith("file.")) {
      rest.push([key, value]);
      continue;
    }
    const k = key.slice("file.".length);
    const child = /^children\.(\d+)\.(driver|filename)$/.exec(k);
    if (k === "driver" || k === "read-pattern" || k === "rewrite-corrupted" || k === "blkverify") continue;
    else if (k === "vote-threshold") {
      if (!/^\d+$/.test(value)) throw new CliError("Parameter 'vote-threshold' expects a number");
      voteThreshold = Number(value);
    } else if (child) {
      if (child[2] === "driver" && value !== "file") throw new CliError(`Unknown protocol '${value}' (only local files are supported)`);
      if (child[2] === "filename") children[Number(child[1])] = value;
    } else throw new CliError(`Block format 'quorum' does not support the option '${k}'`);
  }
  if (voteThreshold === undefined) throw new CliError("Parameter 'vote-threshold' is missing");
  options.splice(0, options.length, ...rest);
  return { children: children.filter((c) => c !== undefined), voteThreshold };
}

export interface NullCoOptions {
  size?: number;
  readZeroes?: boolean;
}

export interface Qcow2CacheOptions {
  "cache-size"?: bigint;
  "l2-cache-size"?: bigint;
  "refcount-cache-size"?: bigint;
  "l2-cache-entry-size"?: bigint;
}

/**
 * qcow2's checks of its cache options at open (read_cache_sizes and the entry size check), in QEMU's words.
 * `clusterSize` is known once the image is open; without it only the checks among the sizes are made.
 */
export function checkQcow2Cache(c: Qcow2CacheOptions, clusterSize?: number): void {
  const total = c["cache-size"];
  const l2 = c["l2-cache-size"];
  const refcount = c["refcount-cache-size"];
  if (total !== undefined) {
    if (l2 !== undefined && refcount !== undefined) {
      throw new CliError("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
    }
    if (l2 !== undefined && l2 > total) throw new CliError("l2-cache-size may not exceed cache-size");
    if (refcount !== undefined && refcount > total) throw new CliError("refcount-cache-size may not exceed cache-size");
  }
  const entry = c["l2-cache-entry-size"];
  if (entry !== undefined && clusterSize !== undefined) {
    if (entry < 512n || entry > BigInt(clusterSize) || (entry & (entry - 1n)) !== 0n) {
      throw new CliError(`L2 cache entry size must be a power of two between 512 and the cluster size (${clusterSize})`);
    }
  }
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
  "file.locking",
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
  ...[
    "lazy-refcounts",
    "node-name",
    "file.node-name",
    "data-file.node-name",
    "backing.node-name",
    "file.align",
  ],
];

/**
 * qcow2 runtime options that tune QEMU's caches and checks (qcow2's QCOW2_OPT_*): values checked as QEMU
 * checks them, no effect on the result (qcowkit sizes its caches itself and checks every metadata write
 * against the metadata it knows).
 */
const QCOW2_TUNING_SIZES = ["l2-cache-size", "l2-cache-entry-size", "refcount-cache-size", "cache-size"];
const QCOW2_TUNING_BOOLS = ["pass-discard-request", "pass-discard-snapshot", "pass-discard-other", "discard-no-unref"];
const OVERLAP_CHECK_TEMPLATES = ["none", "constant", "cached", "all"];
const OVERLAP_CHECK_PARTS = ["main-header", "active-l1", "active-l2", "refcount-table", "refcount-block", "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory"];

function checkBlkdebugLimitsCli(l: BlkdebugLimits): void {
  try {
    checkBlkdebugLimits(l);
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

export function parseDiscard(mode: string): "ignore" | "unmap" {
  if (mode === "ignore" || mode === "off") return "ignore";
  if (mode === "unmap" || mode === "on") return "unmap";
  throw new CliError(`Invalid discard option: ${mode}`);
}

/** file-posix's aio option: how requests reach the file (qcowkit has its own I/O; the value is checked). */
function parseAio(value: string): void {
  if (!["threads", "native", "io_uring"].includes(value)) {
    throw new CliError(`invalid parameter value: ${value}`);
  }
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
  return blockOptionsFromPairs(options, opts);
}

/** Block options from (key, value) pairs: those of an option string, or of a json: filename. */
export function blockOptionsFromPairs(
  options: Array<[string, string]>,
  opts: { imageOpts: boolean; defaultFormat?: string; onWarning?: (w: string) => void },
): BlockOptions {
  const out: BlockOptions = {};
  // http(s) protocol options become a json: name (remote-options.ts).
  const remote = takeRemoteOptions(options);
  if (remote.names["file."] !== undefined) out.filename = remote.names["file."];
  if (remote.names["data-file."] !== undefined) out.dataFile = remote.names["data-file."];
  options.splice(0, options.length, ...remote.rest);
  // nbd and ssh nodes become the names the core opens (network-options.ts).
  const network = takeNetworkOptions(options);
  const networkName = network.names[""] ?? network.names["file."];
  if (networkName !== undefined) out.filename = networkName;
  options.splice(0, options.length, ...network.rest);
  // blkdebug nodes: over the format node (driver=blkdebug), under it (file.driver=blkdebug), over the data file.
  const top = takeBlkdebug(options, "");
  const topImageDriver = top?.imageKeys.find(([k]) => k === "driver")?.[1];
  if (top && (topImageDriver === undefined || topImageDriver === "file" || topImageDriver === "null-co")) {
    // blkdebug over a protocol node (a file, null-co): the raw bytes under blkdebug. Named as QEMU names it,
    // blkdebug:CONFIG:FILE, when it has no inline rules.
    const image = top.image ?? (topImageDriver === "null-co" ? "null-co://" : undefined);
    for (const [k] of top.imageKeys) if (k !== "driver") throw new CliError(`Block format 'blkdebug' does not support the option 'image.${k}'`);
    if (image === undefined) throw new CliError("Could not open blkdebug image: A block device must be specified for \"image\"");
    const { injectError, setState, configFile } = top.node;
    if (injectError.length === 0 && setState.length === 0) out.filename = `blkdebug:${configFile ?? ""}:${image}`;
    else {
      out.fileBlkdebug = top.node;
      out.filename = image;
    }
    options.push(["driver", "raw"]);
  } else if (top) {
    const { injectError, setState, configFile, rawAbove: _rawAbove, ...limits } = top.node;
    if (injectError.length > 0 || setState.length > 0 || configFile !== undefined) {
      throw new CliError("blkdebug rules over a format node are not supported; put blkdebug under it (file.driver=blkdebug)");
    }
    out.topBlkdebug = limits;
    if (top.image !== undefined) out.filename = top.image;
    options.push(...top.imageKeys);
  }
  const fileNode = takeBlkdebug(options, "file.");
  if (fileNode) {
    out.fileBlkdebug = fileNode.node;
    if (fileNode.image !== undefined) out.filename = fileNode.image;
    for (const [k, v] of fileNode.imageKeys) if (k !== "driver" || v !== "file") throw new CliError(`Block format 'blkdebug' does not support the option 'image.${k}'`);
  }
  const rawData = options.some(([k, v]) => k === "data-file.driver" && v === "raw");
  const dataNode = takeBlkdebug(options, rawData ? "data-file.file." : "data-file.");
  if (dataNode) {
    out.dataFileBlkdebug = { ...dataNode.node, ...(rawData ? { rawAbove: true } : {}) };
    if (dataNode.image !== undefined) out.dataFile = dataNode.image;
    for (const [k, v] of dataNode.imageKeys) if (k !== "driver" || v !== "file") throw new CliError(`Block format 'blkdebug' does not support the option 'image.${k}'`);
    if (rawData) options.splice(0, options.length, ...options.filter(([k]) => k !== "data-file.driver"));
  }
  const quorum = takeQuorum(options);
  if (quorum) out.fileQuorum = quorum;
  // file.driver=qcow2 or driver=compress: the file.* options describe an image of their own.
  const layered = takeFileImageOptions(options);
  if (layered) {
    out.fileImage = blockOptionsFromPairs(layered.child, { imageOpts: true, ...(opts.onWarning ? { onWarning: opts.onWarning } : {}) });
    if (out.fileImage.filename !== undefined) out.filename = out.fileImage.filename;
    options.splice(0, options.length, ...layered.rest);
  }
  let driver = opts.defaultFormat;
  for (const [key, value] of options) if (key === "driver") driver = value;
  let overlapTemplate = "cached";
  let inactiveL2: boolean | undefined;
  const hasFile = out.filename !== undefined || out.fileImage !== undefined || out.fileQuorum !== undefined || options.some(([key]) => key === "file" || key === "file.filename");
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
      case "data-file.image.driver":
        if (key === "data-file.driver" && value === "null-co") {
          out.dataFileNullCo ??= {};
          break;
        }
        if (value !== "file") throw new CliError(`Unknown protocol '${value}' (only local files are supported)`);
        break;
      case "data-file.image.filename":
      case "data-file.image":
        out.dataFile = value;
        break;
      case "read-only":
        out.readOnly = parseBool(key, value);
        break;
      case "filename":
      case "locking":
      case "aio":
        // The options of a file protocol node opened on its own (driver=file,filename=X).
        if (!isProtocolDriver(driver)) throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
        if (key === "filename") out.filename = value;
        else if (key === "aio") parseAio(value);
        else out.locking = value === "auto" || parseBool(key, value) ? "on" : "off";
        break;
      case "file.aio":
        parseAio(value);
        break;
      case "file.locking":
        // QEMU's "auto" locks where the host can; so do we (a read-write open then fails without the addon).
        if (value === "auto") out.locking = "on";
        else out.locking = parseBool(key, value) ? "on" : "off";
        break;
      case "force-share":
        out.forceShare = parseBool(key, value);
        break;
      case "discard":
        out.discard = parseDiscard(value);
        break;
      case "cache.direct":
      case "cache.no-flush":
      case "auto-read-only":
        parseBool(key, value);
        break;
      case "size":
        if (driver !== "null-co") throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
        (out.nullCo ??= {}).size = Number(parseOptValue({ name: key, type: "size", help: "" }, value).parsed as bigint);
        break;
      case "data-file.size":
        (out.dataFileNullCo ??= {}).size = Number(parseOptValue({ name: "size", type: "size", help: "" }, value).parsed as bigint);
        break;
      case "data-file.read-zeroes":
        (out.dataFileNullCo ??= {}).readZeroes = parseBool(key, value);
        break;
      case "read-zeroes":
        if (driver !== "null-co") throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
        (out.nullCo ??= {}).readZeroes = parseBool(key, value);
        break;
      case "lazy-refcounts":
        out.lazyRefcounts = parseBool(key, value);
        break;
      case "key-secret":
        // The luks format's passphrase (qcow2 names it encrypt.key-secret).
        if (driver !== "luks") throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
        (out.encrypt ??= { unexpected: [] }).keySecret = value;
        break;
      case "node-name":
        out.nodeName = value;
        break;
      case "file.node-name":
      case "data-file.node-name":
      case "backing.node-name":
        (out.childNodeNames ??= {})[key.slice(0, -".node-name".length)] = value;
        break;
      case "file.align":
        // The file driver's own request alignment: checked as blkdebug checks it, no effect on the bytes.
        checkBlkdebugLimitsCli({ align: Number(parseOptValue({ name: "align", type: "size", help: "" }, value).parsed as bigint) });
        break;
      case "cache-clean-interval":
        if (!/^\d+$/.test(value)) throw new CliError(`Parameter '${key}' expects a non-negative number below 2^64`);
        break;
      case "overlap-check":
        if (!OVERLAP_CHECK_TEMPLATES.includes(value)) {
          throw new CliError(`Unsupported value '${value}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all`);
        }
        overlapTemplate = value;
        break;
      case "overlap-check.inactive-l2":
        inactiveL2 = parseBool(key, value);
        break;
      default: {
        if (QCOW2_TUNING_SIZES.includes(key)) {
          const size = parseOptValue({ name: key, type: "size", help: "" }, value).parsed as bigint;
          (out.qcow2Cache ??= {})[key as keyof Qcow2CacheOptions] = size;
          break;
        }
        if (QCOW2_TUNING_BOOLS.includes(key) || (key.startsWith("overlap-check.") && OVERLAP_CHECK_PARTS.includes(key.slice(14)))) {
          parseBool(key, value);
          break;
        }
        if (key.startsWith("encrypt.") || key.startsWith("backing.encrypt.")) {
          // Checked against the image when it is opened (only encrypted images look at them).
          const backing = key.startsWith("backing.");
          const e = backing ? (out.backingEncrypt ??= { unexpected: [] }) : (out.encrypt ??= { unexpected: [] });
          const name = key.slice(backing ? "backing.encrypt.".length : "encrypt.".length);
          if (name === "key-secret") e.keySecret = value;
          else if (name === "format") e.format = value;
          else e.unexpected.push(name);
          break;
        }
        throw new CliError(`Block format '${driver ?? "qcow2"}' does not support the option '${key}'`);
      }
    }
  }
  if (inactiveL2 ?? overlapTemplate === "all") out.overlapCheckInactiveL2 = true;
  if (out.qcow2Cache) checkQcow2Cache(out.qcow2Cache);
  if (out.format === "null-co" && out.filename === undefined) out.filename = "null-co://";
  return out;
}
