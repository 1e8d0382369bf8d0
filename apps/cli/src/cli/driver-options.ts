/**
 * Block options of one node (`file.driver=...,file.url=...`; the top node has no prefix): the ones a protocol
 * driver takes are moved out of the option list into a record, the others stay for the format layer.
 */
export function takeNodeOptions(
  options: Array<[string, string]>,
  prefix: string,
  /** The record key an option of this node is stored under (its name, or another), or undefined to leave it. */
  keyOf: (name: string) => string | undefined,
): { rest: Array<[string, string]>; taken: Record<string, string> } {
  const taken: Record<string, string> = {};
  const rest = options.filter(([key, value]) => {
    if (!key.startsWith(prefix)) return true;
    const to = keyOf(key.slice(prefix.length));
    if (to === undefined) return true;
    taken[to] = value;
    return false;
  });
  return { rest, taken };
}
