/**
 * qimg info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename
 *
 * Like qemu-img 7.2: images are opened read-only for metadata only (the data file and the backing chain are
 * not opened); with --backing-chain each backing file is opened the same way in turn. Nothing is printed
 * unless every image of the chain could be opened.
 */
import { imageInfo, type ImageInfo, toQemuJson, type JsonValue } from "@qcowkit/core/node";
import { dumpHuman } from "@qcowkit/core/internal";
import { CliError, UsageError } from "../cli/errors";
import { openOperand, usingImage } from "../cli/open";
import { sizeToStr } from "../cli/size";
import { FORCE_SHARE_OPTION, HELP_OPTION, IMAGE_OPTS_OPTION, OBJECT_OPTION, parseCommand, type CommandContext, type QimgCommand } from "./context";
import { outputFormat } from "./output-format";

export const infoCommand: QimgCommand = {
  name: "info",
  async run(args, ctx) {
    const parsed = parseCommand(args, ctx, {
      short: ":f:hU",
      argv0: "info",
      long: [
        HELP_OPTION,
        { name: "format", hasArg: true, key: "f" },
        { name: "output", hasArg: true, key: "output" },
        { name: "backing-chain", hasArg: false, key: "backing-chain" },
        OBJECT_OPTION,
        IMAGE_OPTS_OPTION,
        FORCE_SHARE_OPTION,
      ],
    });
    if (!parsed) return 0;
    const { options, operands } = parsed;
    let format: string | undefined;
    let output = "human";
    let chain = false;
    let forceShare = false;
    let imageOpts = false;
    for (const o of options) {
      if (o.key === "f") format = o.value;
      else if (o.key === "output") output = o.value!;
      else if (o.key === "backing-chain") chain = true;
      else if (o.key === "U") forceShare = true;
      else if (o.key === "image-opts") imageOpts = true;
    }
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    const mode = outputFormat(output);
    const infos = await collectInfo(operands[0]!, format, imageOpts, chain, forceShare, ctx);
    if (mode === "json") {
      const value = chain ? infos : infos[0]!;
      ctx.io.out(`${toQemuJson(value as unknown as JsonValue)}\n`);
    } else {
      ctx.io.out(infos.map(humanInfo).join("\n"));
    }
    return 0;
  },
};

async function collectInfo(
  filename: string,
  format: string | undefined,
  imageOpts: boolean,
  chain: boolean,
  forceShare: boolean,
  ctx: CommandContext,
): Promise<ImageInfo[]> {
  const infos: ImageInfo[] = [];
  const seen = new Set<string>();
  let name: string | undefined = filename;
  let fmt = format;
  while (name !== undefined) {
    if (seen.has(name)) throw new CliError(`Backing file '${name}' creates an infinite loop.`);
    seen.add(name);
    // Only the first image can be given as options; its backing files are file names.
    const { image, filename: opened } = await openOperand(name, imageOpts && infos.length === 0, {
      readOnly: true,
      noIo: true,
      forceShare,
      ...(fmt !== undefined ? { format: fmt } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    const info: ImageInfo = await usingImage(image, (img) => imageInfo(img, { filename: opened }));
    infos.push(info);
    if (!chain) break;
    name = info["full-backing-filename"] ?? info["backing-filename"];
    fmt = info["backing-filename-format"];
  }
  return infos;
}

/** Seconds since the epoch as local "YYYY-MM-DD HH:MM:SS" (strftime "%Y-%m-%d %H:%M:%S"). */
function localDate(seconds: number): string {
  const d = new Date(seconds * 1000);
  const p = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** One line of QEMU's snapshot table (bdrv_snapshot_dump); no argument: the header (a slightly different layout). */
export function snapshotLine(s?: NonNullable<ImageInfo["snapshots"]>[number]): string {
  if (!s) return `${"ID".padEnd(10)}${"TAG".padEnd(17)}${"VM SIZE".padStart(8)}${"DATE".padStart(20)}${"VM CLOCK".padStart(13)}${"ICOUNT".padStart(11)}`;
  const secs = s["vm-clock-sec"];
  const p2 = (n: number) => String(n).padStart(2, "0");
  const ms = String(Math.floor(s["vm-clock-nsec"] / 1e6) % 1000).padStart(3, "0");
  const clock = `${p2(Math.floor(secs / 3600))}:${p2(Math.floor(secs / 60) % 60)}:${p2(secs % 60)}.${ms}`;
  const icount = s.icount === undefined ? "" : String(s.icount);
  return `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${sizeToStr(s["vm-state-size"]).padStart(8)}${localDate(s["date-sec"]).padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}

/** bdrv_image_info_dump. */
export function humanInfo(info: ImageInfo): string {
  let out = `image: ${info.filename}\nfile format: ${info.format}\n`;
  out += `virtual size: ${sizeToStr(info["virtual-size"])} (${info["virtual-size"]} bytes)\n`;
  out += info["actual-size"] !== undefined ? `disk size: ${sizeToStr(info["actual-size"])}\n` : "disk size: unavailable\n";
  if (info.encrypted) out += "encrypted: yes\n";
  if (info["cluster-size"] !== undefined) out += `cluster_size: ${info["cluster-size"]}\n`;
  if (info["dirty-flag"]) out += "cleanly shut down: no\n";
  const backing = info["backing-filename"];
  if (backing !== undefined) {
    const full = info["full-backing-filename"];
    out += `backing file: ${backing}`;
    if (full === undefined) out += " (cannot determine actual path)";
    else if (full !== backing) out += ` (actual path: ${full})`;
    out += "\n";
    if (info["backing-filename-format"] !== undefined) out += `backing file format: ${info["backing-filename-format"]}\n`;
  }
  if (info.snapshots) {
    out += `Snapshot list:\n${snapshotLine()}\n`;
    for (const s of info.snapshots) out += `${snapshotLine(s)}\n`;
  }
  const specific = info["format-specific"];
  if (specific) out += `Format specific information:\n${dumpHuman(specific.data as unknown as JsonValue, 1)}`;
  return out;
}
