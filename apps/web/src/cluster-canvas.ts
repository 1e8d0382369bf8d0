/**
 * The cluster picture: each file of the image (the qcow2 file, then its external data file) is a band of
 * square cells, one cell per run of clusters. Whole files of any size fit: when a file has more clusters
 * than the band has cells, each cell aggregates a run-length slice of clusters and shows the kind most of
 * them have (metadata outranks free space, so a lone table in a sea of free clusters stays visible). Zoom
 * narrows the slice shown; pointing at a cell names what it covers.
 */
import type { ClusterKind, ClusterMap, ClusterRun } from "@qcowkit/core/browser";

export const KIND_STYLE: Record<ClusterKind, { color: string; label: string }> = {
  free: { color: "#f1f3f5", label: "free" },
  header: { color: "#1a202c", label: "header" },
  l1: { color: "#c53030", label: "L1 table" },
  l2: { color: "#ed8936", label: "L2 tables" },
  "refcount-table": { color: "#6b46c1", label: "refcount table" },
  "refcount-block": { color: "#9f7aea", label: "refcount blocks" },
  "snapshot-table": { color: "#2c7a7b", label: "snapshot table" },
  "snapshot-l1": { color: "#4fd1c5", label: "snapshot L1 tables" },
  data: { color: "#3182ce", label: "data" },
  compressed: { color: "#38a169", label: "compressed data" },
  "bitmap-directory": { color: "#b7791f", label: "bitmap directory" },
  "bitmap-table": { color: "#d69e2e", label: "bitmap tables" },
  "bitmap-data": { color: "#f6e05e", label: "bitmap data" },
  encryption: { color: "#718096", label: "encryption header" },
  leaked: { color: "#e53e3e", label: "leaked" },
  overlap: { color: "#ff00ff", label: "used twice (corrupt)" },
  "data-file": { color: "#90cdf4", label: "data file: guest data" },
};

/** Cell sizes tried, largest first: small files get big cells, large ones small cells. */
const CELL_SIZES = [24, 16, 12, 8];
const GAP = 10;
const MAX_ROWS = 40;
/** The largest cells whose picture fits this height. */
const TARGET_HEIGHT = 240;

/** One band: a file's clusters [first, first + cells * per). */
interface Band {
  file: ClusterMap["files"][number];
  top: number;
  columns: number;
  cells: number;
  first: number;
  per: number;
  /** Kind per cell, and count per kind per cell for the hover text. */
  kinds: ClusterKind[];
}

/** Clusters of each kind in [from, to) of `runs` (sorted, covering the file). */
export function kindCounts(runs: readonly ClusterRun[], from: number, to: number): Map<ClusterKind, number> {
  const counts = new Map<ClusterKind, number>();
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (runs[mid]!.start + runs[mid]!.count <= from) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < runs.length && runs[i]!.start < to; i++) {
    const r = runs[i]!;
    const n = Math.min(to, r.start + r.count) - Math.max(from, r.start);
    if (n > 0) counts.set(r.kind, (counts.get(r.kind) ?? 0) + n);
  }
  return counts;
}

function dominant(counts: Map<ClusterKind, number>): ClusterKind {
  let best: ClusterKind = "free";
  let bestCount = 0;
  for (const [kind, n] of counts) {
    if (kind === "free") continue;
    if (n > bestCount) {
      best = kind;
      bestCount = n;
    }
  }
  return best;
}

export class ClusterPicture {
  private map: ClusterMap | undefined;
  /** Visible fraction of each file: [start, end) as fractions of its clusters. */
  private viewStart = 0;
  private viewEnd = 1;
  private bands: Band[] = [];
  private cell = 8;

