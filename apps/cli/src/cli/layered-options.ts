/**
 * Images on images in block driver options: `driver=qcow2,file.driver=qcow2,file.file.filename=X` (a qcow2
 * image stored on the guest disk of another qcow2 image) and `driver=compress,file.driver=qcow2,...` (the
 * compress filter over an image). The `file.*` options then describe a node of their own.
 */

/** Drivers that make `file` an image rather than a file: formats (and filters over them). */
const IMAGE_DRIVERS = ["qcow2", "raw", "compress"];

/** Filters: drivers whose only child is always an image node. */
const FILTER_DRIVERS = ["compress"];

/**
 * When the file child is an image (its driver a format) or this node is a filter: the child's options (the
 * `file.` prefix taken off) and the rest; undefined otherwise.
 */
export function takeFileImageOptions(options: Array<[string, string]>): { child: Array<[string, string]>; rest: Array<[string, string]> } | undefined {
  const value = (key: string): string | undefined => options.find(([k]) => k === key)?.[1];
  const driver = value("driver");
  const fileDriver = value("file.driver");
  if (!(driver !== undefined && FILTER_DRIVERS.includes(driver)) && !(fileDriver !== undefined && IMAGE_DRIVERS.includes(fileDriver))) return undefined;
  const child: Array<[string, string]> = [];
  const rest: Array<[string, string]> = [];
  for (const [key, v] of options) {
    if (key.startsWith("file.")) child.push([key.slice("file.".length), v]);
    else rest.push([key, v]);
  }
  return { child, rest };
}

/** A filter over a node that is a plain file (no format): QEMU's refusal, naming the protocol. */
export function isFilterDriver(driver: string | undefined): boolean {
  return driver !== undefined && FILTER_DRIVERS.includes(driver);
}

/** Protocol drivers that may be opened as the top node (`driver=file,filename=X`): the file's bytes, no format. */
export const PROTOCOL_DRIVERS = ["file", "host_device", "host_cdrom"];

export function isProtocolDriver(driver: string | undefined): boolean {
  return driver !== undefined && PROTOCOL_DRIVERS.includes(driver);
}
