import { unlink } from "node:fs/promises";
import { fromSystemError } from "./system-error";
import { printableName } from "../printable-name";

/**
 * Delete a file (qemu-img create removes what it created when creation fails). A missing file is
 * not an error. Failures are one-line Qcow2Errors ("Could not delete 'x': Permission denied").
 */
export async function removeFile(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (error) {
    if ((error as { code?: unknown } | null)?.code === "ENOENT") return;
    throw fromSystemError(error, `Could not delete '${printableName(path)}'`);
  }
}
