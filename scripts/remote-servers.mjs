/**
 * Real servers for remote-image tests and benchmarks, on loopback only, each on a free port:
 * - nginx (Debian package) serving a directory over HTTP, or HTTPS with a test CA made by openssl;
 * - s3rver (npm) as an S3 API server.
 * Nothing here reaches the internet.
 */
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";

/** A free TCP port on 127.0.0.1 (bound and released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port, child, ms = 10_000) {
  const until = Date.now() + ms;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`);
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on 127.0.0.1:${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A test CA and a server certificate for 127.0.0.1 and localhost, in `dir`: ca.pem, server.pem, server.key.
 */
export function makeTestCa(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const o = (args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  o(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=qcowkit test CA"]);
  o(["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  o(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"]);
  return { ca: path.join(dir, "ca.pem"), cert: path.join(dir, "server.pem"), key: path.join(dir, "server.key") };
}

/**
 * nginx serving `root` on 127.0.0.1 (as root's worker when run as root, so that test folders made with
 * mode 0700 are readable). `tls`: { cert, key } for HTTPS. Returns { url, port, stop() }.
 * The config, pid and logs live in a temporary folder beside `root`.
 */
export async function startNginx(root, opts = {}) {
  const port = await freePort();
  const conf = fs.mkdtempSync(path.join(path.dirname(root), "nginx-"));
  for (const d of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) fs.mkdirSync(path.join(conf, d));
  const listen = opts.tls ? `127.0.0.1:${port} ssl` : `127.0.0.1:${port}`;
  const tls = opts.tls ? `ssl_certificate ${opts.tls.cert}; ssl_certificate_key ${opts.tls.key};` : "";
  fs.writeFileSync(
    path.join(conf, "nginx.conf"),
    `daemon off;
${process.getuid?.() === 0 ? "user root;" : ""}
worker_processes 1;
pid ${conf}/nginx.pid;
error_log ${conf}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${conf}/body;
  proxy_temp_path ${conf}/proxy;
  fastcgi_temp_path ${conf}/fastcgi;
  uwsgi_temp_path ${conf}/uwsgi;
  scgi_temp_path ${conf}/scgi;
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000;
  server {
    listen ${listen};
    ${tls}
    root ${root};
  }
}
`,
  );
  const child = spawn("nginx", ["-p", conf, "-c", path.join(conf, "nginx.conf")], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  try {
    await waitForPort(port, child);
  } catch (e) {
    child.kill("SIGKILL");
    throw new Error(`nginx did not start: ${e.message}\n${stderr}`);
  }
  const url = `${opts.tls ? "https" : "http"}://127.0.0.1:${port}`;
  return {
    url,
    port,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGQUIT");
        const t = setTimeout(() => child.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(t);
      }
      fs.rmSync(conf, { recursive: true, force: true });
    },
  };
}

/**
 * s3rver on 127.0.0.1 with its files in `dir`, and `buckets` created. Returns { endpoint, env, stop() }:
 * `env` holds the AWS_* variables that point qimg at it (s3rver's default credentials).
 */
export async function startS3rver(dir, buckets = ["b"]) {
  const { default: S3rver } = await import("s3rver");
  const port = await freePort();
  const server = new S3rver({
    address: "127.0.0.1",
    port,
    silent: true,
    directory: dir,
    configureBuckets: buckets.map((name) => ({ name })),
  });
  await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    env: {
      AWS_ENDPOINT_URL: endpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "S3RVER",
      AWS_SECRET_ACCESS_KEY: "S3RVER",
    },
    async stop() {
      await server.close();
    },
  };
}
