/**
 * s3:// objects on s3rver (a real S3 API server, started on loopback): whole-object writes through a
 * multipart upload (`qimg convert`, `qimg create`), ranged reads, overlays on an S3 base, an image whose
 * metadata is local and whose data file is in S3, and the refusals (read-write open). The objects are
 * fetched with a plain signed GET and checked with qemu-img.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as core from "@qcowkit/core/node";
import { nodeFetch, s3ObjectUrl, s3Signer } from "@qcowkit/datafile/node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { startS3rver } from "../../../scripts/remote-servers.mjs";
import { QIMG, QIO, filterTimings, ok, qemuImg, qemuIo, run, subDir, tempDir } from "./helpers";

// Many QEMU and qcowkit processes per test on a shared CPU.
vi.setConfig({ testTimeout: 180_000 });

const dir = tempDir("qimg-s3-");
let s3: { endpoint: string; env: Record<string, string>; stop(): Promise<void> };

beforeAll(async () => {
  s3 = await startS3rver(subDir(dir, "s3rver"), ["b"]);
}, 30_000);
afterAll(async () => {
  await s3?.stop();
});

const qimgS3 = (args: string[]) => run(process.execPath, [QIMG, ...args], { cwd: dir, env: s3.env, timeoutMs: 120_000 });
const qioS3 = (args: string[]) => run(process.execPath, [QIO, ...args], { cwd: dir, env: s3.env, timeoutMs: 120_000 });

/** A plain GET of the whole object (signed, as any S3 client would), saved to `file`. */
async function getObject(name: string, file: string): Promise<Buffer> {
  const [, bucket, key] = /^s3:\/\/([^/]+)\/(.+)$/.exec(name)!;
  const config = { endpoint: s3.endpoint, region: "us-east-1", accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
  const url = s3ObjectUrl(config, { bucket: bucket!, key: key! });
  const headers = await s3Signer(config)!(url, "GET", {});
  const res = await nodeFetch()(url, { method: "GET", headers, signal: AbortSignal.timeout(30_000) });
  expect(res.status).toBe(200);
  const body = Buffer.from(await res.arrayBuffer());
  fs.writeFileSync(file, body);
  return body;
}

/** 12 MiB of data with holes and zero runs, made by qemu-io (two 8 MiB upload parts). */
async function localRaw(): Promise<string> {
  const file = path.join(dir, "local.raw");
  if (!fs.existsSync(file)) {
    await ok(qemuImg(["create", "-q", "-f", "raw", file, "12M"]));
    await ok(qemuIo(["-f", "raw", "-c", "write -P 0x61 0 1M", "-c", "write -P 0x62 5M 3M", "-c", "write -P 0x63 11M 4k", file]));
  }
  return file;
}

const hasStreamWriter = typeof (core as unknown as Record<string, unknown>)["imageToStream"] === "function";

describe("S3 objects (s3rver)", () => {
  it("raw round trip: convert to s3://, plain GET, qemu-img compare, convert back", async () => {
    const raw = await localRaw();
    await ok(qimgS3(["convert", "-f", "raw", "-O", "raw", raw, "s3://b/disk.raw"]));
    const got = await getObject("s3://b/disk.raw", path.join(dir, "got.raw"));
    expect(got.equals(fs.readFileSync(raw))).toBe(true);
    expect(await ok(qimgS3(["compare", "-f", "raw", "-F", "raw", raw, "s3://b/disk.raw"]))).toBe("Images are identical.\n");
    await ok(qimgS3(["convert", "-f", "raw", "-O", "raw", "s3://b/disk.raw", path.join(dir, "back.raw")]));
    expect(fs.readFileSync(path.join(dir, "back.raw")).equals(fs.readFileSync(raw))).toBe(true);
    const info = await ok(qimgS3(["info", "-f", "raw", "s3://b/disk.raw"]));
    expect(info).toContain("virtual size: 12 MiB (12582912 bytes)");
  });

  it("qcow2 round trip through the stream writer: check clean, compare equal, convert back", async () => {
    const raw = await localRaw();
    const r = await qimgS3(["convert", "-f", "raw", "-O", "qcow2", raw, "s3://b/img.qcow2"]);
    if (!hasStreamWriter) {
      // Without issue 14's imageToStream the qcow2 upload is refused in one line.
      expect(r.code).toBe(1);
      expect(r.stderr).toBe("qimg: qcow2 output to S3 needs the stream writer (imageToStream), which this build lacks\n");
      return;
    }
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const got = path.join(dir, "got.qcow2");
    await getObject("s3://b/img.qcow2", got);
    expect(await ok(qemuImg(["check", got]))).toContain("No errors were found on the image.");
    await ok(qemuImg(["compare", "-f", "qcow2", "-F", "raw", got, raw]));
    await ok(qimgS3(["convert", "-O", "raw", "s3://b/img.qcow2", path.join(dir, "back2.raw")]));
    expect(fs.readFileSync(path.join(dir, "back2.raw")).equals(fs.readFileSync(raw))).toBe(true);
  });

  it("several sources concatenate into a qcow2 object, -c, as qemu-img concatenates them into a file", async () => {
    const raw = await localRaw();
    const second = path.join(dir, "second.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", second, "3M"]));
    await ok(qemuIo(["-f", "qcow2", "-c", "write -P 0x71 1M 1M", second]));
    const ref = path.join(dir, "concat-ref.qcow2");
    await ok(qemuImg(["convert", "-O", "qcow2", raw, second, ref]));
    const r = await qimgS3(["convert", "-c", "-O", "qcow2", raw, second, "s3://b/concat.qcow2"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const got = path.join(dir, "got-concat.qcow2");
    await getObject("s3://b/concat.qcow2", got);
    expect(await ok(qemuImg(["check", got]))).toContain("No errors were found on the image.");
    expect(await ok(qemuImg(["compare", ref, got]))).toBe("Images are identical.\n");
  });

  it("create -f qcow2 on s3:// writes the same bytes qemu-img create writes to a file", async () => {
    const out = await ok(qimgS3(["create", "-f", "qcow2", "s3://b/new.qcow2", "1G"]));
    expect(out).toBe("Formatting 's3://b/new.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16\n");
    const q = path.join(dir, "new-q.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", q, "1G"]));
    const got = await getObject("s3://b/new.qcow2", path.join(dir, "new-o.qcow2"));
    expect(got.equals(fs.readFileSync(q))).toBe(true);
    await ok(qimgS3(["create", "-q", "-f", "raw", "s3://b/zero.raw", "3M"]));
    const zero = await getObject("s3://b/zero.raw", path.join(dir, "zero.raw"));
    expect(zero.equals(Buffer.alloc(3 << 20))).toBe(true);
  });

  it("a read-write open of an object is refused in one line naming the overlay", async () => {
    await localRaw();
    await ok(qimgS3(["convert", "-f", "raw", "-O", "raw", path.join(dir, "local.raw"), "s3://b/ro.raw"]));
    const r = await qioS3(["-f", "raw", "-c", "write 0 512", "s3://b/ro.raw"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      "qio: can't open device s3://b/ro.raw: a remote image is read-only; write to a local overlay instead (qimg create -f qcow2 -b 's3://b/ro.raw' -F FMT overlay.qcow2)\n",
    );
    const missing = await qimgS3(["info", "s3://b/none.qcow2"]);
    expect(missing.stderr).toBe("qimg: Could not open 's3://b/none.qcow2': Error opening file: HTTP 404 Not Found\n");
  });

  it("an overlay on an S3 base: writes local, reads fall through, same as QEMU on a local base", async () => {
    const raw = await localRaw();
    await ok(qimgS3(["convert", "-f", "raw", "-O", "raw", raw, "s3://b/base.raw"]));
    const ov = path.join(dir, "ov.qcow2");
    await ok(qimgS3(["create", "-q", "-f", "qcow2", "-b", "s3://b/base.raw", "-F", "raw", ov]));
    const qov = path.join(dir, "qov.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", qov]));
    const ops = ["-c", "write -P 0x70 512k 1M", "-c", "write -z 5M 64k", "-c", "read -P 0x61 0 512k", "-c", "read -P 0x62 6M 1M", "-c", "read -P 0x70 1M 512k"];
    const o = await qioS3([...ops, ov]);
    const q = await qemuIo([...ops, qov]);
    expect(q.stdout).not.toContain("Pattern verification failed");
    expect(filterTimings(o.stdout)).toBe(filterTimings(q.stdout));
    await ok(qimgS3(["convert", "-O", "raw", ov, path.join(dir, "ov.raw")]));
    await ok(qemuImg(["convert", "-O", "raw", qov, path.join(dir, "qov.raw")]));
    expect(fs.readFileSync(path.join(dir, "ov.raw")).equals(fs.readFileSync(path.join(dir, "qov.raw")))).toBe(true);
    // The overlay's own extents agree (an object has no holes to report, unlike the local sparse base).
    const own = (text: string) => (JSON.parse(text) as Array<{ depth: number }>).filter((e) => e.depth === 0);
    expect(own(await ok(qimgS3(["map", "--output=json", ov])))).toEqual(own(await ok(qemuImg(["map", "--output=json", qov]))));
  });

  it("metadata local, data file in S3: qio reads the guest data", async () => {
    const m = path.join(dir, "m.qcow2");
    await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", "data_file=m.data,data_file_raw=on", "m.qcow2", "4M"], dir));
    await ok(qemuIo(["-c", "write -P 0x3c 64k 256k", "-c", "write -P 0x3d 3M 4k", "m.qcow2"], dir));
    await ok(qimgS3(["convert", "-f", "raw", "-O", "raw", path.join(dir, "m.data"), "s3://b/m.data"]));
    // The data file named by the options, and by the header.
    const reads = ["-c", "read -P 0x3c 64k 256k", "-c", "read -P 0x3d 3M 4k", "-c", "read -P 0 0 64k"];
    const byOpts = await qioS3(["-r", ...reads, "--image-opts", `driver=qcow2,file.filename=${m},data-file.filename=s3://b/m.data`]);
    expect(byOpts.stderr).toBe("");
    expect(byOpts.stdout).not.toContain("Pattern verification failed");
    await ok(qimgS3(["amend", "-o", "data_file=s3://b/m.data", m]));
    fs.rmSync(path.join(dir, "m.data"));
    const byHeader = await qioS3(["-r", ...reads, m]);
    expect(byHeader.stderr).toBe("");
    expect(filterTimings(byHeader.stdout)).toBe(filterTimings(byOpts.stdout));
    // Writing needs an overlay: the data file is read-only.
    const rw = await qioS3(["-c", "write 0 512", m]);
    expect(rw.code).toBe(1);
    expect(rw.stderr).toContain("a remote data file is read-only; write to a local overlay instead");
  });
});
