/**
 * Converts the open image into a file of the origin's private file system (OPFS), in a dedicated worker
 * because only workers get synchronous access handles. The bytes come from the core's stream writer
 * (`imageToStream`: raw, or qcow2 laid out front to back) and are appended to the file chunk by chunk, so
 * memory stays bounded (the stream's chunks and its planning cache) whatever the image size.
 *
 * Why a file and not a streamed download: a page can only hand the browser a Blob or a URL to download;
 * streaming the bytes straight into a download needs a service worker answering that URL (or the save-file
 * picker, which asks the user). The OPFS file is disk-backed and is given to the download without being
 * read into memory.
 */
import { SyncHandleStore, imageToStream, openBlobImage, openUrlImage } from "@qcowkit/core/browser";
import type { ExportReply, ExportRequest } from "./export-protocol";

interface SyncHandleFile {
  createSyncAccessHandle(): Promise<ConstructorParameters<typeof SyncHandleStore>[0]>;
}

const post = (reply: ExportReply) => (self as unknown as { postMessage(m: ExportReply): void }).postMessage(reply);

async function exportImage(req: ExportRequest): Promise<number> {
  const source = req.url !== undefined ? await openUrlImage(req.url, { format: "qcow2" }) : await openBlobImage(req.files ?? [], { format: "qcow2" });
  let store: SyncHandleStore | undefined;
  try {
    const root = await navigator.storage.getDirectory();
    const handleFile = (await root.getFileHandle(req.scratchName, { create: true })) as unknown as SyncHandleFile;
    store = new SyncHandleStore(await handleFile.createSyncAccessHandle(), req.scratchName);
    await store.resize(0);
    let lastPercent = -1;
    const stream = imageToStream(source, {
      format: req.target,
      ...(req.target === "qcow2" && req.compressed ? { compress: true } : {}),
      onProgress: (done, total) => {
        const percent = total > 0 ? Math.floor((done * 100) / total) : 100;
        if (percent !== lastPercent) post({ type: "progress", percent: (lastPercent = percent) });
      },
    });
    let offset = 0;
    const reader = stream.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      await store.write(offset, value);
      offset += value.length;
    }
    await store.flush();
    return offset;
  } finally {
    await store?.close().catch(() => undefined);
    await source.close().catch(() => undefined);
  }
}

self.onmessage = (e: MessageEvent<ExportRequest>) => {
  exportImage(e.data).then(
    (bytes) => post({ type: "done", bytes }),
    (err: unknown) => post({ type: "error", message: err instanceof Error ? err.message : String(err) }),
  );
};
