/** Backing file names as QEMU combines them with the name of the image that refers to them. */
import * as path from "node:path";

/** `name` relative to the folder of `imageName` (absolute names and protocol names stay as they are). */
export function combinePath(imageName: string, name: string): string {
  if (path.isAbsolute(name) || /^[a-z][a-z0-9+.-]*:/i.test(name)) return name;
  const slash = imageName.lastIndexOf("/");
  return slash < 0 ? name : imageName.slice(0, slash + 1) + name;
}
