/**
 * Images over HTTP(S) served by a real nginx on loopback, with QEMU's curl driver (qemu-block-extra) as the
 * oracle: qimg info/map/compare/convert and qio reads on a URL give what qemu-img and qemu-io give on the
 * same URL, for plain, compressed, extended-L2 and data-file images and for local overlays on a URL base.
 * HTTPS with a test CA made by openssl: sslverify=off, an unknown CA refused, the CA trusted by SSL_CERT_FILE.
 * (QEMU 7.2's curl driver hangs in `qemu-img convert` with several coroutines: the oracle runs it with -m 1.)
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { makeTestCa, startNginx } from "../../../scripts/remote-servers.mjs";
import { filterTimings, infoJson, normalizeQemu, ok, qemuImg, qemuIo, qimg, qio, run, subDir, tempDir, QIMG } from "./helpers";

// Many QEMU and qcowkit processes per test on a shared CPU.
vi.setConfig({ testTimeout: 180_000 });

const dir = tempDir("qimg-http-");
const www = subDir(dir, "www");
let nginx: { url: string; stop(): Promise<void> };
let nginxTls: { url: string; stop(): Promise<void> };
let ca: { ca: string; cert: string; key: string };

const IMAGES = ["plain.qcow2", "compressed.qcow2", "ext.qcow2", "raw.img", "df.qcow2"] as const;

beforeAll(async () => {
  const w = (name: string) => path.join(www, name);
  await ok(qemuImg(["create", "-q", "-f", "qcow2", w("plain.qcow2"), "6M"]));
  await ok(qemuIo(["-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 1M 300k", "-c", "write -z 2M 64k", "-c", "write -P 0x33 5M 4k", w("plain.qcow2")]));
  await ok(qemuImg(["convert", "-q", "-c", "-O", "qcow2", w("plain.qcow2"), w("compressed.qcow2")]));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", w("ext.qcow2"), "4M"]));
  await ok(qemuIo(["-c", "write -P 0x44 4k 4k", "-c", "write -P 0x55 100k 10k", "-c", "write -z 3M 8k", w("ext.qcow2")]));
  await ok(qemuImg(["convert", "-q", "-O", "raw", w("plain.qcow2"), w("raw.img")]));
  await ok(qemuImg(["create", "-q", "-f", "qcow2", "-o", "data_file=df.raw,data_file_raw=on", "df.qcow2", "3M"], www));
  await ok(qemuIo(["-c", "write -P 0x66 64k 128k", "-c", "write -P 0x77 2M 4k", "df.qcow2"], www));
  nginx = await startNginx(www);
  ca = makeTestCa(subDir(dir, "ca"));
  nginxTls = await startNginx(www, { tls: ca });
}, 60_000);

afterAll(async () => {
  await nginx?.stop();
  await nginxTls?.stop();
});

/** The options naming `image` over HTTP (the data-file image's data file over HTTP too). */
function imageOpts(image: string, base = nginx.url): string {
  const opts = `driver=${image.endsWith(".img") ? "raw" : "qcow2"},file.driver=${base.split(":")[0]},file.url=${base}/${image}`;
  return image === "df.qcow2" ? `${opts},data-file.driver=http,data-file.url=${nginx.url}/df.raw` : opts;
}

/** Runs both on the same arguments; exit code, stdout and stderr must agree (exit 0 unless `code`). */
async function same(args: string[], code = 0): Promise<string> {
  const q = await run("qemu-img", args, { cwd: dir, timeoutMs: 60_000 });
  const o = await run(process.execPath, [QIMG, ...args], { cwd: dir, timeoutMs: 60_000 });
  expect(`${o.code}\n${o.stdout}${o.stderr}`).toBe(`${q.code}\n${q.stdout}${normalizeQemu(q.stderr)}`);
  expect(q.code).toBe(code);
  return o.stdout;
}

