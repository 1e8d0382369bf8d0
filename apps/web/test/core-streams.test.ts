/**
 * The core's stream API in real Chromium: packages/core/test/browser/stream-consumer.ts, bundled for the
 * browser (no Node modules), runs in a page. The same summary as in the Web-only V8 context of
 * packages/core/test/streams-browser.test.ts, then a relay: the page fetches an image qemu-img made (the
 * response body is the Web stream), streams it into an in-memory image and out again as a qcow2 stream;
 * qemu-img check and compare judge what comes back.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bundleStreamConsumer, expectConsumerSummary } from "../../../packages/core/test/browser/bundle-consumer";
import type { ConsumerSummary } from "../../../packages/core/test/browser/stream-consumer";
import { launch, scratchDir, serveFiles, type Browser, type Served } from "./harness";

const dir = scratchDir("qcowkit-web-streams-");
const at = (name: string) => join(dir, name);
const sh = (cmd: string) => execFileSync("sh", ["-c", cmd], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

let browser: Browser;
let files: Served;
let page: Page;

beforeAll(async () => {
  sh("qemu-img create -q -f qcow2 src.qcow2 8M && qemu-io -c 'write -P 3 0 1M' -c 'write -P 4 3M 200k' -c 'write -z 5M 64k' src.qcow2 >/dev/null");
  sh("qemu-img convert -c -O qcow2 src.qcow2 srcz.qcow2 && qemu-img convert -O raw src.qcow2 src.raw");
  const { code, inputs } = await bundleStreamConsumer();
  expect(inputs.some((i) => i.startsWith("node:"))).toBe(false);
  files = await serveFiles(dir, { range: true });
  browser = await launch();
  page = await browser.context.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  // An empty page on the file server's origin (the file server sends octet-streams only), so that the
  // images are fetched from the page's own origin.
  await page.route(`${files.url}page.html`, (r) => r.fulfill({ contentType: "text/html", body: "<!doctype html><title>stream consumer</title>" }));
  await page.goto(`${files.url}page.html`);
  await page.addScriptTag({ content: code });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  files?.close();
  sh(`rm -rf ${dir}`);
});

/** Run the relay in the page and save the stream it produced. */
async function relay(src: string, out: string, options: Record<string, unknown>): Promise<void> {
  const base64 = await page.evaluate(
    async ([url, opts]) => {
      const c = (globalThis as unknown as { consumer: { relay: (u: string, s: number, o: unknown) => Promise<Uint8Array> } }).consumer;
      const bytes = await c.relay(url, 8 * 1024 * 1024, opts);
      let s = "";
      for (let i = 0; i < bytes.length; i += 32768) s += String.fromCharCode(...bytes.subarray(i, i + 32768));
      return btoa(s);
    },
    [files.url + src, options] as const,
  );
  writeFileSync(at(out), Buffer.from(base64, "base64"));
}

describe("core stream API in Chromium", () => {
  it("a plain Web Streams consumer: out and back, progress, abort of both directions", async () => {
    expect(await page.evaluate(() => typeof (globalThis as { process?: unknown }).process + typeof (globalThis as { Buffer?: unknown }).Buffer)).toBe("undefinedundefined");
    const out = await page.evaluate(() => (globalThis as unknown as { consumer: { run: () => Promise<ConsumerSummary> } }).consumer.run());
    expectConsumerSummary(out);
  });

  for (const [src, options, label] of [
    ["src.qcow2", {}, "qcow2 in, qcow2 out"],
    ["srcz.qcow2", { compress: true, clusterSize: 4096 }, "compressed qcow2 in, compressed 4 KiB-cluster qcow2 out"],
    ["src.raw", { clusterSize: 512 }, "raw in, 512 B-cluster qcow2 out"],
  ] as const) {
    it(`relays a fetched image (${label}): qemu-img check clean, compare identical`, async () => {
      const out = `relayed-${src}.qcow2`;
      await relay(src, out, options);
      const check = spawnSync("qemu-img", ["check", at(out)], { encoding: "utf8" });
      expect(check.stdout).toContain("No errors were found on the image.");
      expect(check.status).toBe(0);
      const cmp = spawnSync("qemu-img", ["compare", "-F", "qcow2", at("src.qcow2"), at(out)], { encoding: "utf8" });
      expect(cmp.stdout).toContain("Images are identical.");
      const info = JSON.parse(sh(`qemu-img info --output=json ${out}`));
      expect(info["cluster-size"]).toBe((options as { clusterSize?: number }).clusterSize ?? 65536);
      if ((options as { compress?: boolean }).compress) expect(JSON.parse(sh(`qemu-img check --output=json ${out}`))["compressed-clusters"]).toBeGreaterThan(0);
    });
  }
});
