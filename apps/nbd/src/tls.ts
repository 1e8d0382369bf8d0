/**
 * TLS credentials for the server, loaded once at startup: X.509 (certificate, key, optional CA to require
 * and verify client certificates) or PSK (a psktool key file of `identity:hexkey` lines).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as tls from "node:tls";

export type TlsCredentials =
  | { kind: "x509"; certFile: string; keyFile: string; caFile?: string; verifyPeer: boolean }
  | { kind: "psk"; pskFile: string };

/** Thrown with a one-line message when credentials cannot be loaded. */
export class TlsSetupError extends Error {}

function readText(file: string, what: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as { code?: string }).code;
    const reason = code === "ENOENT" ? "No such file or directory" : code === "EACCES" ? "Permission denied" : String((error as Error).message);
    throw new TlsSetupError(`Unable to read ${what} '${file}': ${reason}`);
  }
}

/** Parses a psktool key file: one `identity:hexkey` per line; blank lines ignored. */
export function parsePskFile(text: string, file = "PSK file"): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === "") return;
    const colon = line.lastIndexOf(":");
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (colon <= 0 || hex.length === 0 || hex.length % 2 !== 0 || !/^[0-9a-fA-F]+$/.test(hex)) {
      throw new TlsSetupError(`${file}: line ${i + 1} is not of the form 'username:hexkey'`);
    }
    keys.set(identity, Buffer.from(hex, "hex"));
  });
  if (keys.size === 0) throw new TlsSetupError(`${file}: no keys`);
  return keys;
}

/** PSK suites (TLS 1.2; Node has no TLS 1.3 PSK-only handshake). */
const PSK_CIPHERS = [
  "ECDHE-PSK-CHACHA20-POLY1305",
  "DHE-PSK-AES256-GCM-SHA384",
  "DHE-PSK-AES128-GCM-SHA256",
  "PSK-AES256-GCM-SHA384",
  "PSK-AES128-GCM-SHA256",
  "ECDHE-PSK-AES256-CBC-SHA384",
  "ECDHE-PSK-AES128-CBC-SHA256",
  "PSK-CHACHA20-POLY1305",
].join(":");

/** Socket options for `new tls.TLSSocket(socket, { isServer: true, ...options })`. */
export function loadTlsOptions(creds: TlsCredentials): tls.TLSSocketOptions {
  if (creds.kind === "psk") {
    const keys = parsePskFile(readText(creds.pskFile, "PSK file"), creds.pskFile);
    const secureContext = tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: "TLSv1.2", maxVersion: "TLSv1.2" });
    return {
      secureContext,
      pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
    } as tls.TLSSocketOptions;
  }
  const cert = readText(creds.certFile, "certificate");
  const key = readText(creds.keyFile, "private key");
  const ca = creds.caFile === undefined ? undefined : readText(creds.caFile, "CA certificate");
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({ cert, key, minVersion: "TLSv1.2", ...(ca ? { ca } : {}) });
  } catch (error) {
    throw new TlsSetupError(`Unable to load TLS credentials: ${(error as Error).message}`);
  }
  const verify = creds.verifyPeer && ca !== undefined;
  return { secureContext, requestCert: verify, rejectUnauthorized: verify };
}

/** QEMU's `--object tls-creds-x509|tls-creds-psk,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]`. */
export interface TlsObject {
  id: string;
  creds: TlsCredentials;
}

/** Parses one `--object` value; only the TLS credential types are known. */
export function parseTlsObject(spec: string): TlsObject {
  const [type, ...rest] = spec.split(",");
  const props = new Map<string, string>();
  for (const item of rest) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new TlsSetupError(`Invalid parameter '${item}'`);
    props.set(item.slice(0, eq), item.slice(eq + 1));
  }
  if (type !== "tls-creds-x509" && type !== "tls-creds-psk") {
    throw new TlsSetupError(`--object type '${type}' is not supported`);
  }
  const id = props.get("id");
  if (!id) throw new TlsSetupError("Parameter 'id' is missing");
  const endpoint = props.get("endpoint") ?? "client";
  if (endpoint !== "server") throw new TlsSetupError("Expecting TLS credentials with a server endpoint");
  const dir = props.get("dir");
  if (!dir) throw new TlsSetupError(`${type}: parameter 'dir' is missing`);
  for (const key of props.keys()) {
    if (!["id", "endpoint", "dir", "verify-peer", "priority"].includes(key)) {
      throw new TlsSetupError(`Property '${type}.${key}' not found`);
    }
  }
  if (type === "tls-creds-psk") return { id, creds: { kind: "psk", pskFile: path.join(dir, "keys.psk") } };
  const verifyText = props.get("verify-peer") ?? "on";
  if (!["on", "off", "yes", "no", "true", "false"].includes(verifyText)) {
    throw new TlsSetupError(`Parameter 'verify-peer' expects 'on' or 'off'`);
  }
  const verifyPeer = ["on", "yes", "true"].includes(verifyText);
  const caFile = path.join(dir, "ca-cert.pem");
  return {
    id,
    creds: {
      kind: "x509",
      certFile: path.join(dir, "server-cert.pem"),
      keyFile: path.join(dir, "server-key.pem"),
      ...(verifyPeer || fs.existsSync(caFile) ? { caFile } : {}),
      verifyPeer,
    },
  };
}
