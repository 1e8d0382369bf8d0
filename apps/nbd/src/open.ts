/**
 * The one place an image is opened: `openImage` from @qcowkit/core (qcow2 with external data files and
 * backing chains, or raw), wrapped for probed raw images.
 */
import { openImage } from "@qcowkit/core/node";
import { Qcow2Error } from "@qcowkit/spec";
import type { BlockImage } from "./device";

export interface OpenExportOptions {
  /** -f: "raw" or "qcow2"; probed when absent. */
  format?: string;
  readOnly: boolean;
  /** --discard: "unmap" passes guest TRIM on, "ignore" drops it. */
  discard?: "ignore" | "unmap";
  /** Do not take the image lock (force-share). */
  shareRW?: boolean;
  /** Untrusted image: no format probing, no data/backing file outside the image's folder. */
  safe?: boolean;
  /** Follow stored data/backing file names anywhere; by default they must lead inside the image's folder. */
  trustReferences?: boolean;
  /** "off": take no image lock. */
  locking?: "on" | "off";
}

/** Largest read or write made synchronously on an image file in memory. */
export const IN_MEMORY_SYNC_IO_BYTES = 64 * 1024;

/** Opens the image qnbd serves. Errors are Qcow2Errors with one-line QEMU-style messages. */
export async function openExport(file: string, opts: OpenExportOptions): Promise<BlockImage> {
  if (opts.format !== undefined && opts.format !== "raw" && opts.format !== "qcow2") {
    throw new Qcow2Error("INVALID_ARGUMENT", `Unknown driver '${opts.format}'`);
  }
  const image = await openImage(file, {
    readOnly: opts.readOnly,
    ...(opts.format !== undefined ? { format: opts.format } : {}),
    ...(opts.discard !== undefined ? { discard: opts.discard } : {}),
    ...(opts.shareRW ? { shareRW: true } : {}),
    ...(opts.safe ? { safe: true } : {}),
    // A server reads on behalf of its clients: names stored in the image may not lead out of its folder.
    confineReferences: !opts.trustReferences,
    ...(opts.locking !== undefined ? { locking: opts.locking } : {}),
    // Images in memory (tmpfs): small reads and writes skip the thread pool, whose round trip costs several
    // times the copy; elsewhere they stay on it, so a slow device read does not hold up the other requests.
    inMemorySyncIoBytes: IN_MEMORY_SYNC_IO_BYTES,
    // Elsewhere, reads the page cache can answer at once are made on this thread too (native addon, Linux).
    cachedReadBytes: IN_MEMORY_SYNC_IO_BYTES,
  });
  return opts.format === undefined && image.format === "raw" ? new ProbedRawGuard(image) : image;
}

const QCOW2_MAGIC = [0x51, 0x46, 0x49, 0xfb];

/**
 * A raw image whose format was guessed must not be turned into something that probes as another format:
 * a guest writing a qcow2 header into sector 0 could otherwise make the next probing open read host files
 * through it. Such writes fail with EPERM (QEMU restricts probed raw images the same way).
 */
export class ProbedRawGuard implements BlockImage {
  constructor(private readonly inner: BlockImage) {}
  get format() { return this.inner.format; }
  get filename() { return this.inner.filename; }
  get virtualSize() { return this.inner.virtualSize; }
  get readOnly() { return this.inner.readOnly; }
  get clusterSize() { return this.inner.clusterSize; }
  read(o: number, into: Uint8Array) { return this.inner.read(o, into); }
  async write(o: number, data: Uint8Array, opts?: { fua?: boolean; compressed?: boolean }) {
    if (o < QCOW2_MAGIC.length && data.byteLength > 0) {
      const head = new Uint8Array(QCOW2_MAGIC.length);
      if (this.inner.virtualSize >= head.byteLength) await this.inner.read(0, head);
      head.set(data.subarray(0, head.byteLength - o), o);
      if (QCOW2_MAGIC.every((byte, i) => head[i] === byte)) {
        throw new Qcow2Error("READ_ONLY", "writing a qcow2 header to a probed raw image is not permitted");
      }
    }
    return this.inner.write(o, data, opts);
  }
  writeZeroes(o: number, n: number, opts?: { unmap?: boolean; noFallback?: boolean; fua?: boolean }) { return this.inner.writeZeroes(o, n, opts); }
  discard(o: number, n: number) { return this.inner.discard(o, n); }
  flush() { return this.inner.flush(); }
  blockStatus(o: number, n: number) { return this.inner.blockStatus(o, n); }
  resize(n: number, opts?: { shrink?: boolean; preallocation?: "off" | "metadata" | "falloc" | "full" }) { return this.inner.resize(n, opts); }
  close() { return this.inner.close(); }
  [Symbol.asyncDispose]() { return this.close(); }
}

