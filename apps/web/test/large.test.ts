/**
 * Downloads and large images in real Chromium. Converted downloads are compared with their source by
 * qemu-img compare. A 1 GiB image is downloaded as raw and as qcow2 while the renderer's memory is
 * sampled from /proc: it must stay far below the image's size (the export worker writes to the origin's
 * private file system, not to memory). A 20 GiB sparse image opens, checks and draws; the time the page
 * took is printed (speed is for benchmarks, not asserted here).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openFiles, scratchDir, startSession, text, type Browser, type Session } from "./harness";

const MiB = 1024 * 1024;
const dir = scratchDir("qcowkit-web-large-");
const at = (name: string) => join(dir, name);
const sh = (cmd: string) => execFileSync("sh", ["-c", cmd], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

let session: Session;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  sh("qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 16M && qemu-io -c 'write -c -P 6 0 1M' -c 'write -P 7 3M 64k' zstd.qcow2 >/dev/null");
  sh(
    "qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 12 0 2M' base.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && qemu-io -c 'write -P 14 1536k 64k' -c 'write -z 0 64k' top.qcow2 >/dev/null",
  );
  sh("qemu-img create -q -f qcow2 -o data_file=df.raw,extended_l2=on df.qcow2 8M && qemu-io -c 'write -P 10 0 1M' -c 'write -P 11 4M 4k' df.qcow2 >/dev/null");
  session = await startSession(dir);
  page = session.page;
  browser = session.browser;
}, 120_000);

afterAll(() => session?.close());

/** Click a download button and save what the browser downloads. */
async function download(button: "#download-qcow2" | "#download-raw", to: string, compressed = false): Promise<void> {
  await page.setChecked("#compress", compressed);
  await page.evaluate(() => delete document.body.dataset.download);
  const downloaded = page.waitForEvent("download", { timeout: 300_000 });
  await page.click(button);
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.download ?? ""), undefined, { timeout: 300_000 });
  expect(await page.evaluate(() => document.body.dataset.download), await text(page, "#error")).toBe("done");
  await (await downloaded).saveAs(to);
}

function compare(source: string, sourceFormat: string, output: string, outputFormat: string): void {
  const r = spawnSync("qemu-img", ["compare", "-f", sourceFormat, "-F", outputFormat, source, output], { cwd: dir, encoding: "utf8" });
  expect(`${r.stdout}${r.stderr}`).toBe("Images are identical.\n");
}

describe("downloads are the same disk as the source", () => {
  it("zstd-compressed clusters as raw (the bundled zstd WebAssembly module loads)", async () => {
    expect(await openFiles(page, [at("zstd.qcow2")])).toBe("ready");
    await download("#download-raw", at("zstd.out.raw"));
    compare("zstd.qcow2", "qcow2", "zstd.out.raw", "raw");
  });

  it("a backing chain as one compressed qcow2", async () => {
    expect(await openFiles(page, [at("top.qcow2"), at("base.qcow2")])).toBe("ready");
    await download("#download-qcow2", at("top.out.qcow2"), true);
    compare("top.qcow2", "qcow2", "top.out.qcow2", "qcow2");
    const check = spawnSync("qemu-img", ["check", "top.out.qcow2"], { cwd: dir, encoding: "utf8" });
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toMatch(/No errors were found on the image\.\n.* [1-9][0-9.]*% compressed clusters/s);
    const info = JSON.parse(spawnSync("qemu-img", ["info", "--output=json", "top.out.qcow2"], { cwd: dir, encoding: "utf8" }).stdout);
    expect(info["backing-filename"]).toBeUndefined();
  });

  it("an extended-L2 image with a data file as qcow2 and as raw", async () => {
    expect(await openFiles(page, [at("df.qcow2"), at("df.raw")])).toBe("ready");
    await download("#download-qcow2", at("df.out.qcow2"));
    compare("df.qcow2", "qcow2", "df.out.qcow2", "qcow2");
    expect(spawnSync("qemu-img", ["check", "df.out.qcow2"], { cwd: dir }).status).toBe(0);
    await download("#download-raw", at("df.out.raw"));
    compare("df.qcow2", "qcow2", "df.out.raw", "raw");
  });
});

