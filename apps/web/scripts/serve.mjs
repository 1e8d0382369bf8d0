#!/usr/bin/env node
/**
 * Serve dist/ on 127.0.0.1 and print the URL: port PORT when set (0: any free port), else 4817 when it is
 * free, else any free port. Static files only; the page does all its work in the browser.
 */
import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist");
if (!existsSync(join(dist, "index.html"))) {
  console.error("web: dist/ is missing: run `pnpm --filter @qcowkit/web build` first");
  process.exit(1);
}
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".map": "application/json", ".json": "application/json", ".png": "image/png", ".wasm": "application/wasm" };

const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
  const file = normalize(join(dist, path.endsWith("/") ? `${path}index.html` : path));
  if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return;
  }
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream", "cache-control": "no-cache" });
  createReadStream(file).pipe(res);
});
const wanted = process.env.PORT !== undefined ? Number(process.env.PORT) : 4817;
server.on("error", (e) => {
  if (e.code === "EADDRINUSE" && process.env.PORT === undefined) server.listen(0, "127.0.0.1");
  else {
    console.error(`web: cannot listen on 127.0.0.1:${wanted}: ${e.message}`);
    process.exit(1);
  }
});
server.on("listening", () => {
  const { port } = server.address();
  console.log(`qcowkit web: http://127.0.0.1:${port}/  (Ctrl+C stops it)`);
});
server.listen(wanted, "127.0.0.1");
