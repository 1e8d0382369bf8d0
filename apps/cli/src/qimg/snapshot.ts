/**
 * qimg snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename
 *
 * As qemu-img 7.2: one action; -l opens read-only and prints nothing when there are no snapshots (or the
 * image has an external data file); -c, -a and -d report failures in qemu-img's words.
 */
import { Qcow2Image, applySnapshot, createSnapshot, deleteSnapshot, imageInfo, listSnapshots } from "@qcowkit/core/node";
import { isQcow2Error } from "@qcowkit/spec";
import { errnoNumber, errnoOf, strerror } from "../cli/errno";
import { CliError, UsageError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { openCliImage, usingImage } from "../cli/open";
import { defineObject } from "../cli/secrets";
import type { QimgCommand } from "./context";
import { PROG, helpText } from "./help";
import { snapshotLine } from "./info";

type Action = "l" | "a" | "c" | "d";

export const snapshotCommand: QimgCommand = {
  name: "snapshot",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":la:c:d:hqU",
      argv0: "snapshot",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    let action: Action | undefined;
    let name = "";
    let forceShare = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "l":
        case "a":
        case "c":
        case "d":
          if (action !== undefined) throw new UsageError("Cannot mix '-l', '-a', '-c', '-d'");
          action = o.key;
          name = o.value ?? "";
          break;
        case "U":
          forceShare = true;
          break;
        case "object":
          defineObject(o.value!);
          break;
        case "image-opts":
          throw new CliError("--image-opts is not supported by qimg; give the file name (and -f)");
      }
    }
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    const filename = operands[0]!;
    const opened = await openCliImage(filename, {
      readOnly: action === "l",
      forceShare,
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    return usingImage(opened, async (image) => {
      if (!(image instanceof Qcow2Image)) {
        if (action === "c") throw new CliError(`Could not create snapshot '${name}': -95 (Operation not supported)`);
        if (action === "a") throw new CliError(`Could not apply snapshot '${name}': Failed to load snapshot: Operation not supported`);
        if (action === "d") throw new CliError(`Could not delete snapshot '${name}': snapshot not found`);
        return 0;
      }
      switch (action) {
        case "l": {
          if (listSnapshots(image).length === 0) return 0;
          const info = await imageInfo(image);
          let out = `Snapshot list:\n${snapshotLine()}\n`;
          for (const s of info.snapshots ?? []) out += `${snapshotLine(s)}\n`;
          ctx.io.out(out);
          return 0;
        }
        case "c": {
          // qemu-img keeps the name in a 256-byte buffer.
          const stored = truncateUtf8(name, 255);
          const now = Date.now();
          try {
            await createSnapshot(image, stored, { dateSeconds: Math.floor(now / 1000), dateNanoseconds: (now % 1000) * 1_000_000 });
          } catch (e) {
            const errno = errnoOf(e);
            throw new CliError(`Could not create snapshot '${name}': -${errnoNumber(errno)} (${strerror(e)})`, { cause: e });
          }
          return 0;
        }
        case "a":
          try {
            await applySnapshot(image, name);
          } catch (e) {
            // QEMU's driver reports an invalid snapshot L1 table itself first.
            if (isQcow2Error(e) && e.code === "INVALID_IMAGE" && e.message.startsWith("Snapshot L1 table")) ctx.io.err(`${PROG}: ${e.message}\n`);
            throw new CliError(`Could not apply snapshot '${name}': Failed to load snapshot: ${strerror(e)}`, { cause: e });
          }
          return 0;
        case "d": {
          const sn = listSnapshots(image).find((s) => s.name === name);
          if (!sn) throw new CliError(`Could not delete snapshot '${name}': snapshot not found`);
          try {
            await deleteSnapshot(image, { id: sn.id, name: sn.name });
          } catch (e) {
            throw new CliError(`Could not delete snapshot '${name}': ${errorText(e)}`, { cause: e });
          }
          return 0;
        }
        default:
          return 0;
      }
    });
  },
};

/** The longest prefix of `text` whose UTF-8 encoding fits in `bytes` bytes. */
function truncateUtf8(text: string, bytes: number): string {
  const enc = new TextEncoder();
  if (enc.encode(text).byteLength <= bytes) return text;
  let out = "";
  for (const ch of text) {
    if (enc.encode(out + ch).byteLength > bytes) break;
    out += ch;
  }
  return out;
}