/**
 * Memory of this browser's renderer processes (the page and its workers), in bytes: proportional set size
 * (shared pages divided among their users, so summing processes does not count them twice).
 */
function rendererRss(profile: string): number {
  let total = 0;
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmd.includes(profile) || !cmd.includes("--type=renderer")) continue;
      const rss = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
      if (rss) total += Number(rss[1]) * 1024;
    } catch {
      // The process ended while we looked.
    }
  }
  return total;
}

/** Run `action` while sampling the renderers' memory; the peak, in MiB. */
async function peakRendererMiB(action: () => Promise<void>): Promise<number> {
  let peak = rendererRss(browser.profile);
  const timer = setInterval(() => (peak = Math.max(peak, rendererRss(browser.profile))), 50);
  try {
    await action();
  } finally {
    clearInterval(timer);
  }
  return Math.round(Math.max(peak, rendererRss(browser.profile)) / MiB);
}

describe("large images", () => {
  it("a 1 GiB image downloads as raw and as qcow2 with bounded memory", async () => {
    // 1 GiB of guest data: every cluster written (a pattern per 64 MiB).
    const writes = Array.from({ length: 16 }, (_, i) => `-c 'write -P ${i + 1} ${i * 64}M 64M'`).join(" ");
    sh(`qemu-img create -q -f qcow2 big.qcow2 1G && qemu-io ${writes} big.qcow2 >/dev/null`);
    expect(await openFiles(page, [at("big.qcow2")])).toBe("ready");
    const idle = Math.round(rendererRss(browser.profile) / MiB);
    const rawPeak = await peakRendererMiB(() => download("#download-raw", at("big.out.raw")));
    compare("big.qcow2", "qcow2", "big.out.raw", "raw");
    rmSync(at("big.out.raw"));
    const qcow2Peak = await peakRendererMiB(() => download("#download-qcow2", at("big.out.qcow2")));
    compare("big.qcow2", "qcow2", "big.out.qcow2", "qcow2");
    const heap = await page.evaluate(() => (performance as unknown as { memory?: { usedJSHeapSize: number } }).memory?.usedJSHeapSize ?? 0);
    console.log(`1 GiB download: renderer PSS ${idle} MiB before, peak ${rawPeak} MiB (raw), ${qcow2Peak} MiB (qcow2); page JS heap after ${Math.round(heap / MiB)} MiB`);
    // Far below the image: the bytes never sit in the renderer's memory all at once.
    expect(rawPeak).toBeLessThan(idle + 256);
    expect(qcow2Peak).toBeLessThan(idle + 256);
  }, 600_000);

  it("a 20 GiB sparse image opens, checks and draws", async () => {
    const writes = Array.from({ length: 20 }, (_, i) => `-c 'write -P ${i + 1} ${i}G 1M'`).join(" ");
    sh(`qemu-img create -q -f qcow2 20g.qcow2 20G && qemu-io ${writes} 20g.qcow2 >/dev/null && cp --sparse=never 20g.qcow2 d && mv d 20g.qcow2`);
    expect(await openFiles(page, [at("20g.qcow2")])).toBe("ready");
    const ms = Number(await page.evaluate(() => document.body.dataset.openMs));
    console.log(`20 GiB sparse image: opened, checked and drawn in ${ms} ms`);
    expect(await text(page, "#map-json")).toBe(spawnSync("qemu-img", ["map", "--output=json", "20g.qcow2"], { cwd: dir, encoding: "utf8" }).stdout);
    expect(await text(page, "#check")).toBe(spawnSync("qemu-img", ["check", "20g.qcow2"], { cwd: dir, encoding: "utf8" }).stdout);
    expect(await page.$$eval("#legend li", (lis) => lis.map((li) => (li as HTMLElement).dataset.kind))).toContain("data");
  });
});
