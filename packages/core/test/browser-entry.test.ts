/**
 * The browser entry in Node (Blob is a web standard here too): images opened from named Blobs, their
 * references answered by base name, the cluster map taken from the check, and zstd's loader failing
 * cleanly instead of hanging.
 */
import { readFileSync } from "node:fs";
import { afterAll, describe, expect, it, vi } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import { checkReportHuman, clusterMap, headerView, imageInfo, loadZstdCodec, mapJson, openBlobImage, resolveUrl, toQemuJson, type JsonValue, type Qcow2Image } from "../src/browser";
import { qemu, qemuStatus, tempDir } from "./helpers";
import { peek, poke } from "./qemu-check";

// The zstd library as it behaves when its module fails to start: init never settles.
vi.mock("@bokuweb/zstd-wasm", () => ({ init: () => new Promise(() => undefined) }));

const t = tempDir("qcowkit-browser-entry-");
afterAll(() => t.cleanup());

function file(name: string): File {
  return new File([readFileSync(t.path(name))], name);
}

/** qemu-img info --output=json without actual-size (a Blob does not know its allocation). */
function qemuInfo(name: string): string {
  const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", name], { cwd: t.dir }));
  delete info["actual-size"];
  return JSON.stringify(info);
}

describe("openBlobImage", () => {
  it("opens a backing chain and a data file by base name; info, map and check as qemu-img", async () => {
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=base.raw", "base.qcow2", "4M"], { cwd: t.dir });
    qemu("qemu-io", ["-c", "write -P 7 0 1M", "base.qcow2"], { cwd: t.dir });
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", `${t.dir}/base.qcow2`, "-F", "qcow2", "top.qcow2"], { cwd: t.dir });
    qemu("qemu-io", ["-c", "write -c -P 9 2M 64k", "-c", "write -P 3 3M 4k", "top.qcow2"], { cwd: t.dir });
    // A File has no holes: qemu-img sees the same bytes when the file has none either.
    qemu("sh", ["-c", "cp --sparse=never top.qcow2 dense && mv dense top.qcow2"], { cwd: t.dir });
    const files = [file("top.qcow2"), file("base.qcow2"), file("base.raw")];
    const info = await openBlobImage(files, { noIo: true });
    const ours = JSON.parse(toQemuJson((await imageInfo(info, { filename: "top.qcow2" })) as unknown as JsonValue));
    await info.close();
    expect(JSON.stringify(ours)).toBe(qemuInfo("top.qcow2"));
    const image = await openBlobImage(files);
    // qemu-img names the data file by its path; the page by its base name (here the same).
    expect(await mapJson(image)).toBe(qemu("qemu-img", ["map", "--output=json", "top.qcow2"], { cwd: t.dir }));
    await image.close();
    const checked = await openBlobImage(files, { checkMode: true });
    const map = await clusterMap(checked as Qcow2Image);
    expect(checkReportHuman(map.report)).toBe(qemuStatus("qemu-img", ["check", "top.qcow2"], { cwd: t.dir }).stdout);
    const kinds = new Set(map.files[0]!.runs.map((r) => r.kind));
    for (const k of ["header", "l1", "l2", "refcount-table", "refcount-block", "data", "compressed"]) expect(kinds, k).toContain(k);
    expect(map.files).toHaveLength(1);
    // Runs cover the file exactly, in order.
    let next = 0;
    for (const r of map.files[0]!.runs) {
      expect(r.start).toBe(next);
      next += r.count;
    }
    expect(next).toBe(map.files[0]!.clusters);
    await checked.close();
    const base = await openBlobImage([file("base.qcow2"), file("base.raw")], { checkMode: true });
    const baseMap = await clusterMap(base as Qcow2Image);
    expect(baseMap.files.map((f) => f.name)).toEqual(["base.qcow2", "base.raw"]);
    // 1 MiB of guest data in 64 KiB clusters of the data file.
    expect(baseMap.files[1]!.runs.filter((r) => r.kind === "data-file").reduce((n, r) => n + r.count, 0)).toBe(16);
    const view = headerView(base as Qcow2Image);
    expect(view.features.find((f) => f.kind === "incompatible" && f.bit === 2)).toEqual({ kind: "incompatible", bit: 2, name: "external data file", set: true });
    expect(view.extensions.map((e) => e.name)).toContain("external data file name");
    await base.close();
  });

  it("a missing data file or backing file fails with QEMU's wording", async () => {
    const e1 = await openBlobImage([file("top.qcow2"), file("base.qcow2")]).catch((e: unknown) => e);
    expect(isQcow2Error(e1) && e1.message).toBe("Could not open backing file: Could not open 'base.raw': No such file or directory");
    const e2 = await openBlobImage([file("top.qcow2")]).catch((e: unknown) => e);
    expect(isQcow2Error(e2) && e2.message).toBe(`Could not open backing file: Could not open '${t.dir}/base.qcow2': No such file or directory`);
  });

  it("leaked clusters are drawn as leaked", async () => {
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "leak.qcow2", "1M"], { cwd: t.dir });
    qemu("qemu-io", ["-c", "write 0 192k", "leak.qcow2"], { cwd: t.dir });
    // The refcount of an unreferenced cluster raised by hand: the last one of the file; and two
    // data clusters dropped from the L2 table.
    const path = t.path("leak.qcow2");
    const refblock = Number(peek(path, Number(peek(path, 48)), 8));
    poke(path, refblock + 2 * (readFileSync(path).byteLength / 65536 - 1), 2, 1);
    const l2 = Number(peek(path, Number(peek(path, 40)), 8) & 0x00fffffffffffe00n);
    poke(path, l2 + 8, 8, 0);
    poke(path, l2 + 16, 8, 0);
    const checked = await openBlobImage([file("leak.qcow2")], { checkMode: true });
    const map = await clusterMap(checked as Qcow2Image);
    const ref = qemuStatus("qemu-img", ["check", "leak.qcow2"], { cwd: t.dir });
    expect(checkReportHuman(map.report)).toBe(ref.stdout);
    expect(map.report.leaks).toBeGreaterThanOrEqual(2);
    const leaked = map.files[0]!.runs.filter((r) => r.kind === "leaked");
    expect(leaked.reduce((n, r) => n + r.count, 0)).toBe(map.report.leaks);
    // The ones qemu-img names ("Leaked cluster N refcount=1 reference=0").
    const named = ref.stderr.match(/Leaked cluster (\d+)/g)!.map((m) => Number(m.split(" ")[2]));
    expect(leaked.flatMap((r) => Array.from({ length: r.count }, (_, i) => r.start + i))).toEqual(named);
    await checked.close();
  });
});

