import { CliError } from "../cli/errors";
import type { QimgCommand } from "./context";

export const checkCommand: QimgCommand = {
  name: "check",
  async run() {
    throw new CliError("check: not implemented yet");
  },
};
