/**
 * The page: open an image from local files, show what qemu-img would say about it (from the same core code
 * as the CLI), draw its clusters, and convert it for download. Nothing leaves the browser.
 */
import {
  baseName,
  checkReportHuman,
  checkFailureText,
  clusterMap,
  headerView,
  imageInfo,
  mapJson,
  openBlobImage,
  openUrlImage,
  resolveUrl,
  toQemuJson,
  type BlockImage,
  type ImageInfo,
  type JsonValue,
  type Qcow2Image,
} from "@qcowkit/core/browser";
import { ClusterPicture, renderLegend } from "./cluster-canvas";
import { exportToFile, saveAs } from "./export";
import { renderHuman, type ChainEntry } from "./human-view";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

const errorBox = $("error");
const status = $("status");
const result = $("result");
const picture = new ClusterPicture($<HTMLCanvasElement>("cluster-map"), $("hover-details"), $("zoom-range"), $("lanes"));

/** What is open: local files (the image first), or the URL of a remote image. */
type Source = { kind: "files"; files: File[] } | { kind: "url"; url: string };

let current: Source | undefined;
let generation = 0;

function sourceName(source: Source): string {
  return source.kind === "files" ? source.files[0]!.name : source.url;
}

type OpenOpts = { format?: string; noIo?: boolean; checkMode?: boolean };

function openSource(source: Source, opts: OpenOpts): Promise<BlockImage> {
  return source.kind === "files" ? openBlobImage(source.files, opts) : openUrlImage(source.url, opts);
}

