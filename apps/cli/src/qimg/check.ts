/**
 * qimg check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-T cache] [-U] filename
 *
 * As qemu-img 7.2: the image is opened in check mode, read-only (read-write with -r); findings go to stderr
 * as they are made, the summary to stdout (human, or QAPI ImageCheck JSON). With -r, when something was
 * repaired, the summary of the fixes is followed by a second checking pass whose result is printed.
 * Exit codes: 0 consistent (or repaired), 1 the check could not be completed (errors during the check,
 * `-r leaks` when the refcount structures need a rebuild, open failures), 2 corruptions left, 3 only leaks
 * left, 63 the format has no consistency check (raw).
 */
import { checkAndRepairImage, checkFailureText, checkReportHuman, checkReportJson, toQemuJson, type Qcow2Image, type RepairMode } from "@qcowkit/core/node";
import { CliError, EXIT, UsageError } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { closeQuietly, openOperand } from "../cli/open";
import { defineObject } from "../cli/secrets";
import { PROG, type QimgCommand } from "./context";
import { helpText } from "./help";
import { outputFormat } from "./output-format";

const CACHE_MODES = ["none", "off", "writeback", "writethrough", "directsync", "unsafe"];

export const checkCommand: QimgCommand = {
  name: "check",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":hf:r:T:qU",
      argv0: "check",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "format", hasArg: true, key: "f" },
        { name: "repair", hasArg: true, key: "r" },
        { name: "output", hasArg: true, key: "output" },
        { name: "object", hasArg: true, key: "object" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    let format: string | undefined;
    let output = "human";
    let repair: RepairMode | undefined;
    let cache: string | undefined;
    let quiet = false;
    let forceShare = false;
    let imageOpts = false;
    for (const o of options) {
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "f":
          format = o.value;
          break;
        case "r":
          if (o.value !== "leaks" && o.value !== "all") {
            throw new UsageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${o.value}`);
          }
          repair = o.value;
          break;
        case "output":
          output = o.value!;
          break;
        case "T":
          cache = o.value;
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
          imageOpts = true;
          break;
      }
    }
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    const operand = operands[0]!;
    const mode = outputFormat(output);
    if (cache !== undefined && !CACHE_MODES.includes(cache)) throw new CliError(`Invalid source cache option: ${cache}`);
    const out = (text: string) => {
      if (!quiet) ctx.io.out(text);
    };
    const { image, filename } = await openOperand(operand, imageOpts, {
      readOnly: repair === undefined,
      checkMode: true,
      forceShare,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    try {
      if (image.format !== "qcow2") {
        throw new CliError("This image format does not support checks", { exitCode: EXIT.CHECK_NOT_SUPPORTED });
      }
      const result = await checkAndRepairImage(image as Qcow2Image, repair, {
        onMessage: (line, kind) => ctx.io.err(kind === "report" ? `${PROG}: ${line}\n` : `${line}\n`),
        onFixed: (fixRun) => {
          if (mode !== "human") return;
          out(
            "The following inconsistencies were found and repaired:\n\n" +
              `    ${fixRun.leaksFixed} leaked clusters\n` +
              `    ${fixRun.corruptionsFixed} corruptions\n\n` +
              "Double checking the fixed image now...\n",
          );
        },
      });
      const report = result.report;
      if (report.failure !== undefined) {
        throw new CliError(`Check failed: ${checkFailureText(report.failure)}`, { exitCode: EXIT.FAILURE });
      }
      out(mode === "json" ? `${toQemuJson(checkReportJson(filename, report))}\n` : checkReportHuman(report));
      if (report.checkErrors) throw new CliError("Check failed", { exitCode: EXIT.FAILURE });
      await image.close();
      return result.exitCode;
    } catch (e) {
      await closeQuietly(image);
      throw e;
    }
  },
};
