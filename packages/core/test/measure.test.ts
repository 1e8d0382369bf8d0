/** measureImage against qemu-img measure 7.2 (JSON) for sizes, options and source images. */
import { afterAll, describe, expect, it } from "vitest";
import { measureImage, type MeasureTarget } from "../src/index";
import { openImage } from "../src/node";
import { qemu, tempDir } from "./helpers";

const tmp = tempDir("qcowkit-measure-");
afterAll(tmp.cleanup);

function theirs(args: string[]): { required: number; "fully-allocated": number; bitmaps?: number } {
  return JSON.parse(qemu("qemu-img", ["measure", "--output=json", ...args]));
}

function ours(r: { required: number; fullyAllocated: number; bitmaps?: number }) {
  return { required: r.required, "fully-allocated": r.fullyAllocated, ...(r.bitmaps !== undefined ? { bitmaps: r.bitmaps } : {}) };
}

describe("measure", () => {
  const sizes: Array<[string, number, MeasureTarget, string[]]> = [
    ["1G default", 1 << 30, { format: "qcow2" }, ["-O", "qcow2"]],
    ["1G 4k refcount 1", 1 << 30, { format: "qcow2", clusterSize: 4096, refcountBits: 1 }, ["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1"]],
    ["100M extended L2", 100 << 20, { format: "qcow2", extendedL2: true }, ["-O", "qcow2", "-o", "extended_l2=on"]],
    ["1T 2M clusters 64-bit refcounts", 2 ** 40, { format: "qcow2", clusterSize: 2 << 20, refcountBits: 64 }, ["-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64"]],
    ["full preallocation", 1 << 30, { format: "qcow2", preallocation: "full" }, ["-O", "qcow2", "-o", "preallocation=full"]],
    ["odd size", 1000001, { format: "qcow2" }, ["-O", "qcow2"]],
    ["raw", 1000001, { format: "raw" }, ["-O", "raw"]],
  ];
  it.each(sizes)("--size: %s", async (_n, size, target, args) => {
    expect(ours(await measureImage(target, { size }))).toEqual(theirs([...args, "--size", String(size)]));
  });

  it("source images (backing chain, compressed, zero clusters, bitmaps)", async () => {
    const b = tmp.path("b.qcow2");
    const t = tmp.path("t.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", b, "64M"]);
    qemu("qemu-io", ["-c", "write -P 1 0 4M", b]);
    qemu("qemu-img", ["bitmap", "--add", "-g", "512", b, "bm"]);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", t]);
    qemu("qemu-io", ["-c", "write -P 3 1536k 1M", "-c", "write -z 100k 8k", "-c", "write -P 4 63M 1M", "-c", "write -c -P 5 10M 64k", t]);
    for (const [file, target, args] of [
      [t, { format: "qcow2" }, ["-O", "qcow2"]],
      [b, { format: "qcow2", clusterSize: 512 }, ["-O", "qcow2", "-o", "cluster_size=512"]],
      [b, { format: "qcow2", version: 2 }, ["-O", "qcow2", "-o", "compat=0.10"]],
      [t, { format: "raw" }, ["-O", "raw"]],
    ] as Array<[string, MeasureTarget, string[]]>) {
      const img = await openImage(file, { readOnly: true });
      try {
        expect(ours(await measureImage(target, { source: img }))).toEqual(theirs([...args, file]));
      } finally {
        await img.close();
      }
    }
  });
});