/** One line, as the CLI prints it (without its program name). */
function showError(line: string): void {
  errorBox.textContent = line.replace(/\s*\n\s*/g, " ");
  errorBox.hidden = false;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function closeQuietly(image: BlockImage | undefined): Promise<void> {
  await image?.close().catch(() => undefined);
}

/** The backing chain as the image names it, and whether each file was given (found, for a URL). */
async function backingChain(source: Source, info: ImageInfo): Promise<ChainEntry[]> {
  const chain: ChainEntry[] = [];
  let next: { name: string; format: string | undefined } | undefined = info["backing-filename"] !== undefined ? { name: info["backing-filename"], format: info["backing-filename-format"] } : undefined;
  let at = sourceName(source);
  while (next && chain.length < 64) {
    let sub: Source | undefined;
    if (source.kind === "files") {
      const file = source.files.find((f) => f.name === baseName(next!.name));
      sub = file ? { kind: "files", files: [file] } : undefined;
    } else {
      const url = (() => {
        try {
          return resolveUrl(next.name, at);
        } catch {
          return undefined;
        }
      })();
      sub = url !== undefined ? { kind: "url", url } : undefined;
    }
    const image = sub ? await openSource(sub, { noIo: true, ...(next.format ? { format: next.format } : {}) }).catch(() => undefined) : undefined;
    chain.push({ name: next.name, format: next.format ?? "probed", found: image !== undefined, ...(sub?.kind === "url" ? { url: sub.url } : {}) });
    if (!image || !sub) break;
    at = sourceName(sub);
    const subInfo = await imageInfo(image, { filename: at });
    await closeQuietly(image);
    next = subInfo["backing-filename"] !== undefined ? { name: subInfo["backing-filename"], format: subInfo["backing-filename-format"] } : undefined;
  }
  return chain;
}

async function openImage(source: Source): Promise<void> {
  const mine = ++generation;
  current = source;
  errorBox.hidden = true;
  result.hidden = true;
  picture.clear();
  for (const id of ["info-json", "map-json", "check", "check-messages", "human", "download-status", "image-name"]) $(id).textContent = "";
  document.body.dataset.state = "loading";
  const name = sourceName(source);
  const stale = () => mine !== generation;
  status.textContent = `Opening ${name}…`;
  const started = performance.now();
  // qemu-img info: metadata only (the data file and the backing chain are not opened).
  let meta: BlockImage | undefined;
  try {
    meta = await openSource(source, { format: "qcow2", noIo: true });
    const info = await imageInfo(meta, { filename: name });
    if (stale()) return;
    $("image-name").textContent = name;
    $("info-json").textContent = `${toQemuJson(info as unknown as JsonValue)}\n`;
    const dataFileName = (meta as Qcow2Image).hasDataFile ? ((meta as Qcow2Image).dataFile ?? "") : undefined;
    renderHuman(
      $("human"),
      name,
      headerView(meta as Qcow2Image),
      info,
      await backingChain(source, info),
      dataFileName !== undefined ? { name: dataFileName, found: dataFileFound(source, dataFileName) } : undefined,
    );
    result.hidden = false;
  } catch (e) {
    if (!stale()) finish(`Could not open '${name}': ${messageOf(e)}`);
    return;
  } finally {
    await closeQuietly(meta);
  }
  // qemu-img map: the whole chain and the data file.
  let image: BlockImage | undefined;
  try {
    image = await openSource(source, { format: "qcow2" });
    const text = await mapJson(image);
    if (stale()) return;
    $("map-json").textContent = text;
  } catch (e) {
    if (!stale()) finish(`Could not open '${name}': ${messageOf(e)}`);
    return;
  } finally {
    await closeQuietly(image);
  }
  // qemu-img check, and the picture from the same pass.
  let checked: BlockImage | undefined;
  try {
    checked = await openSource(source, { format: "qcow2", checkMode: true });
    const map = await clusterMap(checked as Qcow2Image);
    if (stale()) return;
    // As qimg check: a check that could not complete prints no summary; internal errors follow it.
    const r = map.report;
    $("check").textContent = r.failure === undefined ? checkReportHuman(r) : "";
    const lines = [...r.messages];
    if (r.failure !== undefined) lines.push(`Check failed: ${checkFailureText(r.failure)}`);
    else if (r.checkErrors) lines.push("Check failed");
    $("check-messages").textContent = lines.length ? `${lines.join("\n")}\n` : "";
    $("check-messages").hidden = lines.length === 0;
    picture.show(map);
    renderLegend($("legend"), map);
  } catch (e) {
    if (!stale()) finish(`Could not open '${name}': ${messageOf(e)}`);
    return;
  } finally {
    await closeQuietly(checked);
  }
  finish(undefined, performance.now() - started);
}

/** Whether the data file the image names was given; a URL's data file is opened (and any failure shown) by the map step. */
function dataFileFound(source: Source, name: string): boolean {
  return source.kind === "url" || source.files.some((f) => f.name === baseName(name));
}

function finish(error: string | undefined, ms?: number): void {
  if (error !== undefined) showError(error);
  status.textContent = ms !== undefined ? `Opened, checked and drawn in ${Math.round(ms)} ms.` : "";
  document.body.dataset.openMs = ms !== undefined ? String(Math.round(ms)) : "";
  document.body.dataset.state = error !== undefined ? "error" : "ready";
}

async function download(target: "qcow2" | "raw"): Promise<void> {
  if (!current) return;
  const source = current;
  const name = sourceName(source);
  const compressed = target === "qcow2" && $<HTMLInputElement>("compress").checked;
  const out = $("download-status");
  const buttons = [$<HTMLButtonElement>("download-qcow2"), $<HTMLButtonElement>("download-raw")];
  buttons.forEach((b) => (b.disabled = true));
  document.body.dataset.download = "running";
  out.textContent = "Converting…";
  try {
    const file = await exportToFile({
      ...(source.kind === "files" ? { files: source.files } : { url: source.url }),
      target,
      compressed,
      onProgress: (p) => (out.textContent = `Converting… ${p.toFixed(0)}%`),
    });
    const stem = baseName(source.kind === "url" ? new URL(source.url).pathname : name).replace(/\.(qcow2|img|qcow)$/i, "");
    saveAs(file, target === "raw" ? `${stem}.raw` : `${stem}${compressed ? "-compressed" : "-converted"}.qcow2`);
    out.textContent = `Ready: ${file.size} bytes.`;
    document.body.dataset.download = "done";
  } catch (e) {
    showError(`Could not convert '${name}': ${messageOf(e)}`);
    out.textContent = "";
    document.body.dataset.download = "error";
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

function choose(list: FileList | null | undefined): void {
  const files = list ? [...list] : [];
  if (files.length > 0) void openImage({ kind: "files", files });
}

const input = $<HTMLInputElement>("file-input");
input.addEventListener("change", () => choose(input.files));
const zone = $("drop-zone");
for (const target of [zone, document.body]) {
  target.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  target.addEventListener("dragleave", () => zone.classList.remove("over"));
  target.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    zone.classList.remove("over");
    choose((e as DragEvent).dataTransfer?.files);
  });
}
$("download-qcow2").addEventListener("click", () => void download("qcow2"));
$("download-raw").addEventListener("click", () => void download("raw"));
$("zoom-in").addEventListener("click", () => picture.zoom(0.5));
$("zoom-out").addEventListener("click", () => picture.zoom(2));
$("zoom-reset").addEventListener("click", () => picture.reset());
$("pan-left").addEventListener("click", () => picture.pan(-1));
$("pan-right").addEventListener("click", () => picture.pan(1));

const remote = new URLSearchParams(location.search).get("url");
if (remote !== null) void openImage({ kind: "url", url: remote });
else document.body.dataset.state = "idle";
