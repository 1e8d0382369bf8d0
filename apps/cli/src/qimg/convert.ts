import { CliError } from "../cli/errors";
import type { QimgCommand } from "./context";

export const convertCommand: QimgCommand = {
  name: "convert",
  async run() {
    throw new CliError("convert: not implemented yet");
  },
};
