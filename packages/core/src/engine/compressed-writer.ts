/**
 * Compressed writes: clusters compressed as they come, placed in issue order, packed byte by byte as QEMU packs them.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { EngineHost } from "./host";
import type { ReadPath } from "./read-path";
import type { WritePath } from "./write-path";

/** Clusters of one compressed write compressed at the same time (QEMU runs up to 8 cluster tasks at once). */
const COMPRESS_WINDOW = 8;

/** A cluster's bytes for the compressor: the image's short last cluster padded with zeros, as QEMU pads it. */
function padToCluster(piece: Uint8Array, clusterSize: number): Uint8Array {
  if (piece.byteLength === clusterSize) return piece;
  const padded = new Uint8Array(clusterSize);
  padded.set(piece);
  return padded;
}

/** A cluster compression did not make smaller (stored as it is). */
function isUncompressed(result: PromiseSettledResult<Uint8Array | undefined>): boolean {
  return result.status === "fulfilled" && result.value === undefined;
}

export interface CompressedHost extends EngineHost {
  readonly reads: ReadPath;
  readonly writes: WritePath;
}

export class CompressedWriter {
  constructor(private readonly h: CompressedHost) {}

  /** Compressed writes issued so far, and the next one whose turn it is to be placed. */
  compressedIssued = 0;

  private compressedPlaced = 0;

  private readonly compressedWaiting = new Map<number, () => void>();

  /** Wait until every compressed write issued before `ticket` has been placed (or has failed). */
  compressedTurn(ticket: number): Promise<void> {
    if (ticket === this.compressedPlaced) return Promise.resolve();
    return new Promise((resolve) => this.compressedWaiting.set(ticket, resolve));
  }

  endCompressedTurn(ticket: number): void {
    // A write that failed before its turn still waits for it, so turns end in order.
    if (ticket !== this.compressedPlaced) {
      const previous = this.compressedWaiting.get(ticket);
      this.compressedWaiting.set(ticket, () => {
        previous?.();
        this.endCompressedTurn(ticket);
      });
      return;
    }
    this.compressedPlaced++;
    const next = this.compressedWaiting.get(this.compressedPlaced);
    if (next) {
      this.compressedWaiting.delete(this.compressedPlaced);
      next();
    }
  }

  /** What QEMU refuses before compressing anything (qemu-io write -c, convert -c). */
  checkCompressedWrite(guestOffset: number, byteLength: number): void {
    const cs = this.h.clusterSize;
    if (this.h.hasDataFile) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    // encryption: compressed clusters would be stored in plain text (QEMU 7.2 does that; refused here)
    if (this.h.encryption) throw new Qcow2Error("NOT_SUPPORTED", "Compression and encryption not supported at the same time", { errno: "ENOTSUP" });
    const end = guestOffset + byteLength;
    if (guestOffset % cs !== 0 || (byteLength % cs !== 0 && end !== this.h.virtualSize)) {
      throw new Qcow2Error("INVALID_ARGUMENT", "Compressed writes must be cluster aligned", { errno: "EINVAL" });
    }
  }

  /**
   * Compress each cluster of `data` (a window of clusters at once: native codecs run on the thread pool):
   * the compressed bytes, undefined where compression does not make a cluster smaller, or what the codec threw.
   */
  async compressClusters(data: Uint8Array): Promise<Array<PromiseSettledResult<Uint8Array | undefined>>> {
    const cs = this.h.clusterSize;
    const codec = await this.h.reads.compression();
    const out: Array<PromiseSettledResult<Uint8Array | undefined>> = [];
    for (let base = 0; base < data.byteLength; base += COMPRESS_WINDOW * cs) {
      const window: Array<Promise<Uint8Array | undefined>> = [];
      for (let at = base; at < Math.min(data.byteLength, base + COMPRESS_WINDOW * cs); at += cs) {
        window.push(codec.compress(padToCluster(data.subarray(at, Math.min(data.byteLength, at + cs)), cs), cs - 1));
      }
      out.push(...(await Promise.allSettled(window)));
    }
    return out;
  }

