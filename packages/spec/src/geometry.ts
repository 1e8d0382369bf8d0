/** Sizes derived from header fields (docs/interop/qcow2.txt, "Cluster mapping", "Host cluster management"). */

/** Bytes per L2 entry: 8 for standard entries, 16 for extended L2 entries. */
export function l2EntryBytes(extendedL2: boolean): number {
  return extendedL2 ? 16 : 8;
}

/** Number of entries in one L2 table (one cluster). */
export function l2EntriesPerTable(clusterBits: number, extendedL2: boolean): number {
  return 2 ** clusterBits / l2EntryBytes(extendedL2);
}

/** Guest bytes covered by one L2 table. */
export function bytesPerL2Table(clusterBits: number, extendedL2: boolean): number {
  return 2 ** clusterBits * l2EntriesPerTable(clusterBits, extendedL2);
}

/** Number of L1 entries needed to map `virtualSize` bytes. */
export function l1EntriesForSize(virtualSize: number, clusterBits: number, extendedL2: boolean): number {
  return Math.ceil(virtualSize / bytesPerL2Table(clusterBits, extendedL2));
}

/** Refcount entries in one refcount block. */
export function refcountBlockEntries(clusterBits: number, refcountOrder: number): number {
  return (2 ** clusterBits * 8) / 2 ** refcountOrder;
}

/** Highest refcount value an entry of `refcountOrder` can hold (2^53-1 cap for 64-bit entries). */
export function maxRefcount(refcountOrder: number): number {
  const bits = 2 ** refcountOrder;
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

/** Subcluster size in bytes for extended L2 images. */
export function subclusterSize(clusterBits: number): number {
  return 2 ** clusterBits / 32;
}

/** Round `bytes` up to whole clusters. */
export function sizeToClusters(bytes: number, clusterBits: number): number {
  return Math.ceil(bytes / 2 ** clusterBits);
}
