/**
 * S3-compatible object storage: `s3://BUCKET/KEY` names, SigV4 request signing (aws4fetch's signer: small,
 * maintained, Web Crypto only, so it runs in browsers as well as Node), ranged reads through RemoteStore, and
 * whole-object writes through a multipart upload fed by a stream with bounded memory. Runtime-agnostic: the
 * configuration is passed in (the Node entry reads it from AWS_* variables).
 */
import { AwsV4Signer } from "aws4fetch";
import { Qcow2Error, rechunk } from "@qcowkit/spec";
import { RemoteStore, type RemoteFetch, type RemoteResponse, type RemoteSigner, type RemoteStoreOptions } from "./remote-store";

export interface S3Config {
  /** Endpoint URL ("http://127.0.0.1:9000"): path-style addressing. Absent: AWS virtual-hosted style. */
  endpoint?: string;
  /** Default "us-east-1". */
  region?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
}

export interface S3Location {
  bucket: string;
  key: string;
}

/** A fetch that can also send a body (PUT, POST). */
export type UploadFetch = (
  url: string,
  init: { method: string; headers: Record<string, string>; signal: AbortSignal; body?: Uint8Array },
) => Promise<RemoteResponse>;

export function isS3Name(name: string): boolean {
  return /^s3:\/\//i.test(name);
}

/** Split `s3://BUCKET/KEY`; the key may contain "/" and must not be empty. */
export function parseS3Name(name: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/(.+)$/i.exec(name);
  if (!m) throw new Qcow2Error("INVALID_ARGUMENT", `Invalid S3 name '${name}': expected s3://BUCKET/KEY`);
  return { bucket: m[1]!, key: m[2]! };
}

function encodeKey(key: string): string {
  return key.split("/").map((part) => encodeURIComponent(part)).join("/");
}

/** The HTTP URL of an object: path style under the endpoint when one is given. */
export function s3ObjectUrl(config: S3Config, loc: S3Location): string {
  if (config.endpoint !== undefined && config.endpoint !== "") {
    return `${config.endpoint.replace(/\/+$/, "")}/${encodeURIComponent(loc.bucket)}/${encodeKey(loc.key)}`;
  }
  const region = config.region || "us-east-1";
  return `https://${loc.bucket}.s3.${region}.amazonaws.com/${encodeKey(loc.key)}`;
}

/** A signer for requests to this configuration's service; none (anonymous requests) without credentials. */
export function s3Signer(config: S3Config): RemoteSigner | undefined {
  if (!config.accessKeyId || !config.secretAccessKey) return undefined;
  const { accessKeyId, secretAccessKey } = config;
  return async (url, method, headers) => {
    const signer = new AwsV4Signer({
      url,
      method,
      headers,
      accessKeyId,
      secretAccessKey,
      ...(config.sessionToken ? { sessionToken: config.sessionToken } : {}),
      service: "s3",
      region: config.region || "us-east-1",
    });
    const signed = await signer.sign();
    const out: Record<string, string> = {};
    signed.headers.forEach((value, key) => {
      out[key] = value;
    });
    return out;
  };
}

/** Open an object for ranged reads. */
export function openS3Store(name: string, config: S3Config, opts: RemoteStoreOptions = {}): Promise<RemoteStore> {
  const loc = parseS3Name(name);
  const sign = s3Signer(config);
  return RemoteStore.open(s3ObjectUrl(config, loc), { name, ...opts, ...(sign ? { sign } : {}) });
}

export interface S3UploadOptions {
  /** Bytes per part (default 8 MiB; S3 wants at least 5 MiB for every part but the last). */
  partSize?: number;
  /** Parts uploaded at once (default 2). Memory stays below partSize x (concurrency + 1). */
  concurrency?: number;
  fetch?: UploadFetch;
  retries?: number;
  retryDelayMs?: number;
  /** Per request (default 60 000 ms). */
  timeoutMs?: number;
  signal?: AbortSignal;
  onProgress?: (bytesUploaded: number) => void;
}

export interface S3UploadResult {
  bytes: number;
  parts: number;
  etag?: string;
}

type ChunkSource = AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>;

