/**
 * Minimal POSIX path string helpers (no file system access). qcowkit follows QEMU on POSIX hosts;
 * Windows drive letters and backslashes are not interpreted.
 */

/** True for a name starting with "/". */
export function isAbsolutePosixPath(path: string): boolean {
  return path.startsWith("/");
}

/** Everything up to and including the last "/" of `path`, or "" when it has none ("a/b/c" → "a/b/"). */
export function directoryPrefix(path: string): string {
  return path.slice(0, path.lastIndexOf("/") + 1);
}

/**
 * Lexically normalise: collapse repeated "/", drop "." components and resolve ".." against the
 * preceding component. Leading ".." of a relative path are kept; ".." at the root stays at the root.
 * Lexical ".." handling can differ from the kernel's when a component is a symbolic link.
 */
export function normalizePosixPath(path: string): string {
  const absolute = isAbsolutePosixPath(path);
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (parts.length > 0 && parts[parts.length - 1] !== "..") parts.pop();
      else if (!absolute) parts.push("..");
      continue;
    }
    parts.push(part);
  }
  const joined = parts.join("/");
  if (absolute) return `/${joined}`;
  return joined === "" ? "." : joined;
}

/** `path` made absolute against the absolute directory `cwd`, normalised lexically. */
export function absolutePosixPath(cwd: string, path: string): string {
  return normalizePosixPath(isAbsolutePosixPath(path) ? path : `${cwd}/${path}`);
}

/** True when the normalised absolute `path` lies strictly inside the normalised absolute `directory`. */
export function isStrictlyInside(directory: string, path: string): boolean {
  const prefix = directory === "/" ? "/" : `${directory}/`;
  return path !== directory && path.startsWith(prefix);
}

/** True when any "/"-separated component of `path` is "..". */
export function hasParentComponent(path: string): boolean {
  return path.split("/").includes("..");
}
