/**
 * `await using` closes images and stores at the end of their block: the lock is released (QEMU can then open the
 * image read-write) and the closed objects refuse further I/O.
 */
import { FileStore } from "@qcowkit/datafile/node";
import { afterAll, describe, expect, it } from "vitest";
import { openImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

const t = tempDir("qcowkit-dispose-");
afterAll(() => t.cleanup());

describe("Symbol.asyncDispose", () => {
  it("await using closes a qcow2 image with an external data file, releasing its locks", async () => {
    const path = t.path("disk.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${t.path("disk.raw")},data_file_raw=on`, path, "4M"]);
    let escaped: Awaited<ReturnType<typeof openImage>> | undefined;
    {
      await using image = await openImage(path);
      await image.write(0, new Uint8Array(65536).fill(0x5a));
      // While the image is open read-write, QEMU cannot take its write lock.
      expect(qemuStatus("qemu-io", ["-c", "write 0 512", path]).status).not.toBe(0);
      escaped = image;
    }
    await expect(escaped!.read(0, new Uint8Array(512))).rejects.toThrow();
    expect(qemu("qemu-io", ["-c", "read -P 0x5a 0 64k", path])).toContain("read 65536/65536 bytes");
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
  });

  it("await using closes a raw image and a file store", async () => {
    const path = t.path("plain.raw");
    qemu("qemu-img", ["create", "-q", "-f", "raw", path, "1M"]);
    let image: Awaited<ReturnType<typeof openImage>> | undefined;
    let store: FileStore | undefined;
    {
      await using raw = await openImage(path, { format: "raw" });
      image = raw;
    }
    {
      await using s = await FileStore.open(path, { readOnly: true });
      await s.read(0, new Uint8Array(512));
      store = s;
    }
    await expect(image!.read(0, new Uint8Array(512))).rejects.toThrow();
    await expect(store!.read(0, new Uint8Array(512))).rejects.toThrow();
  });
});