describe("resolveUrl: names stored in a remote image, as QEMU combines them with the image's URL", () => {
  it("relative names replace the last path component; URLs stay as they are", () => {
    expect(resolveUrl("base.qcow2", "https://h.test/dir/top.qcow2")).toBe("https://h.test/dir/base.qcow2");
    expect(resolveUrl("sub/base.qcow2", "http://127.0.0.1:8080/top.qcow2")).toBe("http://127.0.0.1:8080/sub/base.qcow2");
    expect(resolveUrl("https://other.test/b.qcow2", "http://h.test/dir/top.qcow2")).toBe("https://other.test/b.qcow2");
  });

  it("local paths and other protocols are refused in one line", () => {
    for (const name of ["/images/base.qcow2", "file:base.qcow2", "nbd://h.test/x", ""]) {
      let err: unknown;
      try {
        resolveUrl(name, "https://h.test/dir/top.qcow2");
      } catch (e) {
        err = e;
      }
      expect(isQcow2Error(err) && err.code, name).toBe("NOT_SUPPORTED");
      expect((err as Error).message).toBe(`Could not open '${name}': a page can open only http and https URLs`);
    }
  });
});

describe("zstd loading always settles", () => {
  it("bad WebAssembly bytes: NOT_SUPPORTED zstd unavailable", async () => {
    const e = await loadZstdCodec({ wasmBytes: async () => new Uint8Array([0, 1, 2, 3]) }).catch((x: unknown) => x);
    expect(isQcow2Error(e) && e.code).toBe("NOT_SUPPORTED");
    expect((e as Error).message).toMatch(/^zstd unavailable: /);
  });

  it("bytes that cannot be fetched: NOT_SUPPORTED zstd unavailable", async () => {
    const e = await loadZstdCodec({ wasmBytes: () => Promise.reject(new Error("404 zstd.wasm")) }).catch((x: unknown) => x);
    expect((e as Error).message).toBe("zstd unavailable: 404 zstd.wasm");
  });

  it("a module that never starts: NOT_SUPPORTED zstd unavailable after the timeout", async () => {
    const e = await loadZstdCodec({ timeoutMs: 200 }).catch((x: unknown) => x);
    expect(isQcow2Error(e) && e.code).toBe("NOT_SUPPORTED");
    expect((e as Error).message).toBe("zstd unavailable: the WebAssembly module did not start within 200 ms");
  });
});
