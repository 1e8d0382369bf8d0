/** The human view beside qemu-img's output: header fields, named feature bits, extensions, snapshots, bitmaps, backing chain, data file. */
import type { HeaderView, ImageInfo } from "@qcowkit/core/browser";

function el<K extends keyof HTMLElementTagNameMap>(tag: K, text?: string, cls?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function table(id: string, head: string[], rows: string[][], rowClass?: (i: number) => string | undefined): HTMLTableElement {
  const t = el("table");
  t.id = id;
  const tr = el("tr");
  for (const h of head) tr.append(el("th", h));
  t.append(tr);
  rows.forEach((r, i) => {
    const row = el("tr");
    const cls = rowClass?.(i);
    if (cls) row.className = cls;
    for (const c of r) row.append(el("td", c));
    t.append(row);
  });
  return t;
}

export interface ChainEntry {
  name: string;
  format: string;
  found: boolean;
  /** The URL it resolved to (remote images); shown instead of "given". */
  url?: string;
}

export function renderHuman(
  root: HTMLElement,
  name: string,
  view: HeaderView,
  info: ImageInfo,
  chain: readonly ChainEntry[],
  dataFile: { name: string; found: boolean } | undefined,
): void {
  const parts: HTMLElement[] = [el("h3", "Header")];
  parts.push(table("header-fields", ["field", "value"], view.fields));
  parts.push(el("h3", "Feature bits"));
  parts.push(
    table(
      "feature-bits",
      ["kind", "bit", "name", "set"],
      view.features.map((f) => [f.kind, String(f.bit), f.name, f.set ? "yes" : "no"]),
      (i) => (view.features[i]!.set ? undefined : "off"),
    ),
  );
  parts.push(el("h3", "Header extensions"));
  parts.push(view.extensions.length ? table("extensions", ["type", "name", "details"], view.extensions.map((x) => [x.type, x.name, x.detail])) : el("p", "none"));
  const snapshots = info.snapshots ?? [];
  parts.push(el("h3", `Snapshots (${snapshots.length})`));
  if (snapshots.length) {
    parts.push(
      table(
        "snapshots",
        ["id", "tag", "VM state", "date (UTC)", "VM clock"],
        snapshots.map((s) => [s.id, s.name, `${s["vm-state-size"]} bytes`, new Date(s["date-sec"] * 1000).toISOString().replace("T", " ").slice(0, 19), `${s["vm-clock-sec"]}.${String(s["vm-clock-nsec"]).padStart(9, "0")} s`]),
      ),
    );
  }
  const specific = info["format-specific"];
  const bitmaps = specific?.type === "qcow2" ? (specific.data.bitmaps ?? []) : [];
  parts.push(el("h3", `Persistent dirty bitmaps (${bitmaps.length})`));
  if (bitmaps.length) parts.push(table("bitmaps", ["name", "granularity", "flags"], bitmaps.map((b) => [b.name, `${b.granularity} bytes`, b.flags.join(", ") || "-"])));
  parts.push(el("h3", "Backing chain"));
  const chainRows = [[name, "qcow2", "this image"], ...chain.map((c) => [c.name, c.format, c.url !== undefined ? (c.found ? c.url : `${c.url}: could not be opened`) : c.found ? "given" : "not given: choose it with the image"])];
  parts.push(table("backing-chain", ["file", "format", ""], chainRows));
  parts.push(el("h3", "External data file"));
  parts.push(el("p", dataFile ? `${dataFile.name}${dataFile.found ? "" : " (not given: choose it with the image)"}` : "none: guest data is in the image file"));
  root.replaceChildren(...parts);
}
