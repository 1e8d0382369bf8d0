#!/usr/bin/env node
/**
 * The README's screenshot (docs/screenshot.png): a QEMU-made image with compressed clusters, snapshots and
 * bitmaps, opened in Chromium from the built page. Needs qemu-img, qemu-io and /usr/bin/chromium.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync("/tmp/qcowkit-shot-");
const sh = (cmd) => execFileSync("sh", ["-c", cmd], { cwd: dir, stdio: "ignore" });
sh(
  "qemu-img create -q -f qcow2 disk.qcow2 1G && qemu-io -c 'write -P 1 0 24M' -c 'write -c -P 2 64M 16M' -c 'write -P 3 512M 8M' disk.qcow2 && " +
    "qemu-img snapshot -c installed disk.qcow2 && qemu-io -c 'write -P 4 4M 8M' disk.qcow2 && qemu-img bitmap --add disk.qcow2 backup-0",
);
const server = spawn(process.execPath, [join(root, "scripts/serve.mjs")], { env: { ...process.env, PORT: "0" }, stdio: ["ignore", "pipe", "inherit"] });
const url = await new Promise((resolve) => server.stdout.on("data", (d) => resolve(/http:\/\/\S+\//.exec(String(d))[0])));
const profile = mkdtempSync("/tmp/qcowkit-shot-profile-");
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 820 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await context.newPage();
await page.goto(url);
await page.setInputFiles("#file-input", [join(dir, "disk.qcow2")]);
await page.waitForFunction(() => document.body.dataset.state === "ready");
await page.evaluate(() => document.getElementById("result").scrollIntoView());
const box = await page.locator("#cluster-map").boundingBox();
await page.mouse.move(box.x + 100, box.y + 5);
await page.screenshot({ path: join(root, "docs/screenshot.png") });
await context.close();
server.kill();
rmSync(dir, { recursive: true, force: true });
rmSync(profile, { recursive: true, force: true });
console.log("docs/screenshot.png written");