describe("qimg on http:// URLs agrees with qemu-img's curl driver", () => {
  for (const image of IMAGES) {
    it(`${image}: info and map JSON, compare, convert bytes`, async () => {
      const target = ["--image-opts", imageOpts(image)];
      if (image !== "df.qcow2") {
        const url = `${nginx.url}/${image}`;
        const q = await ok(qemuImg(["info", "--output=json", url]));
        const o = await ok(qimg(["info", "--output=json", url]));
        expect(infoJson(o)).toEqual(infoJson(q));
        await same(["map", "--output=json", url]);
        await same(["map", url], image === "compressed.qcow2" ? 1 : 0);
      }
      await same(["map", "--output=json", ...target]);
      await same(["compare", "--image-opts", imageOpts(image), `driver=${image.endsWith(".img") ? "raw" : "qcow2"},file.filename=${path.join(www, image)}${image === "df.qcow2" ? `,data-file.filename=${path.join(www, "df.raw")}` : ""}`]);
      const qOut = path.join(dir, `q-${image}.raw`);
      const oOut = path.join(dir, `o-${image}.raw`);
      await ok(qemuImg(["convert", "-m", "1", "-O", "raw", ...target, qOut]));
      await ok(qimg(["convert", "-O", "raw", ...target, oOut]));
      expect(fs.readFileSync(oOut).equals(fs.readFileSync(qOut))).toBe(true);
      // And through a qcow2 target, checked by qemu-img.
      const oQcow2 = path.join(dir, `o-${image}.qcow2`);
      await ok(qimg(["convert", "-O", "qcow2", ...target, oQcow2]));
      await ok(qemuImg(["check", oQcow2]));
      await ok(qemuImg(["compare", "-f", "qcow2", "-F", "raw", oQcow2, qOut]));
    });
  }

  it("qio reads on URLs give qemu-io's output", async () => {
    const reads = ["-r", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x22 1M 300k", "-c", "read -P 0 2M 64k", "-c", "read -v 5M 32", "-c", "readv 1M 4k 8k", "-c", "read 6M 512"];
    for (const image of ["plain.qcow2", "compressed.qcow2", "raw.img"]) {
      const args = [...reads, ...(image.endsWith(".img") ? ["-f", "raw"] : []), `${nginx.url}/${image}`];
      const q = await qemuIo(args);
      const o = await qio(args);
      expect(`${o.code}\n${filterTimings(o.stdout)}${o.stderr}`).toBe(`${q.code}\n${filterTimings(q.stdout)}${normalizeQemu(q.stderr)}`);
    }
    const ext = ["-r", "-c", "read -P 0x44 4k 4k", "-c", "read -P 0 0 4k", "-c", "read -P 0x55 100k 10k", "-c", "read -P 0 3M 8k", "--image-opts", imageOpts("ext.qcow2")];
    const df = ["-r", "-c", "read -P 0x66 64k 128k", "-c", "read -P 0x77 2M 4k", "-c", "read -P 0 0 64k", "--image-opts", imageOpts("df.qcow2")];
    for (const args of [ext, df]) {
      const q = await qemuIo(args);
      const o = await qio(args);
      expect(q.stdout).not.toContain("Pattern verification failed");
      expect(`${o.code}\n${filterTimings(o.stdout)}${o.stderr}`).toBe(`${q.code}\n${filterTimings(q.stdout)}${normalizeQemu(q.stderr)}`);
    }
  });

  it("json: names with file.driver/file.url/file.readahead/file.timeout open as QEMU's do", async () => {
    const name = `json:{"file.driver":"http","file.url":"${nginx.url}/plain.qcow2","file.readahead":"64k","file.timeout":10}`;
    await same(["map", "--output=json", name]);
    const nested = `json:{"driver":"qcow2","file":{"driver":"http","url":"${nginx.url}/ext.qcow2"}}`;
    await same(["map", "--output=json", nested]);
    const bad = `json:{"file.driver":"http","file.url":"${nginx.url}/plain.qcow2","file.readahead":1000}`;
    const q = await qemuImg(["info", bad]);
    const o = await qimg(["info", bad]);
    expect(o.code).toBe(q.code);
    expect(o.stderr).toContain("HTTP_READAHEAD_SIZE 1000 is not a multiple of 512");
  });

  it("a read-write open is refused in one line naming the overlay", async () => {
    const url = `${nginx.url}/plain.qcow2`;
    const q = await qemuIo(["-c", "write 0 512", url]);
    const o = await qio(["-c", "write 0 512", url]);
    expect(o.code).toBe(q.code);
    expect(o.stderr).toBe(`qio: can't open device ${url}: a remote image is read-only; write to a local overlay instead (qimg create -f qcow2 -b '${url}' -F FMT overlay.qcow2)\n`);
  });

  it("a missing object and a closed port are one-line errors", async () => {
    const missing = await qimg(["info", `${nginx.url}/nothing.qcow2`]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe(`qimg: Could not open '${nginx.url}/nothing.qcow2': Error opening file: HTTP 404 Not Found\n`);
    const refused = await qimg(["info", `json:{"file.driver":"http","file.url":"http://127.0.0.1:1/x","file.timeout":1}`]);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).toContain("ECONNREFUSED");
  });
});

describe("overlays on a URL base", () => {
  it("create -b URL matches qemu-img byte for byte; writes stay local; reads fall through", async () => {
    const url = `${nginx.url}/plain.qcow2`;
    const q = path.join(dir, "ov-q.qcow2");
    const o = path.join(dir, "ov-o.qcow2");
    const qc = await ok(qemuImg(["create", "-f", "qcow2", "-b", url, "-F", "qcow2", q]));
    const oc = await ok(qimg(["create", "-f", "qcow2", "-b", url, "-F", "qcow2", o]));
    expect(oc).toBe(normalizeQemu(qc).replace("ov-q", "ov-o"));
    expect(fs.readFileSync(o).equals(fs.readFileSync(q))).toBe(true);
    const writes = ["-c", "write -P 0x99 1M 4k", "-c", "write -z 5M 4k", "-c", "read -P 0x22 1052672 4k", "-c", "read -P 0x11 0 64k"];
    const qw = await qemuIo([...writes, q]);
    const ow = await qio([...writes, o]);
    expect(filterTimings(ow.stdout)).toBe(filterTimings(qw.stdout));
    expect(await ok(qimg(["map", "--output=json", o]))).toBe(await ok(qemuImg(["map", "--output=json", q])));
    const qi = infoJson(await ok(qemuImg(["info", "--output=json", "--backing-chain", q]))) as Array<Record<string, unknown>>;
    const oi = infoJson(await ok(qimg(["info", "--output=json", "--backing-chain", o]))) as Array<Record<string, unknown>>;
    expect(oi.map((x) => ({ ...x, filename: undefined }))).toEqual(qi.map((x) => ({ ...x, filename: undefined })));
    await ok(qemuImg(["check", o]));
    await ok(qemuImg(["compare", o, q]));
  });

  it("commit into a URL base is refused in one line; convert publishes the overlay", async () => {
    const url = `${nginx.url}/plain.qcow2`;
    const o = path.join(dir, "ov-commit.qcow2");
    await ok(qimg(["create", "-q", "-f", "qcow2", "-b", url, "-F", "qcow2", o]));
    await ok(qio(["-c", "write -P 0x5 0 4k", o]));
    const r = await qimg(["commit", o]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`qimg: Cannot commit into the remote base '${url}': it is read-only; publish the result with qimg convert -O qcow2 ${o} s3://BUCKET/KEY\n`);
    // The base is untouched.
    await ok(qemuIo(["-r", "-c", "read -P 0x11 0 4k", url]));
  });
});

describe("HTTPS with a test CA", () => {
  it("sslverify=off reads as QEMU does; an unknown CA is refused by both; SSL_CERT_FILE trusts it", async () => {
    const url = `${nginxTls.url}/plain.qcow2`;
    const off = `json:{"file.driver":"https","file.url":"${url}","file.sslverify":"off"}`;
    await same(["map", "--output=json", off]);
    const q = await qemuImg(["info", url]);
    const o = await qimg(["info", url]);
    expect(q.code).toBe(1);
    expect(o.code).toBe(1);
    expect(o.stderr.trim().split("\n")).toHaveLength(1);
    expect(o.stderr).toMatch(/certificate/i);
    const trusted = await run(process.execPath, [QIMG, "map", "--output=json", url], { env: { SSL_CERT_FILE: ca.ca } });
    expect(trusted.stderr).toBe("");
    expect(trusted.stdout).toBe(await ok(qemuImg(["map", "--output=json", off])));
    await same(["map", "--output=json", "--image-opts", `${imageOpts("compressed.qcow2", nginxTls.url)},file.sslverify=off`]);
  });
});
