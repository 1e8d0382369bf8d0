/**
 * Downloads: the export worker writes the converted image into the origin's private file system, then the
 * page hands that file (disk-backed, never read into memory) to the browser's download.
 */
import type { ExportReply, ExportRequest } from "./export-protocol";

const SCRATCH = "qcowkit-export";

export interface ExportJob {
  files?: File[];
  url?: string;
  target: "qcow2" | "raw";
  compressed: boolean;
  onProgress(percent: number): void;
}

/** Convert in the worker; resolves with the finished file. */
export async function exportToFile(job: ExportJob): Promise<File> {
  const worker = new Worker(new URL("./export-worker.js", import.meta.url), { type: "module" });
  try {
    const bytes = await new Promise<number>((resolve, reject) => {
      worker.onmessage = (e: MessageEvent<ExportReply>) => {
        const m = e.data;
        if (m.type === "progress") job.onProgress(m.percent);
        else if (m.type === "done") resolve(m.bytes);
        else reject(new Error(m.message));
      };
      worker.onerror = (e) => reject(new Error(e.message || "the export worker failed to start"));
      const request: ExportRequest = { ...(job.files ? { files: job.files } : {}), ...(job.url !== undefined ? { url: job.url } : {}), target: job.target, compressed: job.compressed, scratchName: SCRATCH };
      worker.postMessage(request);
    });
    const root = await navigator.storage.getDirectory();
    const file = await (await root.getFileHandle(SCRATCH)).getFile();
    if (file.size !== bytes) throw new Error(`export incomplete: ${file.size} of ${bytes} bytes`);
    return file;
  } finally {
    worker.terminate();
  }
}

/** Offer `blob` as a download named `name`. */
export function saveAs(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  // The download has its own reference to the blob by now.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