  constructor(
    private readonly canvas: HTMLCanvasElement,
    private readonly details: HTMLElement,
    private readonly rangeLabel: HTMLElement,
    private readonly lanes: HTMLElement,
  ) {
    canvas.addEventListener("mousemove", (e) => this.hover(e.offsetX, e.offsetY));
    canvas.addEventListener("mouseleave", () => (this.details.textContent = "Point at the picture for details."));
    canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const band = this.bandAt(e.offsetY);
        const at = band ? this.fractionAt(band, e.offsetX, e.offsetY) : (this.viewStart + this.viewEnd) / 2;
        this.zoom(e.deltaY < 0 ? 0.5 : 2, at);
      },
      { passive: false },
    );
  }

  show(map: ClusterMap): void {
    this.map = map;
    this.viewStart = 0;
    this.viewEnd = 1;
    this.draw();
  }

  clear(): void {
    this.map = undefined;
    this.bands = [];
    this.canvas.height = 1;
    this.lanes.textContent = "";
  }

  /** Zoom by `factor` (0.5 = in) around the fraction `at` of the files. */
  zoom(factor: number, at = (this.viewStart + this.viewEnd) / 2): void {
    const width = Math.min(1, Math.max(1 / 2 ** 40, (this.viewEnd - this.viewStart) * factor));
    let start = at - (at - this.viewStart) * (width / (this.viewEnd - this.viewStart));
    start = Math.min(Math.max(0, start), 1 - width);
    this.viewStart = start;
    this.viewEnd = start + width;
    this.draw();
  }

  pan(direction: -1 | 1): void {
    const width = this.viewEnd - this.viewStart;
    const start = Math.min(Math.max(0, this.viewStart + direction * width * 0.5), 1 - width);
    this.viewStart = start;
    this.viewEnd = start + width;
    this.draw();
  }

  reset(): void {
    this.viewStart = 0;
    this.viewEnd = 1;
    this.draw();
  }

  private draw(): void {
    const map = this.map;
    if (!map) return;
    let top = 0;
    for (const cell of CELL_SIZES) {
      this.cell = cell;
      top = this.layout(map, cell);
      if (top - GAP <= TARGET_HEIGHT) break;
    }
    const CELL = this.cell;
    this.canvas.height = Math.max(CELL, top - GAP);
    const g = this.canvas.getContext("2d")!;
    g.fillStyle = "#ffffff";
    g.fillRect(0, 0, this.canvas.width, this.canvas.height);
    for (const band of this.bands) {
      band.kinds.forEach((kind, i) => {
        g.fillStyle = KIND_STYLE[kind].color;
        g.fillRect((i % band.columns) * CELL, band.top + Math.floor(i / band.columns) * CELL, CELL - 1, CELL - 1);
      });
    }
    this.lanes.textContent = this.bands
      .map((b, i) => `${i === 0 ? "Image file" : "Data file"} ${b.file.name}: ${b.file.clusters} clusters of ${map.clusterSize} bytes, ${b.per} per cell`)
      .join(" · ");
    const whole = this.viewStart === 0 && this.viewEnd === 1;
    this.rangeLabel.textContent = whole ? "whole file" : `${(this.viewStart * 100).toFixed(2)}% to ${(this.viewEnd * 100).toFixed(2)}% of the file`;
  }

  /** Bands for cells of `cell` pixels; returns the height they take (plus one gap). */
  private layout(map: ClusterMap, cell: number): number {
    const columns = Math.floor(this.canvas.width / cell);
    this.bands = [];
    let top = 0;
    for (const file of map.files) {
      const first = Math.floor(this.viewStart * file.clusters);
      const last = Math.max(first + 1, Math.ceil(this.viewEnd * file.clusters));
      const visible = Math.min(last, file.clusters) - first;
      const per = Math.max(1, Math.ceil(visible / (columns * MAX_ROWS)));
      const cells = Math.max(1, Math.ceil(visible / per));
      const kinds: ClusterKind[] = [];
      for (let c = 0; c < cells; c++) {
        const from = first + c * per;
        kinds.push(dominant(kindCounts(file.runs, from, Math.min(file.clusters, from + per))));
      }
      this.bands.push({ file, top, columns, cells, first, per, kinds });
      top += Math.ceil(cells / columns) * cell + GAP;
    }
    return top;
  }

  private bandAt(y: number): Band | undefined {
    return this.bands.find((b) => y >= b.top && y < b.top + Math.ceil(b.cells / b.columns) * this.cell);
  }

  private cellAt(band: Band, x: number, y: number): number {
    return Math.floor((y - band.top) / this.cell) * band.columns + Math.floor(x / this.cell);
  }

  private fractionAt(band: Band, x: number, y: number): number {
    return (band.first + this.cellAt(band, x, y) * band.per) / band.file.clusters;
  }

  private hover(x: number, y: number): void {
    const band = this.bandAt(y);
    const map = this.map;
    if (!band || !map) return;
    const cell = this.cellAt(band, x, y);
    if (cell < 0 || cell >= band.cells) return;
    const from = band.first + cell * band.per;
    const to = Math.min(band.file.clusters, from + band.per);
    const counts = [...kindCounts(band.file.runs, from, to)].map(([k, n]) => `${n} ${KIND_STYLE[k].label}`).join(", ");
    const hex = (n: number) => `0x${n.toString(16)}`;
    const which = to - from === 1 ? `cluster ${from}` : `clusters ${from}-${to - 1}`;
    this.details.textContent = `${band.file.name}: ${which} (offset ${hex(from * map.clusterSize)}-${hex(to * map.clusterSize - 1)}): ${counts}`;
  }
}

/** The legend: every kind that occurs in the map. */
export function renderLegend(list: HTMLElement, map: ClusterMap): void {
  const present = new Set(map.files.flatMap((f) => f.runs.map((r) => r.kind)));
  list.replaceChildren(
    ...(Object.keys(KIND_STYLE) as ClusterKind[])
      .filter((k) => present.has(k))
      .map((k) => {
        const li = document.createElement("li");
        li.style.setProperty("--swatch", KIND_STYLE[k].color);
        li.dataset.kind = k;
        li.textContent = KIND_STYLE[k].label;
        return li;
      }),
  );
}
