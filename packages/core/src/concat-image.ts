/**
 * Several images read as one disk, one after the other (qemu-img convert SRC1 SRC2 ... TARGET): guest byte
 * offsets past the first image's size continue into the second, and so on. Read-only; the images stay the
 * caller's (closing the view closes none of them).
 */
import { Qcow2Error } from "@qcowkit/spec";
import { mergeExtents, type BlockImage, type BlockStatusExtent } from "./block-image";

class ConcatImage implements BlockImage {
  readonly format = "raw" as const;
  readonly readOnly = true;
  readonly clusterSize = 512;
  readonly virtualSize: number;
  readonly filename: string;
  /** Where each image starts in the joined disk. */
  private readonly starts: number[] = [];

  constructor(private readonly parts: BlockImage[]) {
    let at = 0;
    for (const p of parts) {
      this.starts.push(at);
      at += p.virtualSize;
    }
    this.virtualSize = at;
    this.filename = parts.map((p) => p.filename).join(" + ");
  }

  /** Each image's share of [offset, offset+length): the image, its own offset, the length, the joined offset. */
  private *pieces(offset: number, length: number): Generator<{ part: BlockImage; at: number; n: number; joined: number }> {
    if (offset < 0 || length < 0 || offset + length > this.virtualSize) {
      throw new Qcow2Error("OUT_OF_BOUNDS", `Range ${offset}+${length} is outside the image (${this.virtualSize} bytes)`);
    }
    for (let i = 0; i < this.parts.length && length > 0; i++) {
      const part = this.parts[i]!;
      const start = this.starts[i]!;
      const end = start + part.virtualSize;
      if (offset >= end) continue;
      const n = Math.min(length, end - offset);
      yield { part, at: offset - start, n, joined: offset };
      offset += n;
      length -= n;
    }
  }

  async read(guestOffset: number, into: Uint8Array): Promise<void> {
    for (const p of this.pieces(guestOffset, into.byteLength)) {
      await p.part.read(p.at, into.subarray(p.joined - guestOffset, p.joined - guestOffset + p.n));
    }
  }

  async blockStatus(guestOffset: number, byteLength: number): Promise<BlockStatusExtent[]> {
    const out: BlockStatusExtent[] = [];
    for (const p of this.pieces(guestOffset, Math.min(byteLength, this.virtualSize - guestOffset))) {
      let end = p.at;
      for (const e of await p.part.blockStatus(p.at, p.n)) {
        // Host places belong to each image's own files: not carried over.
        out.push({ offset: e.offset - p.at + p.joined, length: e.length, present: e.present, zero: e.zero, data: e.data, depth: e.depth });
        end = e.offset + e.length;
      }
      // An image may answer for less than asked: the caller asks again from where the answer ends.
      if (end < p.at + p.n) break;
    }
    return mergeExtents(out);
  }

  private readOnlyError(): Qcow2Error {
    return new Qcow2Error("READ_ONLY", "Concatenated images are read-only");
  }
  async write(): Promise<void> {
    throw this.readOnlyError();
  }
  async writeZeroes(): Promise<void> {
    throw this.readOnlyError();
  }
  async discard(): Promise<void> {
    throw this.readOnlyError();
  }
  async resize(): Promise<void> {
    throw this.readOnlyError();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  async [Symbol.asyncDispose](): Promise<void> {}
}

/** `images` read as one disk, one after the other (see the file comment); one image is returned as it is. */
export function concatImages(images: BlockImage[]): BlockImage {
  if (images.length === 0) throw new Qcow2Error("INVALID_ARGUMENT", "No images to concatenate");
  return images.length === 1 ? images[0]! : new ConcatImage(images);
}
