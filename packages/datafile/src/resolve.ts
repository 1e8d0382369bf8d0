import { Qcow2Error } from "@qcowkit/spec";
import {
  absolutePosixPath,
  directoryPrefix,
  hasParentComponent,
  isAbsolutePosixPath,
  isStrictlyInside,
} from "./posix-path";
import { printableName } from "./printable-name";

/**
 * How QEMU 7.2 turns a file name stored in a qcow2 image into a file to open (POSIX hosts), checked
 * against qemu-img/qemu-io in this package's tests:
 *
 * - External data file names are plain file names, opened as stored: a relative name is relative
 *   to the process's current working directory, not to the image's directory. No protocol prefix
 *   (`file:`, `json:`, `nbd:`) is parsed; `file:x` names a file called "file:x".
 * - Backing file names are relative to the directory of the image that names them, by string
 *   concatenation: everything of the image path up to its last "/" followed by the stored name
 *   (`sub/top.qcow2` + `../base.qcow2` → `sub/../base.qcow2`); ".." is not collapsed, so the kernel
 *   resolves it after following symbolic links. An absolute name is used as is. A name with ":"
 *   before its first "/" has a protocol prefix and is used as is; `file:NAME` opens NAME relative
 *   to the working directory.
 *
 * Image paths are plain file paths as passed to open (no protocol prefix).
 */

export type ReferenceKind = "data-file" | "backing";

export interface ResolvedReference {
  readonly kind: ReferenceKind;
  /** The name as stored in the image. */
  readonly storedName: string;
  /**
   * The file to open: absolute, or relative to the process's working directory. Undefined when a
   * backing name uses a protocol other than `file:` (`nbd://…`, `json:{…}`).
   */
  readonly path: string | undefined;
  /** The protocol prefix of a backing name ("file", "nbd", "json", …); undefined for plain names. */
  readonly protocol: string | undefined;
}

/**
 * Where QEMU 7.2 opens an external data file whose stored name is `storedName`.
 * @throws Qcow2Error INVALID_IMAGE for an empty name ("'data-file' is required for this image").
 */
export function resolveDataFileName(storedName: string): ResolvedReference {
  if (storedName === "") {
    throw new Qcow2Error("INVALID_IMAGE", "'data-file' is required for this image");
  }
  return { kind: "data-file", storedName, path: storedName, protocol: undefined };
}

/**
 * Where QEMU 7.2 opens the backing file `storedName` named by the image at `imagePath`. Returns
 * undefined for an empty name (QEMU treats it as "no backing file").
 * @throws Qcow2Error INVALID_ARGUMENT for a relative name when the image path is empty or a
 *   `json:` name ("Cannot use relative backing file names for '…'"), and for `file:` with no name.
 */
export function resolveBackingFileName(imagePath: string, storedName: string): ResolvedReference | undefined {
  if (storedName === "") return undefined;
  const protocol = backingProtocol(storedName);
  if (protocol !== undefined) {
    if (protocol !== "file") return { kind: "backing", storedName, path: undefined, protocol };
    const path = storedName.slice("file:".length);
    if (path === "") {
      throw new Qcow2Error("INVALID_ARGUMENT", "The 'file' block driver requires a file name");
    }
    return { kind: "backing", storedName, path, protocol };
  }
  if (isAbsolutePosixPath(storedName)) {
    return { kind: "backing", storedName, path: storedName, protocol: undefined };
  }
  if (imagePath === "" || imagePath.startsWith("json:")) {
    throw new Qcow2Error(
      "INVALID_ARGUMENT",
      `Cannot use relative backing file names for '${printableName(imagePath)}'`,
    );
  }
  return { kind: "backing", storedName, path: directoryPrefix(imagePath) + storedName, protocol: undefined };
}

/**
 * The file an image operand names: `file:NAME` is NAME (QEMU's file protocol prefix, which lets a name
 * contain ":"); any other name is used as it is.
 */
export function imageFilePath(name: string): string {
  return name.startsWith("file:") ? name.slice("file:".length) : name;
}

/**
 * How QEMU shows an image opened as `name`: without a `file:` prefix, and with "./" in front when the rest
 * would otherwise read as a protocol prefix (`file:image:top.qcow2` → `./image:top.qcow2`).
 */
export function imageDisplayName(name: string): string {
  if (!name.startsWith("file:")) return name;
  const path = imageFilePath(name);
  return backingProtocol(path) !== undefined ? `./${path}` : path;
}

/**
 * The protocol prefix of a backing file name: the text before a ":" that comes before any "/"
 * (`nbd://h/x` → "nbd", `dir/a:b` → undefined), as QEMU decides on POSIX hosts.
 */
