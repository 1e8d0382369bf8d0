/**
 * `createImage` on remote names: an s3:// object is written whole through a multipart upload (a qcow2 image's
 * metadata is laid out in memory first: it is small; a raw image is a stream of zeros); http(s) URLs are
 * read-only.
 */
import { MemoryStore, isS3Name, nodeFetch, uploadS3Object } from "@qcowkit/datafile/node";
import { Qcow2Error } from "@qcowkit/spec";
import { createQcow2, validateCreateOptions, type Qcow2CreateOptions } from "../create";
import { s3ConfigFromEnv } from "./remote-open";

const PIECE = 1 << 20;

/** `length` zero bytes in pieces of at most 1 MiB (one buffer, reused). */
async function* zeros(length: number): AsyncGenerator<Uint8Array> {
  const piece = new Uint8Array(Math.min(PIECE, Math.max(1, length)));
  for (let at = 0; at < length; at += piece.length) yield piece.subarray(0, Math.min(piece.length, length - at));
}

/** The bytes of a store in pieces of at most 1 MiB. */
async function* storeBytes(store: MemoryStore): AsyncGenerator<Uint8Array> {
  const size = await store.size();
  for (let at = 0; at < size; at += PIECE) {
    const piece = new Uint8Array(Math.min(PIECE, size - at));
    await store.read(at, piece);
    yield piece;
  }
}

export async function createRemoteImage(name: string, format: "qcow2" | "raw", opts: Qcow2CreateOptions): Promise<void> {
  if (!isS3Name(name)) {
    throw new Qcow2Error("NOT_SUPPORTED", "Cannot create an image over HTTP(S): the curl protocol is read-only", { errno: "ENOTSUP" });
  }
  const config = s3ConfigFromEnv();
  let source: AsyncGenerator<Uint8Array>;
  if (format === "raw") {
    source = zeros(opts.size);
  } else {
    validateCreateOptions(opts);
    if (opts.dataFile !== undefined) {
      throw new Qcow2Error("NOT_SUPPORTED", "An image created on S3 cannot get an external data file (create it locally, then upload both)", { errno: "ENOTSUP" });
    }
    if (opts.preallocation !== undefined && opts.preallocation !== "off") {
      throw new Qcow2Error("NOT_SUPPORTED", `Preallocation '${opts.preallocation}' is not supported for S3 objects`, { errno: "ENOTSUP" });
    }
    // createQcow2 leaves the store open: its bytes are uploaded from there.
    const memory = new MemoryStore();
    await createQcow2(memory, opts);
    source = storeBytes(memory);
  }
  await uploadS3Object(name, config, source, { fetch: nodeFetch() });
}
