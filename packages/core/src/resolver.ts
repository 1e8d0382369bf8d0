/**
 * How an image reaches the files it names (external data file, backing file). The engine is
 * runtime-agnostic; `@qcowkit/core/node` supplies a resolver on the local file system.
 */
import type { ByteStore } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";

export interface ResolveContext {
  /** Name of the image that holds the reference. */
  imageName: string;
  readOnly: boolean;
  /** Names of the images already open in this chain (to refuse loops). */
  chain: string[];
}

export interface ImageResolver {
  /** Open the external data file stored as (or overridden to) `name`. */
  openDataFile(name: string, ctx: ResolveContext): Promise<ByteStore>;
  /** Open a backing image; `format` from the backing format extension, probed when absent. */
  openBacking(name: string, format: string | undefined, ctx: ResolveContext): Promise<BlockImage>;
}

/** Backing chains deeper than this are refused ("Backing chain too deep"). */
export const MAX_CHAIN_DEPTH = 64;