export function backingProtocol(name: string): string | undefined {
  const colon = name.indexOf(":");
  if (colon < 0) return undefined;
  const slash = name.indexOf("/");
  return slash >= 0 && slash < colon ? undefined : name.slice(0, colon);
}

export interface SafeReferenceOptions {
  /**
   * The process's absolute working directory. Needed for a data file name when `imagePath` is
   * absolute (relative data file names resolve against it).
   */
  cwd?: string;
}

/**
 * Safe mode for untrusted images: allow a stored data file or backing file name only when it
 * stays inside the image's folder (subfolders included), and return the path to open (as
 * `resolveDataFileName` / `resolveBackingFileName` would).
 *
 * Refused, with Qcow2Error code NOT_SUPPORTED (errno EPERM; the image is valid, the policy refuses
 * it): empty names, names with NUL, absolute names, names with a ".." component, backing names
 * with a protocol prefix, and data file names that, resolved against the working directory as
 * QEMU does, land outside the image's folder (for example any relative name when the image lives
 * elsewhere than the working directory tree). The check is lexical: a symbolic link inside the
 * folder that points outside is not detected.
 */
export function checkSafeReference(
  imagePath: string,
  referencedName: string,
  kind: ReferenceKind,
  options: SafeReferenceOptions = {},
): string {
  const label = kind === "data-file" ? "data file" : "backing file";
  const refuse = (reason: string) =>
    new Qcow2Error("NOT_SUPPORTED", `Refusing ${label} '${printableName(referencedName)}' in safe mode: ${reason}`, {
      errno: "EPERM",
    });
  if (referencedName === "") throw refuse("the name is empty");
  if (referencedName.includes("\0")) throw refuse("the name contains a NUL character");
  if (isAbsolutePosixPath(referencedName)) throw refuse("absolute names are not allowed");
  if (kind === "backing" && backingProtocol(referencedName) !== undefined) {
    throw refuse("protocol prefixes are not allowed");
  }
  if (hasParentComponent(referencedName)) throw refuse("'..' is not allowed");
  if (kind === "backing") {
    // Relative to the image's directory and without "..": inside the folder by construction.
    return directoryPrefix(imagePath) + referencedName;
  }
  const cwd = options.cwd ?? placeholderCwd(imagePath);
  if (cwd === undefined || !isAbsolutePosixPath(cwd)) {
    throw new Qcow2Error(
      "INVALID_ARGUMENT",
      "checkSafeReference needs the absolute working directory to place a data file of an image given by absolute path",
    );
  }
  const imageFolder = absolutePosixPath(cwd, directoryPrefix(imagePath) || ".");
  const target = absolutePosixPath(cwd, referencedName);
  if (!isStrictlyInside(imageFolder, target)) {
    throw refuse(
      "it resolves outside the image's folder (relative data file names resolve against the working directory)",
    );
  }
  return referencedName;
}

/**
 * For a relative image path, any absolute directory deep enough that the image path's ".."
 * components cannot climb past the root stands in for the working directory: the comparison only
 * depends on where the image and the data file sit relative to it.
 */
function placeholderCwd(imagePath: string): string | undefined {
  if (isAbsolutePosixPath(imagePath)) return undefined;
  const depth = imagePath.split("/").length + 1;
  return `/${Array.from({ length: depth }, (_, i) => `cwd${i}`).join("/")}`;
}

/**
 * For qemu-img/qemu-io-style tools, which follow every stored name as QEMU does but say so: the reason a
 * stored data file or backing file name deserves a warning, or undefined. A name deserves one when it is
 * absolute ("absolute") or has a ".." component ("parent") and the file it names, resolved as QEMU resolves
 * it and against `cwd`, lies outside the folder of `imagePath` (lexically: symbolic links are not followed).
 * Names with a protocol prefix other than `file:` are not file names and get undefined.
 */
export function referenceLeavingFolder(
  imagePath: string,
  storedName: string,
  kind: ReferenceKind,
  cwd: string,
): "absolute" | "parent" | undefined {
  let path: string | undefined;
  try {
    path = kind === "data-file" ? resolveDataFileName(storedName).path : resolveBackingFileName(imagePath, storedName)?.path;
  } catch {
    return undefined;
  }
  if (path === undefined) return undefined;
  const name = kind === "backing" && backingProtocol(storedName) === "file" ? storedName.slice("file:".length) : storedName;
  const why = isAbsolutePosixPath(name) ? "absolute" : hasParentComponent(name) ? "parent" : undefined;
  if (why === undefined) return undefined;
  const folder = absolutePosixPath(cwd, directoryPrefix(imagePath) || ".");
  return isStrictlyInside(folder, absolutePosixPath(cwd, path)) ? undefined : why;
}
