/**
 * Test harness: the built page (dist/) served by scripts/serve.mjs on 127.0.0.1, opened in Debian's
 * Chromium (/usr/bin/chromium) through playwright-core, with a fresh profile each launch.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createReadStream, mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
const webRoot = join(import.meta.dirname, "..");

/** Where scratch files go: tmpfs when there is one. */
export function scratchDir(prefix: string): string {
  try {
    return mkdtempSync(join("/dev/shm", prefix));
  } catch {
    return mkdtempSync(join("/tmp", prefix));
  }
}

export interface Served {
  url: string;
  close(): void;
}

/** Start `pnpm web`'s server on a free port; resolves with the URL it prints. */
export function serve(): Promise<Served> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [join(webRoot, "scripts/serve.mjs")], { env: { ...process.env, PORT: "0" }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 15_000);
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[0], close: () => child.kill() });
      }
    });
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
}

export interface Browser {
  context: BrowserContext;
  profile: string;
  close(): Promise<void>;
}

/** Chromium with the flags CI uses and a fresh profile. */
export async function launch(): Promise<Browser> {
  const profile = scratchDir("qcowkit-web-profile-");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1100, height: 900 },
    deviceScaleFactor: 1,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--enable-precise-memory-info",
    ],
  });
  return {
    context,
    profile,
    async close() {
      await context.close().catch(() => undefined);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Choose `paths` in the page's file input and wait until the page is done with them. */
export async function openFiles(page: Page, paths: string[]): Promise<"ready" | "error"> {
  await page.evaluate(() => {
    document.body.dataset.state = "choosing";
    // Choosing the same files again must still count as a choice.
    (document.getElementById("file-input") as HTMLInputElement).value = "";
  });
  await page.setInputFiles("#file-input", paths);
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state ?? ""), undefined, { timeout: 60_000 });
  return (await page.evaluate(() => document.body.dataset.state)) as "ready" | "error";
}

export const text = (page: Page, selector: string) => page.$eval(selector, (e) => e.textContent ?? "");

export interface Session {
  page: Page;
  browser: Browser;
  close(): Promise<void>;
}

/** Serve the page, launch Chromium, open the page (page errors are printed); `close` also removes `dir`. */
export async function startSession(dir: string): Promise<Session> {
  const served = await serve();
  const browser = await launch();
  const page = await browser.context.newPage();
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(served.url);
  return {
    page,
    browser,
    async close() {
      await browser.close();
      served.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A static file server for remote images on 127.0.0.1 (a free port): single byte ranges (206 with
 * Content-Range), ETag and If-Match, HEAD, and CORS for a page of another origin (preflight answered; the
 * Range and validator headers allowed, Content-Range and ETag exposed). With `range: false` it ignores Range
 * and always sends the whole file, as a server without byte ranges does.
 */
export async function serveFiles(root: string, opts: { range: boolean }): Promise<Served> {
  const cors = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET, HEAD",
    "access-control-allow-headers": "range, if-match, if-unmodified-since",
    "access-control-expose-headers": "content-range, etag, last-modified, accept-ranges, content-length",
  };
  const server = createServer((req, res) => {
    if (req.method === "OPTIONS") {
      res.writeHead(204, cors).end();
      return;
    }
    const path = join(root, decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname).replace(/\.\.+/g, ""));
    let st;
    try {
      st = statSync(path);
    } catch {
      res.writeHead(404, cors).end();
      return;
    }
    const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    const headers: Record<string, string> = { ...cors, etag, "content-type": "application/octet-stream" };
    if (opts.range) headers["accept-ranges"] = "bytes";
    const ifMatch = req.headers["if-match"];
    if (ifMatch !== undefined && ifMatch !== etag && ifMatch !== "*") {
      res.writeHead(412, cors).end();
      return;
    }
    const m = opts.range ? /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "") : null;
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    if (m) {
      start = Number(m[1]);
      end = m[2] ? Math.min(Number(m[2]), st.size - 1) : st.size - 1;
      if (start >= st.size) {
        res.writeHead(416, { ...headers, "content-range": `bytes */${st.size}` }).end();
        return;
      }
      status = 206;
      headers["content-range"] = `bytes ${start}-${end}/${st.size}`;
    }
    headers["content-length"] = String(end - start + 1);
    res.writeHead(status, headers);
    if (req.method === "HEAD" || end < start) res.end();
    else createReadStream(path, { start, end }).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/`, close: () => server.close() };
}