  /**
   * Place the compressed clusters of a write, in guest order (exclusive lock held). Like QEMU's parallel
   * cluster tasks, a cluster that cannot be written fails the request, but the other clusters of the request
   * are still written.
   */
  async placeCompressedClusters(guestOffset: number, data: Uint8Array, compressed: Array<PromiseSettledResult<Uint8Array | undefined>>): Promise<void> {
    const cs = this.h.clusterSize;
    let failure: unknown;
    for (let i = 0; i < compressed.length; ) {
      const result = compressed[i]!;
      // Clusters compression did not make smaller, one after the other, are written as one normal write: one
      // allocation and one data write for the run (the same clusters, in the same order, as one at a time).
      let n = 1;
      if (isUncompressed(result)) {
        while (i + n < compressed.length && isUncompressed(compressed[i + n]!)) n++;
      }
      try {
        if (result.status === "rejected") throw result.reason;
        await this.placeCompressedCluster(guestOffset + i * cs, data.subarray(i * cs, Math.min(data.byteLength, (i + n) * cs)), result.value);
      } catch (e) {
        failure ??= e;
      }
      i += n;
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Store one cluster of a compressed write: `compressed` (undefined when compression did not make it
   * smaller) for the guest cluster at `pos`, whose bytes are `piece` (the image's last cluster may be short;
   * uncompressed, `piece` may span several clusters).
   */
  private async placeCompressedCluster(pos: number, piece: Uint8Array, compressed: Uint8Array | undefined): Promise<void> {
    if (!compressed) {
      await this.h.writes.writeUnlocked(pos, piece);
      return;
    }
    const t = await this.h.writes.l2ForWrite(pos);
    const old = this.h.md.clusters.entry(t, pos);
    if (old.kind === "compressed" || old.hostOffset !== 0) {
      // Compression cannot overwrite anything (QEMU fails the request with EIO).
      throw new Qcow2Error("IO_ERROR", "Input/output error", { errno: "EIO" });
    }
    const hostOffset = await this.allocateBytes(compressed.byteLength);
    this.h.md.checkOverlap(hostOffset, compressed.byteLength);
    await this.h.md.meta.write(hostOffset, compressed);
    this.h.md.noteDataWritten();
    this.h.md.clusters.setEntry(t, pos, { kind: "compressed", hostOffset, byteLength: compressed.byteLength });
    this.h.writes.releaseEntry(old, -1);
    await this.h.md.maybeWriteback();
  }

  /**
   * Byte offset where the next compressed cluster may start (QEMU's free_byte_offset): inside a host cluster
   * that earlier compressed data partly fills; 0 when there is none.
   */
  private compressedTail = 0;

  /**
   * Sub-cluster byte allocation for compressed data, as QEMU's qcow2_alloc_bytes packs it: the data follows
   * the previous compressed cluster byte after byte, and runs on into the next host cluster when that one is
   * the next free cluster of the file (otherwise it starts a fresh host cluster). Every host cluster the
   * bytes touch takes one reference; a partly used cluster whose refcount is at its maximum is left, and so
   * is one that has been freed since (QEMU would still fill it, though it may have been reused meanwhile).
   */
  private async allocateBytes(byteLength: number): Promise<number> {
    const cs = this.h.clusterSize;
    let offset = this.h.md.refcounts.watchedFreed ? 0 : this.compressedTail;
    if (offset !== 0 && (await this.h.md.refcounts.get(Math.floor(offset / cs))) >= this.h.md.refcounts.maxValue) offset = 0;
    if (offset !== 0 && cs - (offset % cs) >= byteLength) {
      // Fits in the partly used cluster: one more reference to it.
      await this.h.md.refcounts.update(Math.floor(offset / cs), 1, 1);
    } else {
      // The new cluster takes its reference here; the partly used one before it one more when the data
      // starts there and runs on into the new one.
      const fresh = (await this.h.md.allocateMetadata(1, "compressed cluster")) * cs;
      // The allocation may have released discarded clusters first (onDeferredBelow): the partly used one too.
      if (offset !== 0 && !this.h.md.refcounts.watchedFreed && Math.ceil(offset / cs) * cs === fresh) await this.h.md.refcounts.update(Math.floor(offset / cs), 1, 1);
      else offset = fresh;
    }
    const end = offset + byteLength;
    this.compressedTail = end % cs === 0 ? 0 : end;
    this.h.md.refcounts.watched = this.compressedTail === 0 ? -1 : Math.floor(end / cs);
    this.h.md.refcounts.watchedFreed = false;
    return offset;
  }
}
