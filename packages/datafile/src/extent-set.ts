/**
 * A set of byte ranges `[start, end)`, kept sorted and merged. Used by MemoryStore to remember which
 * parts of a copy-on-write base were zeroed or discarded without copying them.
 */
export class ExtentSet {
  /**
   * Flat list: start0, end0, start1, end1, ... sorted, non-overlapping, non-adjacent. Its length is always
   * even, so an even index below the length has its end at index + 1 (the `!` below rely on this).
   */
  private bounds: number[] = [];

  /** Number of disjoint extents held. */
  get extentCount(): number {
    return this.bounds.length / 2;
  }

  /** Add `[start, end)`, merging with neighbours it overlaps or touches. */
  add(start: number, end: number): void {
    if (end <= start) return;
    const bounds = this.bounds;
    // First extent whose end >= start (it may merge); last extent whose start <= end.
    const first = this.firstEndingAtOrAfter(start);
    let last = first;
    let newStart = start;
    let newEnd = end;
    while (last < bounds.length && bounds[last]! <= end) {
      newStart = Math.min(newStart, bounds[last]!);
      newEnd = Math.max(newEnd, bounds[last + 1]!);
      last += 2;
    }
    bounds.splice(first, last - first, newStart, newEnd);
  }

  /** Remove everything at or beyond `limit`. */
  truncate(limit: number): void {
    const bounds = this.bounds;
    const index = this.firstEndingAtOrAfter(limit + 1);
    if (index >= bounds.length) return;
    if (bounds[index]! < limit) {
      bounds[index + 1] = limit;
      bounds.length = index + 2;
    } else {
      bounds.length = index;
    }
  }

  /** Call `visit` with each part of `[start, end)` covered by the set, in order. */
  forEachOverlap(start: number, end: number, visit: (overlapStart: number, overlapEnd: number) => void): void {
    const bounds = this.bounds;
    for (let i = this.firstEndingAtOrAfter(start + 1); i < bounds.length && bounds[i]! < end; i += 2) {
      visit(Math.max(start, bounds[i]!), Math.min(end, bounds[i + 1]!));
    }
  }

  /** Index (even) of the first extent with end >= `position`, or bounds.length. */
  private firstEndingAtOrAfter(position: number): number {
    const bounds = this.bounds;
    let low = 0;
    let high = bounds.length / 2;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (bounds[mid * 2 + 1]! >= position) high = mid;
      else low = mid + 1;
    }
    return low * 2;
  }
}
