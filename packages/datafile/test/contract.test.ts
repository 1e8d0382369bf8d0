import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { MemoryStore, SyncHandleStore } from "../src/index";
import { FaultInjectingStore } from "../src/testing";
import { FileStore } from "../src/node";
import { describeByteStoreContract } from "./contract";

let directory = "";
let fileCounter = 0;
beforeAll(async () => {
  directory = await mkdtemp(join(tmpdir(), "qcowkit-datafile-contract-"));
});
afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

async function fileStore(bytes: Uint8Array, readOnly: boolean): Promise<FileStore> {
  const path = join(directory, `store-${++fileCounter}.raw`);
  await writeFile(path, bytes);
  return FileStore.open(path, { readOnly });
}

describeByteStoreContract("MemoryStore", async ({ bytes, readOnly }) => new MemoryStore({ bytes, readOnly }));

describeByteStoreContract(
  "MemoryStore with 512-byte chunks",
  async ({ bytes, readOnly }) => new MemoryStore({ bytes, readOnly, chunkSize: 512 }),
);

describeByteStoreContract("MemoryStore over a copy-on-write base", async ({ bytes, readOnly }) => {
  const base = new MemoryStore({ bytes, readOnly: true, chunkSize: 4096 });
  return new MemoryStore({ base, size: bytes?.byteLength ?? 0, readOnly });
});

describeByteStoreContract("FileStore", ({ bytes, readOnly }) => fileStore(bytes, readOnly));

describeByteStoreContract(
  "FaultInjectingStore over MemoryStore, no fault",
  async ({ bytes, readOnly }) => new FaultInjectingStore(new MemoryStore({ bytes, readOnly })),
);

describeByteStoreContract(
  "FaultInjectingStore over FileStore, no fault",
  async ({ bytes, readOnly }) => new FaultInjectingStore(await fileStore(bytes, readOnly)),
);

/** An in-memory, sparse stand-in for the browser's FileSystemSyncAccessHandle (same calls, short reads at the end). */
class FakeSyncAccessHandle {
  private static readonly CHUNK = 65536;
  private readonly chunks = new Map<number, Uint8Array>();
  private length = 0;
  constructor(initial: Uint8Array) {
    this.write(initial, { at: 0 });
  }
  read(buffer: Uint8Array, { at }: { at: number }): number {
    const n = Math.max(0, Math.min(buffer.byteLength, this.length - at));
    this.each(at, n, (chunk, from, to, done) => buffer.set(chunk ? chunk.subarray(from, to) : new Uint8Array(to - from), done));
    return n;
  }
  write(buffer: Uint8Array, { at }: { at: number }): number {
    this.each(at, buffer.byteLength, (_, from, to, done, index) => {
      let chunk = this.chunks.get(index);
      if (!chunk) this.chunks.set(index, (chunk = new Uint8Array(FakeSyncAccessHandle.CHUNK)));
      chunk.set(buffer.subarray(done, done + to - from), from);
    });
    this.length = Math.max(this.length, at + buffer.byteLength);
    return buffer.byteLength;
  }
  truncate(size: number): void {
    if (size < this.length) {
      const tail = Math.min(this.length, Math.ceil(size / FakeSyncAccessHandle.CHUNK) * FakeSyncAccessHandle.CHUNK) - size;
      if (tail > 0) this.write(new Uint8Array(tail), { at: size });
      for (const index of this.chunks.keys()) if (index * FakeSyncAccessHandle.CHUNK >= size) this.chunks.delete(index);
    }
    this.length = size;
  }
  getSize(): number {
    return this.length;
  }
  flush(): void {}
  close(): void {}
  private each(at: number, n: number, f: (chunk: Uint8Array | undefined, from: number, to: number, done: number, index: number) => void): void {
    const C = FakeSyncAccessHandle.CHUNK;
    for (let done = 0; done < n; ) {
      const index = Math.floor((at + done) / C);
      const from = (at + done) % C;
      const to = Math.min(C, from + n - done);
      f(this.chunks.get(index), from, to, done, index);
      done += to - from;
    }
  }
}

describeByteStoreContract(
  "SyncHandleStore over a sync access handle",
  async ({ bytes, readOnly }) => new SyncHandleStore(new FakeSyncAccessHandle(bytes ?? new Uint8Array(0)), "opfs", { readOnly }),
);
