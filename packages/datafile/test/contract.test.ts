import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { MemoryStore } from "../src/index";
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

async function fileStore(bytes: Uint8Array | undefined, readOnly: boolean | undefined): Promise<FileStore> {
  const path = join(directory, `store-${++fileCounter}.raw`);
  await writeFile(path, bytes ?? new Uint8Array(0));
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
