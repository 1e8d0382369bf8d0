/**
 * Metadata contexts this server offers and how queries select them: `base:allocation` (NBD spec) and QEMU's
 * `qemu:allocation-depth` and `qemu:dirty-bitmap:NAME` (qemu docs/interop/nbd.rst), with the list-only
 * wildcards `base:`, `qemu:` and `qemu:dirty-bitmap:`.
 */
import { BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH, QEMU_DIRTY_BITMAP_PREFIX } from "./constants";

export type MetaContextKind =
  | { kind: "allocation" }
  | { kind: "allocation-depth" }
  | { kind: "dirty-bitmap"; bitmap: string };

export type MetaContext = MetaContextKind & {
  /** The id sent in NBD_REP_META_CONTEXT and NBD_REPLY_TYPE_BLOCK_STATUS. */
  id: number;
  name: string;
};


/** The contexts of one export, with stable ids: 1 base:allocation, 2 allocation depth, 3.. bitmaps. */
export function availableContexts(opts: { allocationDepth: boolean; bitmaps: readonly string[] }): MetaContext[] {
  const out: MetaContext[] = [{ kind: "allocation", id: 1, name: BASE_ALLOCATION }];
  if (opts.allocationDepth) out.push({ kind: "allocation-depth", id: 2, name: QEMU_ALLOCATION_DEPTH });
  opts.bitmaps.forEach((bitmap, i) =>
    out.push({ kind: "dirty-bitmap", bitmap, id: 3 + i, name: QEMU_DIRTY_BITMAP_PREFIX + bitmap }),
  );
  return out;
}

function matchesListQuery(context: MetaContext, query: string): boolean {
  if (query === context.name) return true;
  if (query === "base:") return context.name.startsWith("base:");
  if (query === "qemu:") return context.name.startsWith("qemu:");
  if (query === QEMU_DIRTY_BITMAP_PREFIX) return context.kind === "dirty-bitmap";
  return false;
}

/** NBD_OPT_LIST_META_CONTEXT: every context when there is no query, else those a query matches. */
export function listContexts(available: readonly MetaContext[], queries: readonly string[]): MetaContext[] {
  if (queries.length === 0) return [...available];
  return available.filter((c) => queries.some((q) => matchesListQuery(c, q)));
}

/** NBD_OPT_SET_META_CONTEXT: only exact names select a context (wildcards and unknown names are ignored). */
export function selectContexts(available: readonly MetaContext[], queries: readonly string[]): MetaContext[] {
  return available.filter((c) => queries.includes(c.name));
}
