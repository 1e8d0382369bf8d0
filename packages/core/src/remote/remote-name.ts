/**
 * Names of remote images, as QEMU's curl driver takes them, plus S3 objects:
 * - `http://...`, `https://...`: the curl driver's URL filenames;
 * - `json:{"file.driver": "https", "file.url": "...", "file.readahead": ..., "file.sslverify": ..., "file.timeout": ...}`
 *   and the nested form `json:{"driver": "qcow2", "file": {"driver": "http", "url": "..."}}`;
 * - `s3://BUCKET/KEY` (qcowkit's own: QEMU has no S3 driver).
 * This file keeps the curl driver's part of json: filenames apart from the general json: parser.
 */
import { Qcow2Error } from "@qcowkit/spec";

export interface RemoteName {
  kind: "http" | "s3";
  /** The URL (http/https) or the s3:// name. */
  url: string;
  /** Image format named by the json: form ("driver"), if any. */
  format?: string;
  /** Bytes of readahead (QEMU curl's `readahead`, default 256 KiB). */
  readahead?: number;
  /** Check TLS certificates (QEMU curl's `sslverify`, default on). */
  sslVerify?: boolean;
  /** Seconds a request may take (QEMU curl's `timeout`, default 5). */
  timeoutSeconds?: number;
}

const URL_RE = /^(https?):\/\//i;

/** True for http(s):// and s3:// names and json: names whose protocol is http or https. */
export function isRemoteName(name: string): boolean {
  return parseRemoteName(name) !== undefined;
}

function bad(message: string): Qcow2Error {
  return new Qcow2Error("INVALID_ARGUMENT", message, { errno: "EINVAL" });
}

/** Flatten {"file": {"driver": "http"}} into {"file.driver": "http"}. */
function flatten(obj: Record<string, unknown>, prefix = "", out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const [k, v] of Object.entries(obj)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v as Record<string, unknown>, `${prefix}${k}.`, out);
    else out[`${prefix}${k}`] = v;
  }
  return out;
}

/** QEMU's size suffixes for readahead ("256k", "1M", plain bytes). */
function parseSize(key: string, value: unknown): number {
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value;
  if (typeof value === "string") {
    const m = /^(\d+)([kKmMgG]?)$/.exec(value.trim());
    if (m) return Number(m[1]) * ({ "": 1, k: 1024, m: 2 ** 20, g: 2 ** 30 } as Record<string, number>)[m[2]!.toLowerCase()]!;
  }
  throw bad(`Parameter '${key}' expects a size value`);
}

function parseBool(key: string, value: unknown): boolean {
  if (typeof value === "boolean") return value;
  if (value === "on" || value === "true") return true;
  if (value === "off" || value === "false") return false;
  throw bad(`Parameter '${key}' expects 'on' or 'off'`);
}

function parseTimeout(key: string, value: unknown): number {
  const n = typeof value === "string" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n <= 0) throw bad("timeout parameter is invalid or not a positive integer");
  if (n > 100_000) throw bad("timeout parameter is too large or negative");
  void key;
  return n;
}

/**
 * The remote name in `name`, or undefined when it names something else (a local file, an NBD export, a
 * json: name for another protocol). `options` are block options already split into keys
 * ("file.driver" -> "https"), as --image-opts gives them.
 */
export function parseRemoteName(name: string): RemoteName | undefined {
  if (URL_RE.test(name)) return { kind: "http", url: name };
  if (/^s3:\/\//i.test(name)) return { kind: "s3", url: name };
  if (!name.startsWith("json:")) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(name.slice(5));
  } catch {
    return undefined;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return undefined;
  return remoteFromOptions(flatten(parsed as Record<string, unknown>));
}

/** The remote image described by flat block options, or undefined when its protocol is not http(s). */
export function remoteFromOptions(options: Record<string, unknown>): RemoteName | undefined {
  const driver = options["driver"];
  // "driver": "https" with "url" at the top: the protocol node itself (a raw image).
  const protocolAtTop = driver === "http" || driver === "https";
  const p = protocolAtTop ? "" : "file.";
  const protocol = protocolAtTop ? driver : options[`${p}driver`];
  const url = options[`${p}url`] ?? options[`${p}filename`];
  if (protocol !== "http" && protocol !== "https") {
    if (typeof url === "string" && URL_RE.test(url) && options[`${p}driver`] === undefined) {
      return { kind: "http", url, ...(typeof driver === "string" ? { format: driver } : {}) };
    }
    return undefined;
  }
  if (typeof url !== "string") throw bad("curl block driver requires an 'url' option");
  const scheme = URL_RE.exec(url)?.[1]?.toLowerCase();
  if (scheme !== protocol) throw bad(`${protocol} curl driver cannot handle the URL '${url}' (does not start with '${protocol}://')`);
  const out: RemoteName = { kind: "http", url };
  if (!protocolAtTop && typeof driver === "string") out.format = driver;
  if (protocolAtTop) out.format = "raw";
  for (const [key, value] of Object.entries(options)) {
    if (!key.startsWith(p) || key.slice(p.length).includes(".")) continue;
    const k = key.slice(p.length);
    switch (k) {
      case "driver":
      case "url":
      case "filename":
        break;
      case "readahead": {
        const n = parseSize(key, value);
        if (n % 512 !== 0) throw bad(`HTTP_READAHEAD_SIZE ${n} is not a multiple of 512`);
        out.readahead = n;
        break;
      }
      case "sslverify":
        out.sslVerify = parseBool(key, value);
        break;
      case "timeout":
        out.timeoutSeconds = parseTimeout(key, value);
        break;
      default:
        if (protocolAtTop || key.startsWith("file.")) throw bad(`Block protocol '${protocol}' does not support the option '${k}'`);
    }
  }
  return out;
}
