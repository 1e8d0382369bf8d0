/**
 * A list of cluster ranges waiting to be freed. Adding a range adjacent to the last one extends it, so the
 * common sequential case stays one entry; `drain` sorts and merges adjacent ranges. A cluster added twice
 * is freed twice (it had two references).
 */
export class RangeList {
  private ranges: Array<[start: number, count: number]> = [];

  add(start: number, count: number): void {
    if (count <= 0) return;
    const last = this.ranges[this.ranges.length - 1];
    if (last && last[0] + last[1] === start) last[1] += count;
    else this.ranges.push([start, count]);
  }

  get length(): number {
    return this.ranges.length;
  }

  /** Remove and return all ranges, sorted, adjacent ones merged; each returned triple is [start, count, 1]. */
  drain(): Array<[start: number, count: number, times: number]> {
    const sorted = this.ranges.sort((a, b) => a[0] - b[0]);
    this.ranges = [];
    const out: Array<[number, number, number]> = [];
    for (const [start, count] of sorted) {
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === start) last[1] += count;
      else out.push([start, count, 1]);
    }
    return out;
  }
}
