/**
 * The names qimg and qio print. Started through a link or alias named as QEMU's tool (`qemu-img`, `qemu-io`),
 * a bin names itself as QEMU's tool does: in messages, in the `qemu-io> ` prompt and in `--version`, so that
 * scripts (and QEMU's iotests) that match on `qemu-img:` work unchanged.
 */
import { VERSION } from "./version";

/** QEMU's version whose command line the bins follow. */
export const QEMU_COMPAT_VERSION = "7.2.22";

export const programNames = { qimg: "qimg", qio: "qio" };

/** Whether the bins answer to QEMU's names (set once by the bin's entry point). */
let qemuNames = false;

/** `argv1` is the path the bin was started as (process.argv[1]). */
export function answerToName(tool: keyof typeof programNames, argv1: string | undefined): void {
  const base = (argv1 ?? "").replace(/^.*[\\/]/, "").replace(/\.m?js$/, "");
  const qemu = tool === "qimg" ? "qemu-img" : "qemu-io";
  if (base !== qemu) return;
  qemuNames = true;
  programNames[tool] = qemu;
}

/** The --version text: QEMU's layout under QEMU's name, else the bin's own. */
export function versionLine(tool: keyof typeof programNames): string {
  const qemu = tool === "qimg" ? "qemu-img" : "qemu-io";
  if (qemuNames) return `${qemu} version ${QEMU_COMPAT_VERSION} (qcowkit ${VERSION})\n`;
  return `${tool} version ${VERSION} (qcowkit), compatible with ${qemu} 7.2\n`;
}
