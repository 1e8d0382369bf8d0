#!/usr/bin/env node
// Stream an image to standard output as a qcow2 laid out for one forward write (or raw with --raw), through
// the core's Web Streams API: `node stream-to-stdout.mjs disk.raw | ssh host 'qimg convert -O raw - /dev/vdb'`.
// The same imageToStream call works in a browser (with a MemoryStore- or File-backed image) or a service.
import { imageToStream, openImage, pipeWebStreamTo } from "@qcowkit/core/node";

const args = process.argv.slice(2);
const raw = args.includes("--raw");
const path = args.find((a) => !a.startsWith("--"));
if (!path || process.stdout.isTTY) {
  console.error("usage: stream-to-stdout.mjs [--raw] IMAGE > OUT   (standard output must not be a terminal)");
  process.exit(1);
}
const image = await openImage(path, { readOnly: true });
const ac = new AbortController();
process.once("SIGINT", () => ac.abort(new Error("interrupted")));
try {
  const stream = imageToStream(image, {
    format: raw ? "raw" : "qcow2",
    compress: args.includes("--compress"),
    signal: ac.signal,
    onProgress: (done, total) => process.stderr.write(`\r${((100 * done) / total).toFixed(1)}%`),
  });
  await pipeWebStreamTo(stream, process.stdout);
  process.stderr.write("\n");
} finally {
  await image.close();
}
