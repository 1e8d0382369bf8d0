/**
 * qimg rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename
 *
 * As qemu-img 7.2: safe mode writes into the image what differs between the old and the new backing file
 * where the image does not allocate the range itself, then stores the new name; -u only stores the name;
 * -b "" removes the backing file.
 */
import { realpathSync } from "node:fs";
import { changeBackingFile, copyBackingDifferences, openImage, type BlockImage } from "@qcowkit/core/node";
import { REBASE_CHUNK_BYTES } from "@qcowkit/core/internal";
import { combinePath } from "../cli/chain";
import { strerror } from "../cli/errno";
import { CliError, UsageError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { closeQuietly, openCliImage } from "../cli/open";
import { Progress } from "../cli/progress";
import { defineObject } from "../cli/secrets";
import type { QimgCommand } from "./context";
import { helpText } from "./help";

export const rebaseCommand: QimgCommand = {
  name: "rebase",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":hf:F:b:upt:T:qU",
      argv0: "rebase",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    let format: string | undefined;
    let backingFormat: string | undefined;
    let backing: string | undefined;
    let unsafe = false;
    let progress = false;
    let quiet = false;
    let forceShare = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "f":
          format = o.value;
          break;
        case "F":
          backingFormat = o.value;
          break;
        case "b":
          backing = o.value;
          break;
        case "u":
          unsafe = true;
          break;
        case "p":
          progress = true;
          break;
        case "q":
          quiet = true;
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
    if (quiet) progress = false;
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    if (!unsafe && backing === undefined) throw new UsageError("Must specify backing file (-b) or use unsafe mode (-u)");
    const filename = operands[0]!;
    const bar = new Progress(ctx.io, progress);
    bar.print(0, 100);
    let image: BlockImage | undefined;
    let newBacking: BlockImage | undefined;
    try {
      image = await openCliImage(filename, {
        readOnly: false,
        forceShare,
        ...(format !== undefined ? { format } : {}),
        ...(unsafe ? { backing: null } : {}),
        onWarning: (w) => ctx.io.err(`${w}\n`),
      });
      if (!unsafe) {
        let prefixDepth: number | undefined;
        if (backing !== undefined && backing !== "") {
          const realPath = combinePath(filename, backing);
          // A new backing file from the old chain is used as it is open (QEMU's prefix_chain_bs).
          const chain: BlockImage[] = [];
          for (let b = (image as { backing?: BlockImage | null }).backing ?? null; b; b = (b as { backing?: BlockImage | null }).backing ?? null) chain.push(b);
          const want = realFile(realPath);
          const inChain = want === undefined ? -1 : chain.findIndex((b) => realFile(b.filename) === want);
          if (inChain >= 0) prefixDepth = inChain + 1;
          if (inChain < 0) try {
            newBacking = await openImage(realPath, { readOnly: true, ...(backingFormat !== undefined ? { format: backingFormat } : {}) });
          } catch (e) {
            throw new CliError(`Could not open new backing file '${backing}': Could not open '${realPath}': ${errorText(e).replace(/^Could not open '[^']*': /, "")}`, { cause: e });
          }
        }
        const old = (image as { backing?: BlockImage | null }).backing ?? null;
        let target: BlockImage | null = newBacking ?? null;
        if (prefixDepth !== undefined) {
          target = old;
          for (let d = 1; d < prefixDepth; d++) target = (target as { backing?: BlockImage | null }).backing ?? null;
        }
        // qemu-img rebase -p moves by a fixed step per compared piece, whatever its length.
        const size = image.virtualSize;
        const step = size !== 0 ? 100 / (size / Math.min(size, REBASE_CHUNK_BYTES)) : 0;
        await copyBackingDifferences(image, old, target, {
          ...(prefixDepth !== undefined ? { prefixDepth } : {}),
          onProgress: () => bar.print(step, 100),
        });
      }
      const name = backing !== undefined && backing !== "" ? backing : undefined;
      try {
        await changeBackingFile(image, name, name !== undefined ? backingFormat : undefined);
      } catch (e) {
        const text = errorText(e);
        const reason = text === "backing format must be specified" || text === "No space left in the file header" ? text : strerror(e);
        throw new CliError(`Could not change the backing file to '${backing ?? ""}': ${reason}`, { cause: e });
      }
      bar.print(100);
    } catch (e) {
      bar.end();
      await closeQuietly(newBacking);
      await closeQuietly(image);
      throw e;
    }
    bar.end();
    await newBacking?.close();
    await image.close();
    return 0;
  },
};

function realFile(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined;
  }
}
