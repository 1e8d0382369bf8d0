/**
 * The nbd and ssh protocol drivers in block options (`driver=nbd,host=H,port=P`, `file.driver=nbd,file.path=S`,
 * `driver=ssh,host=H,port=P,path=/p`, and the same in json: names): taken out of the option list and turned
 * into the image name @qcowkit/core opens (`nbd:H:P[:exportname=E]`, `nbd:unix:S`, `ssh://[U@]H[:P]/p`).
 * Values arrive as strings whatever their JSON type (QEMU converts them the same way).
 */
import { takeNodeOptions } from "./driver-options";
import { CliError } from "./errors";

const PREFIXES = ["", "file."] as const;

const NBD_KEYS = ["host", "port", "path", "export", "server.type", "server.host", "server.port", "server.path", "reconnect-delay", "open-timeout"];
const SSH_KEYS = ["host", "port", "path", "user", "server.host", "server.port", "host-key-check.mode"];

export interface NetworkOptionNames {
  /** The remaining options. */
  rest: Array<[string, string]>;
  /** The image name for "" (the top node) and "file." when their driver is nbd or ssh. */
  names: Partial<Record<(typeof PREFIXES)[number], string>>;
}

export function takeNetworkOptions(options: Array<[string, string]>): NetworkOptionNames {
  const names: NetworkOptionNames["names"] = {};
  let rest = options;
  for (const prefix of PREFIXES) {
    const driver = rest.find(([key]) => key === `${prefix}driver`)?.[1];
    if (driver !== "nbd" && driver !== "ssh") continue;
    const keys = driver === "nbd" ? NBD_KEYS : SSH_KEYS;
    let o: Record<string, string>;
    ({ rest, taken: o } = takeNodeOptions(rest, prefix, (name) => (name === "driver" || keys.includes(name) ? name : undefined)));
    names[prefix] = driver === "nbd" ? nbdName(o) : sshName(o);
    // A protocol at the top: its bytes are the disk (raw, nothing probed).
    if (prefix === "") rest.push(["driver", "raw"]);
  }
  return { rest, names };
}

function nbdName(o: Record<string, string>): string {
  const path = o.path ?? o["server.path"];
  const host = o.host ?? o["server.host"];
  const port = o.port ?? o["server.port"] ?? "10809";
  const exportName = o.export !== undefined && o.export !== "" ? `:exportname=${o.export}` : "";
  if (path !== undefined && host !== undefined) throw new CliError("SocketAddress 'host' and 'path' are mutually exclusive");
  if (path !== undefined) return `nbd:unix:${path}${exportName}`;
  if (host === undefined) throw new CliError("NBD server address missing");
  return `nbd:${host.includes(":") ? `[${host}]` : host}:${port}${exportName}`;
}

function sshName(o: Record<string, string>): string {
  const host = o.host ?? o["server.host"];
  const port = o.port ?? o["server.port"];
  const path = o.path;
  if (port !== undefined && !/^\d+$/.test(port)) throw new CliError("Parameter 'port' expects a number");
  if (host === undefined) throw new CliError("Parameter 'server.host' is missing");
  if (path === undefined) throw new CliError("Parameter 'path' is missing");
  const user = o.user !== undefined ? `${encodeURIComponent(o.user)}@` : "";
  return `ssh://${user}${host.includes(":") ? `[${host}]` : host}:${port ?? "22"}${path.startsWith("/") ? "" : "/"}${path}`;
}
