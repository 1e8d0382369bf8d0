import { CliError } from "../cli/errors";
import type { QimgCommand } from "./context";

export const compareCommand: QimgCommand = {
  name: "compare",
  async run() {
    throw new CliError("compare: not implemented yet");
  },
};
