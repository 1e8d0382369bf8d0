/** --output=human|json as qemu-img checks it. */
import { CliError } from "../cli/errors";

export type OutputFormat = "human" | "json";

export function outputFormat(value: string): OutputFormat {
  if (value === "human" || value === "json") return value;
  throw new CliError("--output must be used with human or json as argument.");
}
