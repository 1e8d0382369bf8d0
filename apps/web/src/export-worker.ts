/**
 * Converts the open image into a file of the origin's private file system (OPFS), in a dedicated worker
 * because only workers get synchronous access handles. The core's convert copies in bounded chunks and the
 * target's bytes go to disk, so memory stays flat whatever the image size.
 *
 * When the core gains a stream writer (a target that is written front to back, no seeking), this worker
 * is what changes: the page only asks for a Blob.
 */
import { Qcow2Image, RawImage, SyncHandleStore, convertImages, createQcow2, openBlobImage, type BlockImage } from "@qcowkit/core/browser";
import type { ExportReply, ExportRequest } from "./export-protocol";

interface SyncHandleFile {
  createSyncAccessHandle(): Promise<ConstructorParameters<typeof SyncHandleStore>[0]>;
}

const post = (reply: ExportReply) => (self as unknown as { postMessage(m: ExportReply): void }).postMessage(reply);

async function exportImage(req: ExportRequest): Promise<number> {
  const source = await openBlobImage(req.files, { format: "qcow2" });
  let target: BlockImage | undefined;
  try {
    const root = await navigator.storage.getDirectory();
    const handleFile = (await root.getFileHandle(req.scratchName, { create: true })) as unknown as SyncHandleFile;
    const openStore = async () => new SyncHandleStore(await handleFile.createSyncAccessHandle(), req.scratchName);
    let store = await openStore();
    await store.resize(0);
    if (req.target === "qcow2") {
      // Creating closes the store (as it does a file): open it again for the copy.
      await createQcow2(store, { size: source.virtualSize });
      store = await openStore();
      target = await Qcow2Image.open(store, { readOnly: false });
    } else {
      await store.resize(source.virtualSize);
      target = await RawImage.open(store);
    }
    await convertImages([source], target, {
      compressed: req.compressed,
      targetZeroInit: true,
      onProgress: (percent) => post({ type: "progress", percent }),
    });
    await target.close();
    target = undefined;
    // The size as closed (closing may still write): the page checks the file it downloads against it.
    const handle = await handleFile.createSyncAccessHandle();
    const bytes = handle.getSize();
    handle.close();
    return bytes;
  } finally {
    await target?.close().catch(() => undefined);
    await source.close().catch(() => undefined);
  }
}

self.onmessage = (e: MessageEvent<ExportRequest>) => {
  exportImage(e.data).then(
    (bytes) => post({ type: "done", bytes }),
    (err: unknown) => post({ type: "error", message: err instanceof Error ? err.message : String(err) }),
  );
};
