/**
 * NBD image names as QEMU 7.2 takes them: the URIs `nbd://HOST[:PORT]/[EXPORT]` (also `nbd+tcp://`) and
 * `nbd+unix:///[EXPORT]?socket=PATH`, and the legacy `nbd:HOST:PORT[:exportname=EXPORT]` and
 * `nbd:unix:PATH[:exportname=EXPORT]`. A name QEMU refuses gets QEMU's message ("No valid URL specified",
 * "NBD server address missing", ...). `displayName` is the name QEMU prints for the export afterwards
 * (qemu-img info's "image:", map's file column).
 */
import { Qcow2Error } from "@qcowkit/spec";
import { NBD_DEFAULT_PORT } from "@qcowkit/nbd-protocol";

export type NbdAddress = { kind: "unix"; path: string } | { kind: "tcp"; host: string; port: string };

export interface NbdLocation {
  address: NbdAddress;
  /** The export name ("" for the server's default export). */
  exportName: string;
  /** QEMU's canonical form of the name. */
  displayName: string;
}

/** True for names QEMU hands to its NBD driver (by their protocol prefix). */
export function isNbdFilename(name: string): boolean {
  return /^nbd(\+unix|\+tcp)?:/.test(name);
}

function invalid(message = "No valid URL specified"): Qcow2Error {
  return new Qcow2Error("INVALID_ARGUMENT", message, { errno: "EINVAL" });
}

/** Parse an NBD image name; throws Qcow2Error INVALID_ARGUMENT with QEMU's message when it is not valid. */
export function parseNbdFilename(name: string): NbdLocation {
  const location = name.includes("://") ? parseUri(name) : parseLegacy(name);
  return { ...location, displayName: displayName(location.address, location.exportName) };
}

/** QEMU's canonical name of an export (its refreshed filename). */
export function displayName(address: NbdAddress, exportName: string): string {
  if (address.kind === "unix") {
    return exportName !== "" ? `nbd+unix:///${exportName}?socket=${address.path}` : `nbd+unix://?socket=${address.path}`;
  }
  const base = `nbd://${address.host}:${address.port}`;
  return exportName !== "" ? `${base}/${exportName}` : base;
}

/** "host:port" as QEMU prints an address in messages (IPv6 hosts without brackets). */
export function addressText(address: NbdAddress): string {
  return address.kind === "unix" ? address.path : `${address.host}:${address.port}`;
}

function percentDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw invalid();
  }
}

const URI_PATTERN = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/;

function parseUri(name: string): Omit<NbdLocation, "displayName"> {
  const m = URI_PATTERN.exec(name);
  if (!m) throw invalid();
  const scheme = m[1]!;
  if (!isNbdFilename(`${scheme}:`)) throw invalid();
  const authority = m[2]!;
  const path = m[3]!;
  const query = m[4];
  // The path names the export, less the one leading slash.
  const exportName = percentDecode(path.startsWith("/") ? path.slice(1) : path);
  // user@ is accepted and ignored.
  const hostPort = authority.slice(authority.lastIndexOf("@") + 1);
  if (scheme === "nbd+unix") {
    if (hostPort !== "" || query === undefined) throw invalid();
    const params = query.split("&");
    if (params.length !== 1) throw invalid();
    const eq = params[0]!.indexOf("=");
    if (eq < 0 || params[0]!.slice(0, eq) !== "socket") throw invalid();
    return { address: { kind: "unix", path: percentDecode(params[0]!.slice(eq + 1)) }, exportName };
  }
  if (query !== undefined) throw invalid();
  const hp = /^(\[[^\]]*\]|[^:[\]]*)(?::([0-9]*))?$/.exec(hostPort);
  if (!hp) throw invalid();
  const host = percentDecode(hp[1]!.startsWith("[") ? hp[1]!.slice(1, -1) : hp[1]!);
  if (host === "") throw invalid();
  let port = String(NBD_DEFAULT_PORT);
  if (hp[2] !== undefined && hp[2] !== "") {
    const n = Number(hp[2]);
    if (n > 65535) throw invalid();
    port = String(n);
  }
  return { address: { kind: "tcp", host, port }, exportName };
}

const EXPORT_OPTION = ":exportname=";

function parseLegacy(name: string): Omit<NbdLocation, "displayName"> {
  if (!name.startsWith("nbd:")) throw invalid("File name string for NBD must start with 'nbd:'");
  let spec = name.slice(4);
  let exportName = "";
  const at = spec.indexOf(EXPORT_OPTION);
  if (at >= 0) {
    exportName = spec.slice(at + EXPORT_OPTION.length);
    // An empty export option leaves the address unset in QEMU.
    if (exportName === "") throw invalid("NBD server address missing");
    spec = spec.slice(0, at);
  }
  if (spec.startsWith("unix:")) return { address: { kind: "unix", path: spec.slice(5) }, exportName };
  if (spec === "") throw invalid("NBD server address missing");
  // HOST:PORT, the host in brackets when it is an IPv6 address.
  const m = /^(\[[^\]]*\]|[^:]*):(.*)$/.exec(spec);
  if (!m) throw invalid(`error parsing address '${spec}'`);
  const host = m[1]!.startsWith("[") ? m[1]!.slice(1, -1) : m[1]!;
  const port = m[2]!;
  if (!/^[0-9]+$/.test(port) || Number(port) > 65535) {
    throw new Qcow2Error("IO_ERROR", `address resolution failed for ${host}:${port}: Servname not supported for ai_socktype`, { errno: "EINVAL" });
  }
  return { address: { kind: "tcp", host, port: String(Number(port)) }, exportName };
}
