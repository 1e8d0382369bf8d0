/**
 * QEMU's `quorum` driver over stores: every write goes to all children; a read is answered by the version
 * that at least `voteThreshold` children return (the most common one when several qualify), and fails with
 * EIO when none does. Sizes: the smallest child's.
 */
import { Qcow2Error, type ByteStore, type StorePreallocation } from "@qcowkit/spec";
import { assertByteRange } from "./store-checks";

export class QuorumStore implements ByteStore {
  readonly readOnly: boolean;

  constructor(
    readonly children: ByteStore[],
    readonly voteThreshold: number,
    readonly name: string,
  ) {
    if (children.length === 0) throw new Qcow2Error("INVALID_ARGUMENT", "Number of provided children must be a positive number");
    if (!Number.isInteger(voteThreshold) || voteThreshold < 1) throw new Qcow2Error("INVALID_ARGUMENT", "Quorum threshold must be greater or equal to 1");
    if (voteThreshold > children.length) throw new Qcow2Error("INVALID_ARGUMENT", "threshold may not exceed children count");
    this.readOnly = children.some((c) => c.readOnly);
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    assertByteRange(this.name, offset, into.byteLength);
    let failure: unknown;
    const versions = await Promise.all(
      this.children.map(async (c) => {
        const buf = new Uint8Array(into.byteLength);
        try {
          await c.read(offset, buf);
          return buf;
        } catch (e) {
          failure ??= e;
          return undefined;
        }
      }),
    );
    // No child could answer: its error (a closed store, a range past the end) is the answer.
    if (versions.every((v) => v === undefined)) throw failure;
    let best: Uint8Array | undefined;
    let bestVotes = 0;
    for (const v of versions) {
      if (!v) continue;
      const votes = versions.filter((w) => w !== undefined && sameBytes(v, w)).length;
      if (votes > bestVotes) {
        best = v;
        bestVotes = votes;
      }
    }
    if (!best || bestVotes < this.voteThreshold) throw new Qcow2Error("IO_ERROR", "Input/output error", { errno: "EIO" });
    into.set(best);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.all((c) => c.write(offset, data));
  }
  async flush(): Promise<void> {
    await this.all((c) => c.flush());
  }
  async size(): Promise<number> {
    return Math.min(...(await Promise.all(this.children.map((c) => c.size()))));
  }
  async resize(size: number, preallocation?: StorePreallocation): Promise<void> {
    await this.all((c) => c.resize(size, preallocation));
  }
  async discard(offset: number, length: number): Promise<void> {
    await this.all((c) => c.discard(offset, length));
  }
  async writeZeroes(offset: number, length: number, unmap?: boolean): Promise<void> {
    await this.all((c) => c.writeZeroes(offset, length, unmap));
  }
  async close(): Promise<void> {
    const results = await Promise.allSettled(this.children.map((c) => c.close()));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Run `op` on every child; the request fails when fewer than the threshold succeed (QEMU's quorum writes). */
  private async all(op: (c: ByteStore) => Promise<void>): Promise<void> {
    const results = await Promise.allSettled(this.children.map(op));
    const ok = results.filter((r) => r.status === "fulfilled").length;
    if (ok < this.voteThreshold) throw (results.find((r) => r.status === "rejected") as PromiseRejectedResult).reason;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
