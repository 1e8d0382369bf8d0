/**
 * The Node transport for RemoteStore and the S3 uploader: node:http/node:https with keep-alive agents, so
 * `sslverify=off` (QEMU curl's option) and extra CA certificates can be set per store, which the global fetch
 * of Node 20 cannot do without another dependency. CA certificates also come from NODE_EXTRA_CA_CERTS (Node)
 * and SSL_CERT_FILE (read here, as OpenSSL and curl do).
 */
import { readFileSync } from "node:fs";
import type * as http from "node:http";
import { createRequire } from "node:module";
import type { RemoteResponse } from "../remote-store";
import type { UploadFetch } from "../s3";

export interface NodeFetchOptions {
  /** Check the server's TLS certificate (default true; QEMU curl's `sslverify`). */
  sslVerify?: boolean;
  /** Extra trusted CA certificates (PEM), added to Node's. */
  ca?: string | string[];
  /** Sockets kept per host (default 16). */
  maxSockets?: number;
}

// node:http, node:https and node:tls are loaded by the first request: processes that open only local files
// (most qimg commands) do not pay for them at start-up.
const load = createRequire(import.meta.url);
const httpModule = () => load("node:http") as typeof import("node:http");
const httpsModule = () => load("node:https") as typeof import("node:https");

const agents = new Map<string, http.Agent>();

function agentFor(protocol: string, opts: NodeFetchOptions): http.Agent {
  const verify = opts.sslVerify ?? true;
  const extraCa = opts.ca ?? envCa();
  const key = `${protocol}|${verify}|${opts.maxSockets ?? 16}|${JSON.stringify(extraCa ?? null)}`;
  let agent = agents.get(key);
  if (!agent) {
    const common = { keepAlive: true, maxSockets: opts.maxSockets ?? 16 };
    agent = protocol === "https:"
      ? new (httpsModule().Agent)({
          ...common,
          rejectUnauthorized: verify,
          ...(extraCa !== undefined ? { ca: [...(Array.isArray(extraCa) ? extraCa : [extraCa]), ...tlsRootCertificates()] } : {}),
        })
      : new (httpModule().Agent)(common);
    agents.set(key, agent);
  }
  return agent;
}

/** Giving `ca` replaces Node's bundled roots: keep them beside the extra ones. */
function tlsRootCertificates(): readonly string[] {
  return (load("node:tls") as typeof import("node:tls")).rootCertificates;
}

let envCaCache: string | null | undefined;
function envCa(): string | undefined {
  if (envCaCache === undefined) {
    const path = process.env.SSL_CERT_FILE;
    envCaCache = null;
    if (path) {
      try {
        envCaCache = readFileSync(path, "utf8");
      } catch {
        envCaCache = null;
      }
    }
  }
  return envCaCache ?? undefined;
}

/** A fetch over node:http(s), for RemoteStore (GET) and the S3 uploader (PUT, POST with a body). */
export function nodeFetch(opts: NodeFetchOptions = {}): UploadFetch {
  return (url, init) =>
    new Promise<RemoteResponse>((resolve, reject) => {
      const u = new URL(url);
      const mod = u.protocol === "https:" ? httpsModule() : httpModule();
      const req = mod.request(u, {
        method: init.method,
        headers: { ...init.headers, ...(init.body ? { "content-length": String(init.body.length) } : {}) },
        agent: agentFor(u.protocol, opts),
        signal: init.signal,
      });
      req.on("error", reject);
      req.on("response", (res) => {
        let consumed = false;
        const response: RemoteResponse = {
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? "",
          headers: {
            get(name: string): string | null {
              const v = res.headers[name.toLowerCase()];
              if (v === undefined) return null;
              return Array.isArray(v) ? v.join(", ") : v;
            },
          },
          arrayBuffer(): Promise<ArrayBuffer> {
            consumed = true;
            return new Promise((ok, fail) => {
              const chunks: Uint8Array[] = [];
              let total = 0;
              res.on("data", (c: Uint8Array) => {
                chunks.push(c);
                total += c.length;
              });
              res.on("error", fail);
              res.on("aborted", () => fail(new Error("the connection was closed mid-response")));
              res.on("end", () => {
                if (!res.complete) {
                  fail(new Error("the connection was closed mid-response"));
                  return;
                }
                const out = new Uint8Array(total);
                let at = 0;
                for (const c of chunks) {
                  out.set(c, at);
                  at += c.length;
                }
                ok(out.buffer);
              });
            });
          },
          body: {
            async cancel(): Promise<void> {
              if (!consumed) res.resume();
            },
          },
        };
        resolve(response);
      });
      if (init.body) req.end(init.body);
      else req.end();
    });
}
