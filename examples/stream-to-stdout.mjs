#!/usr/bin/env node
// Stream an image to standard output as a qcow2 laid out for one forward write (or raw with --raw), through
// the core's Web Streams API: `node stream-to-stdout.mjs disk.raw | ssh host 'qimg convert -O raw - /dev/vdb'`.
// The same imageToStream call works in a browser (with a MemoryStore- or File-backed image) or a service.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileStore, imageToStream, openImage, pipeWebStreamTo } from "@qcowkit/core/node";

const args = process.argv.slice(2);
const raw = args.includes("--raw");
const path = args.find((a) => !a.startsWith("--"));
if (!path || process.stdout.isTTY) {
  console.error("usage: stream-to-stdout.mjs [--raw] IMAGE > OUT   (standard output must not be a terminal)");
  process.exit(1);
}
const image = await openImage(path, { readOnly: true });
// Clusters the qcow2 plan reads past its 32 MiB memory cache wait in a scratch file, so the image is read once.
const scratchDir = mkdtempSync(join(tmpdir(), "stream-to-stdout-"));
let scratch;
const ac = new AbortController();
process.once("SIGINT", () => ac.abort(new Error("interrupted")));
try {
  const stream = imageToStream(image, {
    format: raw ? "raw" : "qcow2",
    compress: args.includes("--compress"),
    scratch: async () => (scratch = await FileStore.open(join(scratchDir, "scratch"), { create: true, truncate: true })),
    signal: ac.signal,
    onProgress: (done, total) => process.stderr.write(`\r${((100 * done) / total).toFixed(1)}%`),
  });
  await pipeWebStreamTo(stream, process.stdout);
  process.stderr.write("\n");
} finally {
  await image.close();
  await scratch?.close();
  rmSync(scratchDir, { recursive: true, force: true });
}
