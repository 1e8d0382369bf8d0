/**
 * Node built-in modules loaded on first use: crypto, zlib, streams, sockets and HTTP cost start-up time to
 * every process that imports the Node entry (a `qemu-img info` on a plain image needs none of them), so the
 * modules that need them ask for them here when they run.
 */
import { createRequire } from "node:module";

const load = createRequire(import.meta.url);

interface Builtins {
  "node:crypto": typeof import("node:crypto");
  "node:zlib": typeof import("node:zlib");
  "node:stream": typeof import("node:stream");
  "node:stream/promises": typeof import("node:stream/promises");
}

/** The built-in module `name`, loaded now if it was not yet (Node caches it). */
export function builtin<K extends keyof Builtins>(name: K): Builtins[K] {
  return load(name) as Builtins[K];
}
