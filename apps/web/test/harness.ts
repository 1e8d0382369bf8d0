/**
 * Test harness: the built page (dist/) served by scripts/serve.mjs on 127.0.0.1, opened in Debian's
 * Chromium (/usr/bin/chromium) through playwright-core, with a fresh profile each launch.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
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
