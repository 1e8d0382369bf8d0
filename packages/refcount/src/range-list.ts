/**
 * A list of cluster ranges waiting to be freed. Adding a range adjacent to the last one extends it, so the
 * common sequential case stays one entry; `drain` sorts and merges adjacent ranges. A cluster added twice
 * is freed twice (it had two references).
 */
export class RangeList {
  private ranges: Array<[start: number, count: number, tag: number]> = [];

  /** Add a range; `tag` (e.g. "pass the discard on") travels with it and only equal tags merge. */
  add(start: number, count: number, tag = 0): void {
    if (count <= 0) return;
    const last = this.ranges[this.ranges.length - 1];
    if (last && last[0] + last[1] === start && last[2] === tag) last[1] += count;
    else this.ranges.push([start, count, tag]);
  }

  get length(): number {
    return this.ranges.length;
  }

  /** The ranges waiting, unsorted and not removed. */
  entries(): ReadonlyArray<readonly [start: number, count: number, tag: number]> {
    return this.ranges;
  }

  /** The lowest cluster index waiting in a range tagged `tag` (Infinity when none). */
  lowest(tag: number): number {
    let low = Infinity;
    for (const [start, , t] of this.ranges) if (t === tag && start < low) low = start;
    return low;
  }

  /** Remove and return all ranges, sorted, adjacent ones with equal tags merged. */
  drain(): Array<[start: number, count: number, tag: number]> {
    const sorted = this.ranges.sort((a, b) => a[0] - b[0]);
    this.ranges = [];
    const out: Array<[number, number, number]> = [];
    for (const [start, count, tag] of sorted) {
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === start && last[2] === tag) last[1] += count;
      else out.push([start, count, tag]);
    }
    return out;
  }
}
