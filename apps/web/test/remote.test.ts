/**
 * `?url=`: remote images read by ranged fetch (RemoteStore) in real Chromium, from a server on another
 * origin (another port of 127.0.0.1) that answers byte ranges and CORS. QEMU reads the same URLs through
 * its curl driver, so #info-json, #map-json and #check are compared with qemu-img's output for the URL itself
 * (`filename` is the URL; curl reports no actual-size, and the page shows none). qemu-img runs in the served
 * folder: QEMU resolves a stored data file name against its working directory, the page against the image's
 * URL (a page has no working directory), and in that folder both mean the same file. A server that ignores
 * Range gives one line in #error, the one qimg prints for that URL.
 */
import { execFile, execFileSync } from "node:child_process";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { scratchDir, serveFiles, startSession, text, type Served, type Session } from "./harness";

const dir = scratchDir("qcowkit-web-remote-");
const sh = (cmd: string) => execFileSync("sh", ["-c", cmd], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
/** Run a program without blocking this process (it serves the URLs the program reads). */
function run(file: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: dir, encoding: "utf8", timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}
const qemuImg = (args: string[]) => run("qemu-img", args);
const qimg = join(import.meta.dirname, "..", "..", "cli", "dist", "qimg.cjs");

const images: Record<string, string> = {
  plain: "qemu-img create -q -f qcow2 plain.qcow2 64M && qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' -c 'write -z 9M 1M' plain.qcow2",
  compressed: "qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 16M && qemu-io -c 'write -c -P 6 0 512k' -c 'write -P 7 1M 64k' zstd.qcow2",
  "backing chain": [
    "mkdir -p chain && cd chain && qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 12 0 2M' base.qcow2 >/dev/null",
    "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && qemu-io -c 'write -P 13 1M 512k' mid.qcow2 >/dev/null",
    "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && qemu-io -c 'write -P 14 1536k 64k' -c 'write -z 0 64k' top.qcow2",
  ].join(" && "),
  "data file": "qemu-img create -q -f qcow2 -o data_file=df.raw df.qcow2 8M && qemu-io -c 'write -P 10 0 1M' -c 'write -P 11 4M 64k' df.qcow2",
};
const names: Record<string, string> = { plain: "plain.qcow2", compressed: "zstd.qcow2", "backing chain": "chain/top.qcow2", "data file": "df.qcow2" };

let session: Session;
let page: Page;
let ranged: Served;
let whole: Served;

beforeAll(async () => {
  for (const make of Object.values(images)) sh(`(${make}) >/dev/null`);
  ranged = await serveFiles(dir, { range: true });
  whole = await serveFiles(dir, { range: false });
  session = await startSession(dir);
  page = session.page;
}, 120_000);

afterAll(async () => {
  ranged?.close();
  whole?.close();
  await session?.close();
});

/** Open `?url=URL` on the page and wait until it is done. */
async function openUrl(url: string): Promise<"ready" | "error"> {
  const location = new URL(page.url());
  location.search = `?url=${encodeURIComponent(url)}`;
  await page.goto(location.toString());
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state ?? ""), undefined, { timeout: 60_000 });
  return (await page.evaluate(() => document.body.dataset.state)) as "ready" | "error";
}

describe("?url= opens a remote image by ranged fetch", () => {
  for (const [kind, name] of Object.entries(names)) {
    it(`${kind}: the page shows what qemu-img prints for the URL`, async () => {
      const url = `${ranged.url}${name}`;
      expect(await openUrl(url), await text(page, "#error")).toBe("ready");
      expect(await page.$eval("#error", (e) => (e as HTMLElement).hidden)).toBe(true);
      expect(await text(page, "#image-name")).toBe(url);
      const info = await qemuImg(["info", "--output=json", "-f", "qcow2", url]);
      expect(info.status, info.stderr).toBe(0);
      expect(info.stdout).toContain(`"filename": "${url}"`);
      expect(await text(page, "#info-json")).toBe(info.stdout);
      const map = await qemuImg(["map", "--output=json", "-f", "qcow2", url]);
      expect(map.status, map.stderr).toBe(0);
      expect(await text(page, "#map-json")).toBe(map.stdout);
      const check = await qemuImg(["check", "-f", "qcow2", url]);
      expect(await text(page, "#check")).toBe(check.stdout);
      expect(await text(page, "#check")).toContain("No errors were found on the image.");
    });
  }

  it("the backing chain resolves against the image's URL", async () => {
    expect(await openUrl(`${ranged.url}chain/top.qcow2`)).toBe("ready");
    const info = JSON.parse(await text(page, "#info-json")) as Record<string, string>;
    expect(info["full-backing-filename"]).toBe(`${ranged.url}chain/mid.qcow2`);
    // The human view opened every link of the chain at its URL.
    const rows = await page.$$eval("#backing-chain tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
    expect(rows.filter((r) => r.length > 0)).toEqual([
      [`${ranged.url}chain/top.qcow2`, "qcow2", "this image"],
      ["mid.qcow2", "qcow2", `${ranged.url}chain/mid.qcow2`],
      ["base.qcow2", "qcow2", `${ranged.url}chain/base.qcow2`],
    ]);
  });

  it("a remote backing chain downloads as raw: the same disk (qemu-img compare)", async () => {
    expect(await openUrl(`${ranged.url}chain/top.qcow2`)).toBe("ready");
    await page.evaluate(() => delete document.body.dataset.download);
    const downloaded = page.waitForEvent("download", { timeout: 120_000 });
    await page.click("#download-raw");
    await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.download ?? ""), undefined, { timeout: 120_000 });
    expect(await page.evaluate(() => document.body.dataset.download), await text(page, "#error")).toBe("done");
    await (await downloaded).saveAs(join(dir, "chain.out.raw"));
    const r = await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", "chain/top.qcow2", "chain.out.raw"]);
    expect(`${r.stdout}${r.stderr}`).toBe("Images are identical.\n");
  });

  it("a server without Range support gives one line in #error, as qimg's", async () => {
    const url = `${whole.url}plain.qcow2`;
    expect(await openUrl(url)).toBe("error");
    const r = await run(process.execPath, [qimg, "info", "-f", "qcow2", url]);
    expect(r.status).not.toBe(0);
    const line = r.stderr.trim().replace(/^qimg: /, "");
    expect(line).toBe(`Could not open '${url}': Error opening file: Server does not support 'range' (byte ranges)`);
    expect(await text(page, "#error")).toBe(line);
    // QEMU refuses the same server for the same reason.
    expect((await qemuImg(["info", "-f", "qcow2", url])).stderr).toContain("Server does not support 'range' (byte ranges)");
  });

  it("a missing object gives one line in #error", async () => {
    const url = `${ranged.url}nothing.qcow2`;
    expect(await openUrl(url)).toBe("error");
    expect(await text(page, "#error")).toMatch(new RegExp(`^Could not open '${url.replace(/[.?*+()[\]\\]/g, "\\$&")}': .*404`));
  });
});