async function* chunksOf(source: ChunkSource): AsyncGenerator<Uint8Array> {
  if (Symbol.asyncIterator in source) {
    yield* source as AsyncIterable<Uint8Array>;
    return;
  }
  const reader = (source as ReadableStream<Uint8Array>).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

function xmlText(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  return m ? m[1]!.replace(/&quot;/g, '"').replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&") : undefined;
}

function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/**
 * Write a whole object from a stream of chunks through a multipart upload: parts are cut as the data
 * comes, at most `concurrency` in flight, and the upload is aborted (no partial object appears) when the
 * source or a request fails. Nothing is written to disk.
 */
export async function uploadS3Object(name: string, config: S3Config, source: ChunkSource, opts: S3UploadOptions = {}): Promise<S3UploadResult> {
  const loc = parseS3Name(name);
  const url = s3ObjectUrl(config, loc);
  const sign = s3Signer(config);
  const f = opts.fetch ?? (globalThis.fetch as unknown as UploadFetch);
  const partSize = opts.partSize ?? 8 * 2 ** 20;
  const concurrency = Math.max(1, opts.concurrency ?? 2);
  const retries = opts.retries ?? 4;
  const retryDelayMs = opts.retryDelayMs ?? 200;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const fail = (what: string): Qcow2Error => new Qcow2Error("IO_ERROR", `Could not write '${name}': ${what}`, { errno: "EIO" });

  const send = async (method: string, target: string, body?: Uint8Array, extra: Record<string, string> = {}): Promise<{ res: RemoteResponse; text: string }> => {
    let last = "";
    for (let n = 0; ; n++) {
      if (opts.signal?.aborted) throw fail("cancelled");
      let headers: Record<string, string> = { ...extra };
      if (sign) headers = await sign(target, method, headers);
      const controller = new AbortController();
      const onAbort = (): void => controller.abort();
      opts.signal?.addEventListener("abort", onAbort);
      const timer = setTimeout(() => controller.abort(), timeoutMs);
      try {
        const res = await f(target, { method, headers, signal: controller.signal, ...(body ? { body } : {}) });
        const text = new TextDecoder().decode(await res.arrayBuffer());
        if (res.status >= 200 && res.status < 300) return { res, text };
        last = `HTTP ${res.status}${xmlText(text, "Code") ? ` ${xmlText(text, "Code")}` : ""}${xmlText(text, "Message") ? `: ${xmlText(text, "Message")}` : ""}`;
        if (res.status < 500 && res.status !== 429) throw fail(last);
      } catch (e) {
        if (e instanceof Qcow2Error) throw e;
        last = e instanceof Error ? e.message.split("\n")[0]! : String(e);
      } finally {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
      }
      if (n >= retries) throw fail(`${last} (${retries + 1} attempts)`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(2000, retryDelayMs * 2 ** n)));
    }
  };

  const created = await send("POST", `${url}?uploads`);
  const uploadId = xmlText(created.text, "UploadId");
  if (!uploadId) throw fail("the server sent no UploadId");
  const q = (n: number): string => `${url}?partNumber=${n}&uploadId=${encodeURIComponent(uploadId)}`;
  const etags: string[] = [];
  let bytes = 0;
  try {
    const inFlight = new Set<Promise<void>>();
    let failure: unknown;
    let number = 0;
    for await (const part of rechunk(chunksOf(source), partSize)) {
      if (failure) break;
      const n = ++number;
      const p: Promise<void> = send("PUT", q(n), part).then(({ res }) => {
        const etag = res.headers.get("etag");
        if (!etag) throw fail(`no ETag for part ${n}`);
        etags[n - 1] = etag;
        bytes += part.length;
        opts.onProgress?.(bytes);
      });
      const tracked = p.catch((e) => {
        failure ??= e;
      }).finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= concurrency) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure) throw failure;
    if (number === 0) {
      // S3 needs at least one part: an empty object is one empty part.
      const { res } = await send("PUT", q(1), new Uint8Array(0));
      etags[0] = res.headers.get("etag") ?? "";
      number = 1;
    }
    const body = new TextEncoder().encode(
      `<CompleteMultipartUpload>${etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${xmlEscape(etag)}</ETag></Part>`).join("")}</CompleteMultipartUpload>`,
    );
    const done = await send("POST", `${url}?uploadId=${encodeURIComponent(uploadId)}`, body, { "content-type": "application/xml" });
    // S3 can answer 200 with an error document.
    if (xmlText(done.text, "Code") !== undefined && !done.text.includes("CompleteMultipartUploadResult")) {
      throw fail(`${xmlText(done.text, "Code")}: ${xmlText(done.text, "Message") ?? ""}`);
    }
    const etag = xmlText(done.text, "ETag");
    return { bytes, parts: number, ...(etag !== undefined ? { etag } : {}) };
  } catch (e) {
    await send("DELETE", `${url}?uploadId=${encodeURIComponent(uploadId)}`).catch(() => undefined);
    if (e instanceof Qcow2Error) throw e;
    throw fail(e instanceof Error ? e.message.split("\n")[0]! : String(e));
  }
}

export type { RemoteFetch };
