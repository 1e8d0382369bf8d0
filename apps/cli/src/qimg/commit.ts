/**
 * qimg commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename
 *
 * As qemu-img 7.2: what the image and the images between it and the base (default: its backing file) hold is
 * copied into the base, then the image is emptied unless -d; prints "Image committed.".
 */
import { realpathSync } from "node:fs";
import { Qcow2Image, commitLayers, openImage, type BlockImage } from "@qcowkit/core/node";
import { isRemoteName, makeEmpty } from "@qcowkit/core/internal";
import { isQcow2Error } from "@qcowkit/spec";
import { combinePath } from "../cli/chain";
import { CliError, UsageError, errorText } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { blockOpenOptions, closeQuietly, openCliImage } from "../cli/open";
import { parseBlockOptions, type BlockOptions } from "../cli/block-options";
import { Progress } from "../cli/progress";
import { defineObject, encryptOpenOptions } from "../cli/secrets";
import type { QimgCommand } from "./context";
import { helpText } from "./help";

export const commitCommand: QimgCommand = {
  name: "commit",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":f:ht:b:dpqr:",
      argv0: "commit",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
      ],
    });
    let format: string | undefined;
    let baseName: string | undefined;
    let drop = false;
    let progress = false;
    let quiet = false;
    let imageOpts = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "f":
          format = o.value;
          break;
        case "b":
          baseName = o.value;
          drop = true;
          break;
        case "d":
          drop = true;
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
      }
    }
    if (quiet) progress = false;
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    const operand = operands[0]!;
    if (imageOpts && format !== undefined) throw new CliError("--image-opts and --format are mutually exclusive");
    // --image-opts: the top image's options; its backing.* ones (file name, format, key secret) are the base's
    // when the base is the top's backing file.
    let blockOptions: BlockOptions | undefined;
    if (imageOpts) {
      try {
        blockOptions = parseBlockOptions(operand, { imageOpts: true, onWarning: (w) => ctx.io.err(`${w}\n`) });
      } catch (e) {
        throw new CliError(`Could not open '${operand}': ${errorText(e)}`, { cause: e });
      }
    }
    const given = blockOptions ? blockOpenOptions(blockOptions) : {};
    const { readOnly: _readOnly, backing: givenBacking, backingFormat: givenBackingFormat, backingEncrypt, ...topOptions } = given;
    const filename = blockOptions ? (blockOptions.filename ?? "") : operand;
    // Each layer is opened without its backing file (the base with its own chain, read-write), so no image
    // is open twice: what a layer allocates itself is block status at depth 0.
    const top = await openCliImage(filename, {
      ...topOptions,
      readOnly: false,
      backing: null,
      ...(format !== undefined ? { format } : {}),
      ...(imageOpts ? { errorPrefix: `Could not open '${operand}': ` } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    const layers: BlockImage[] = [top];
    let base: BlockImage | undefined;
    const bar = new Progress(ctx.io, progress);
    try {
      let found = false;
      for (;;) {
        const above = layers[layers.length - 1]!;
        const first = layers.length === 1;
        const storedName = above instanceof Qcow2Image ? above.backingFile : undefined;
        const stored = first && typeof givenBacking === "string" ? givenBacking : storedName;
        if (stored === undefined || stored === "") break;
        const path = first && typeof givenBacking === "string" ? givenBacking : combinePath(above.filename, stored);
        const fmt = (first ? givenBackingFormat : undefined) ?? (above instanceof Qcow2Image ? above.backingFormat : undefined);
        const encrypt = first && backingEncrypt ? { encrypt: encryptOpenOptions(backingEncrypt) } : {};
        const isBase = baseName === undefined || baseName === stored || sameFile(combinePath(above.filename, baseName), path);
        if (isBase && isRemoteName(stored)) {
          throw new CliError(`Cannot commit into the remote base '${stored}': it is read-only; publish the result with qimg convert -O qcow2 ${filename} s3://BUCKET/KEY`);
        }
        try {
          if (isBase && stored.startsWith("json:")) {
            // A json: name describes its node (blkdebug over the file, say).
            base = await openCliImage(stored, { readOnly: false, ...(fmt !== undefined ? { format: fmt } : {}), onWarning: (w) => ctx.io.err(`${w}\n`) });
          } else if (isBase) {
            base = await openImage(path, { readOnly: false, ...(fmt !== undefined ? { format: fmt } : {}), ...encrypt });
          } else {
            layers.push(await openImage(path, { readOnly: true, backing: null, ...(fmt !== undefined ? { format: fmt } : {}), ...encrypt }));
          }
        } catch (e) {
          throw new CliError(`Could not open backing file: ${errorText(e)}`, { cause: e });
        }
        if (isBase) {
          found = true;
          break;
        }
      }
      if (!found) {
        if (baseName !== undefined) throw new CliError(`Did not find '${baseName}' in the backing chain of '${filename}'`);
        throw new CliError("Image does not have a backing file");
      }
      bar.print(0);
      try {
        await commitLayers(layers, base!, { onProgress: (done, total) => bar.status(done, total) });
      } catch (e) {
        // QEMU's commit is a block job: an I/O error ends the job and is reported as its failure.
        if (isQcow2Error(e) && (e.code === "IO_ERROR" || e.code === "NO_SPACE")) throw new CliError(`Block job failed: ${errorText(e)}`, { cause: e });
        throw e;
      }
      bar.print(100);
      await base!.close();
      base = undefined;
      for (const l of layers.slice(1)) await l.close();
      layers.length = 1;
      // -b implies -d.
      if (!drop && top instanceof Qcow2Image) {
        try {
          await makeEmpty(top);
        } catch (e) {
          throw new CliError(`Failed to empty ${filename}: ${errorText(e)}`, { cause: e });
        }
      }
    } catch (e) {
      bar.end();
      await closeQuietly(base);
      for (const l of layers) await closeQuietly(l);
      throw e;
    }
    bar.end();
    await top.close();
    if (!quiet) ctx.io.out("Image committed.\n");
    return 0;
  },
};

function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}
