#!/usr/bin/env node
// A frontend of your own on @qcowkit/core: open the qcow2 image named on the command line (its external
// data file and backing chain come along), hash the whole guest disk, print {"virtualSize", "sha256"}.
import { createHash } from "node:crypto";
import { openImage } from "@qcowkit/core/node";

const path = process.argv[2];
if (!path) {
  console.error("usage: custom-frontend.mjs IMAGE");
  process.exit(1);
}
const image = await openImage(path, { readOnly: true });
const hash = createHash("sha256");
const chunk = new Uint8Array(4 * 1024 * 1024);
for (let offset = 0; offset < image.virtualSize; offset += chunk.byteLength) {
  const piece = chunk.subarray(0, Math.min(chunk.byteLength, image.virtualSize - offset));
  await image.read(offset, piece);
  hash.update(piece);
}
await image.close();
console.log(JSON.stringify({ virtualSize: image.virtualSize, sha256: hash.digest("hex") }));
