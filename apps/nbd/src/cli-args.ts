/**
 * qnbd's command line: qemu-nbd's options, parsed the way glibc getopt_long parses them (bundled short
 * options, `--opt=value` or `--opt value`, unambiguous long prefixes, operands anywhere, `--` ends options),
 * with getopt's error messages. Parsing does no I/O.
 */
import type { CacheMode, DiscardMode } from "./connection";
import type { TlsCredentials } from "./tls";

type OptionKey =
  | "help" | "version" | "bind" | "port" | "socket" | "offset" | "read-only" | "snapshot" | "bitmap"
  | "connect" | "disconnect" | "load-snapshot" | "cache" | "nocache" | "aio" | "discard" | "detect-zeroes"
  | "shared" | "format" | "persistent" | "verbose" | "object" | "export-name" | "description" | "tls-creds"
  | "tls-authz" | "image-opts" | "trace" | "fork" | "pid-file" | "selinux-label" | "list" | "allocation-depth"
  | "handshake-limit" | "tls-cert" | "tls-key" | "tls-ca" | "tls-psk" | "safe" | "trust-references" | "locking";

interface OptionSpec {
  key: OptionKey;
  short?: string;
  takesArg: boolean;
}

/** In qemu-nbd's order (getopt reports ambiguous prefixes in table order), then qnbd's own TLS flags. */
const OPTIONS: readonly OptionSpec[] = [
  { key: "help", short: "h", takesArg: false },
  { key: "version", short: "V", takesArg: false },
  { key: "bind", short: "b", takesArg: true },
  { key: "port", short: "p", takesArg: true },
  { key: "socket", short: "k", takesArg: true },
  { key: "offset", short: "o", takesArg: true },
  { key: "read-only", short: "r", takesArg: false },
  { key: "allocation-depth", short: "A", takesArg: false },
  { key: "bitmap", short: "B", takesArg: true },
  { key: "connect", short: "c", takesArg: true },
  { key: "disconnect", short: "d", takesArg: false },
  { key: "snapshot", short: "s", takesArg: false },
  { key: "load-snapshot", short: "l", takesArg: true },
  { key: "nocache", short: "n", takesArg: false },
  { key: "cache", takesArg: true },
  { key: "aio", takesArg: true },
  { key: "discard", takesArg: true },
  { key: "detect-zeroes", takesArg: true },
  { key: "shared", short: "e", takesArg: true },
  { key: "format", short: "f", takesArg: true },
  { key: "persistent", short: "t", takesArg: false },
  { key: "verbose", short: "v", takesArg: false },
  { key: "object", takesArg: true },
  { key: "export-name", short: "x", takesArg: true },
  { key: "description", short: "D", takesArg: true },
  { key: "tls-creds", takesArg: true },
  { key: "tls-authz", takesArg: true },
  { key: "image-opts", takesArg: false },
  { key: "trace", short: "T", takesArg: true },
  { key: "fork", takesArg: false },
  { key: "pid-file", takesArg: true },
  { key: "selinux-label", takesArg: true },
  { key: "list", short: "L", takesArg: false },
  { key: "handshake-limit", takesArg: true },
  { key: "tls-cert", takesArg: true },
  { key: "tls-key", takesArg: true },
  { key: "tls-ca", takesArg: true },
  { key: "tls-psk", takesArg: true },
  { key: "safe", takesArg: false },
  { key: "trust-references", takesArg: false },
  { key: "locking", takesArg: true },
];

/** qemu-nbd options qnbd knows but does not implement. */
const UNSUPPORTED: ReadonlySet<OptionKey> = new Set<OptionKey>([
  "offset", "connect", "disconnect", "snapshot", "aio", "detect-zeroes", "image-opts",
  "trace", "selinux-label", "list", "tls-authz",
]);

export interface QnbdOptions {
  file: string;
  format?: string;
  readOnly: boolean;
  /** -l/--load-snapshot: export this internal snapshot (read-only): "snapshot.id=ID,snapshot.name=NAME" or an id or name. */
  loadSnapshot?: { id?: string; name?: string } | { idOrName: string };
  /** --safe: untrusted image (see @qcowkit/core's README, "Safe mode"). */
  safe?: boolean;
  /**
   * --trust-references: follow data file and backing file names stored in the image wherever they lead
   * (qemu-nbd's behaviour). By default they must stay inside the image's folder.
   */
  trustReferences?: boolean;
  /** --locking=off: no image lock (QEMU's file.locking=off). */
  locking?: "on" | "off";
  exportName: string;
  description: string;
  /** Unix socket path; when set, TCP options are ignored (as qemu-nbd does). */
  socketPath?: string;
  port: number;
  bind: string;
  /** Clients served at once; 0 = unlimited. */
  shared: number;
  persistent: boolean;
  verbose: boolean;
  cache: CacheMode;
  discard: DiscardMode;
  allocationDepth: boolean;
  bitmaps: string[];
  pidFile?: string;
  fork: boolean;
  /** `--object` TLS credential definitions, by id. */
  tlsObjects: string[];
  /** `--tls-creds` id. */
  tlsCredsId?: string;
  /** Credentials from qnbd's own flags. */
  tls?: TlsCredentials;
  /** Seconds a client may take to finish the handshake (0 = no limit). */
  handshakeLimitSeconds: number;
}

export type ParsedCommandLine =
  | { kind: "run"; options: QnbdOptions }
  | { kind: "help" }
  | { kind: "version" }
  | { kind: "error"; message: string };

const CACHE_MODES: readonly CacheMode[] = ["none", "writeback", "writethrough", "directsync", "unsafe"];
/** QEMU's NBD_MAX_STRING_SIZE. */
const MAX_STRING = 4096;
const PORT_PATTERN = /^[0-9]+$/;

/** A decimal count from 0 to `max`, or undefined. */
function parseCount(value: string, max: number): number | undefined {
  const n = /^[0-9]+$/.test(value) ? Number(value) : NaN;
  return Number.isSafeInteger(n) && n <= max ? n : undefined;
}

function flag(spec: OptionSpec): string {
  return `--${spec.key}`;
}

/** Parses qnbd's arguments (without the node and script paths). */
export function parseCommandLine(argv: readonly string[]): ParsedCommandLine {
  const opts: Omit<QnbdOptions, "file"> = {
    readOnly: false,
    exportName: "",
    description: "",
    port: 10809,
    bind: "0.0.0.0",
    shared: 1,
    persistent: false,
    verbose: false,
    cache: "writeback",
    discard: "ignore",
    allocationDepth: false,
    bitmaps: [],
    fork: false,
    tlsObjects: [],
    handshakeLimitSeconds: 10,
  };
  const operands: string[] = [];
  const tlsFlags: { cert?: string; key?: string; ca?: string; psk?: string } = {};
  let portText = "10809";

  const apply = (spec: OptionSpec, value: string): ParsedCommandLine | undefined => {
    if (UNSUPPORTED.has(spec.key)) return { kind: "error", message: `option '${flag(spec)}' is not supported` };
    switch (spec.key) {
      case "help":
        return { kind: "help" };
      case "version":
        return { kind: "version" };
      case "bind":
        opts.bind = value;
        break;
      case "port":
        portText = value;
        break;
      case "socket":
        opts.socketPath = value;
        break;
      case "read-only":
        opts.readOnly = true;
        break;
      case "load-snapshot": {
        // A snapshot is exported read-only (as qemu-nbd -l).
        opts.readOnly = true;
        if (!value.startsWith("snapshot.")) {
          opts.loadSnapshot = { idOrName: value };
          break;
        }
        const sel: { id?: string; name?: string } = {};
        for (const part of value.split(",")) {
          const eq = part.indexOf("=");
          const key = eq < 0 ? part : part.slice(0, eq);
          if (key === "snapshot.id") sel.id = part.slice(eq + 1);
          else if (key === "snapshot.name") sel.name = part.slice(eq + 1);
          else return { kind: "error", message: `Invalid parameter '${key}'\nFailed in parsing snapshot param '${value}'` };
        }
        opts.loadSnapshot = sel;
        break;
      }
      case "safe":
        opts.safe = true;
        break;
      case "trust-references":
        opts.trustReferences = true;
        break;
      case "locking":
        if (value !== "on" && value !== "off") return { kind: "error", message: `Invalid locking mode \`${value}'` };
        opts.locking = value;
        break;
      case "allocation-depth":
        opts.allocationDepth = true;
        break;
      case "bitmap":
        opts.bitmaps.push(value);
        break;
      case "nocache":
        opts.cache = "none";
        break;
      case "cache":
        if (!CACHE_MODES.includes(value as CacheMode)) return { kind: "error", message: `Invalid cache mode \`${value}'` };
        opts.cache = value as CacheMode;
        break;
      case "discard":
        if (value === "ignore" || value === "off") opts.discard = "ignore";
        else if (value === "unmap" || value === "on") opts.discard = "unmap";
        else return { kind: "error", message: `Invalid discard mode \`${value}'` };
        break;
      case "shared": {
        const n = parseCount(value, 0x7fffffff);
        if (n === undefined) return { kind: "error", message: `Invalid shared device number '${value}'` };
        opts.shared = n;
        break;
      }
      case "format":
        opts.format = value;
        break;
      case "persistent":
        opts.persistent = true;
        break;
      case "verbose":
        opts.verbose = true;
        break;
      case "object":
        opts.tlsObjects.push(value);
        break;
      case "export-name":
        if (Buffer.byteLength(value) > MAX_STRING) return { kind: "error", message: `export name '${value}' too long` };
        opts.exportName = value;
        break;
      case "description":
        if (Buffer.byteLength(value) > MAX_STRING) {
          return { kind: "error", message: `export description '${value}' too long` };
        }
        opts.description = value;
        break;
      case "tls-creds":
        opts.tlsCredsId = value;
        break;
      case "fork":
        opts.fork = true;
        break;
      case "pid-file":
        opts.pidFile = value;
        break;
      case "handshake-limit": {
        const n = parseCount(value, 86400);
        if (n === undefined) return { kind: "error", message: `Invalid handshake limit '${value}'` };
        opts.handshakeLimitSeconds = n;
        break;
      }
      case "tls-cert":
        tlsFlags.cert = value;
        break;
      case "tls-key":
        tlsFlags.key = value;
        break;
      case "tls-ca":
        tlsFlags.ca = value;
        break;
      case "tls-psk":
        tlsFlags.psk = value;
        break;
    }
    return undefined;
  };

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const exact = OPTIONS.find((o) => o.key === name);
      const candidates = exact ? [exact] : OPTIONS.filter((o) => o.key.startsWith(name));
      if (candidates.length === 0) return { kind: "error", message: `unrecognized option '${arg}'` };
      if (candidates.length > 1) {
        const list = candidates.map((o) => `'${flag(o)}'`).join(" ");
        return { kind: "error", message: `option '${arg}' is ambiguous; possibilities: ${list}` };
      }
      const spec = candidates[0]!;
      let value = "";
      if (spec.takesArg) {
        if (eq >= 0) value = arg.slice(eq + 1);
        else if (i + 1 < argv.length) value = argv[++i]!;
        else return { kind: "error", message: `option '${flag(spec)}' requires an argument` };
      } else if (eq >= 0) {
        return { kind: "error", message: `option '${flag(spec)}' doesn't allow an argument` };
      }
      const result = apply(spec, value);
      if (result) return result;
      continue;
    }
    if (arg.startsWith("-") && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const letter = arg[j]!;
        const spec = OPTIONS.find((o) => o.short === letter);
        if (!spec) return { kind: "error", message: `invalid option -- '${letter}'` };
        let value = "";
        if (spec.takesArg) {
          if (j + 1 < arg.length) value = arg.slice(j + 1);
          else if (i + 1 < argv.length) value = argv[++i]!;
          else return { kind: "error", message: `option requires an argument -- '${letter}'` };
          j = arg.length;
        }
        const result = apply(spec, value);
        if (result) return result;
      }
      continue;
    }
    operands.push(arg);
  }

  if (operands.length !== 1) return { kind: "error", message: "Invalid number of arguments" };
  if (opts.socketPath === undefined) {
    const port = PORT_PATTERN.test(portText) ? Number(portText) : NaN;
    if (!(port >= 0 && port <= 65535)) {
      return {
        kind: "error",
        message: `address resolution failed for ${opts.bind}:${portText}: Servname not supported for ai_socktype`,
      };
    }
    opts.port = port;
  }
  if (tlsFlags.psk !== undefined && (tlsFlags.cert !== undefined || tlsFlags.key !== undefined)) {
    return { kind: "error", message: "--tls-psk cannot be combined with --tls-cert/--tls-key" };
  }
  if ((tlsFlags.cert === undefined) !== (tlsFlags.key === undefined)) {
    return { kind: "error", message: "--tls-cert and --tls-key must be given together" };
  }
  if (tlsFlags.ca !== undefined && tlsFlags.cert === undefined) {
    return { kind: "error", message: "--tls-ca needs --tls-cert and --tls-key" };
  }
  if (tlsFlags.psk !== undefined) opts.tls = { kind: "psk", pskFile: tlsFlags.psk };
  else if (tlsFlags.cert !== undefined && tlsFlags.key !== undefined) {
    opts.tls = {
      kind: "x509",
      certFile: tlsFlags.cert,
      keyFile: tlsFlags.key,
      verifyPeer: tlsFlags.ca !== undefined,
      ...(tlsFlags.ca !== undefined ? { caFile: tlsFlags.ca } : {}),
    };
  }
  if (opts.tls && opts.tlsCredsId !== undefined) {
    return { kind: "error", message: "--tls-creds cannot be combined with --tls-cert/--tls-key/--tls-psk" };
  }
  return { kind: "run", options: { ...opts, file: operands[0]! } };
}

export const HELP_TEXT = `Usage: qnbd [OPTIONS] FILE
Serve a disk image over NBD (qemu-nbd compatible).

  -h, --help                this text
  -V, --version             the version

Where and whom to serve:
  -p, --port=PORT           TCP port (10809 unless given)
  -b, --bind=IFACE          listen on this address only (all addresses, 0.0.0.0,
                            unless given)
  -k, --socket=PATH         listen on a Unix socket instead of TCP
  -e, --shared=NUM          serve up to NUM clients at once (default 1, 0 = no limit)
  -t, --persistent          keep running after the last client disconnects
  -v, --verbose             log connections and errors to stderr
  -x, --export-name=NAME    the name clients ask for (empty unless given)
  -D, --description=TEXT    a line of text clients may show for the export
      --handshake-limit=N   seconds a client may take to finish the handshake
                            (default 10, 0 = no limit)

Extra metadata for clients:
  -A, --allocation-depth    offer the qemu:allocation-depth metadata context
  -B, --bitmap=NAME         offer a persistent dirty bitmap (repeatable)

TLS:
      --tls-cert=FILE       server certificate (PEM), with --tls-key
      --tls-key=FILE        server private key (PEM)
      --tls-ca=FILE         CA certificate: require and verify client certificates
      --tls-psk=FILE        pre-shared keys, 'username:hexkey' lines (psktool format)
      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]
      --object tls-creds-psk,id=ID,dir=DIR,endpoint=server
      --tls-creds=ID        use the credentials defined by --object

Process:
      --fork                run in the background once the server is listening
      --pid-file=PATH       write the server's process ID to PATH

The image:
  -f, --format=FORMAT       image format (raw, qcow2); probed when absent
  -r, --read-only           clients may read but not write
  -n, --nocache             same as --cache=none
      --cache=MODE          none, writeback (default), writethrough, directsync, unsafe
      --discard=MODE        ignore (default) or unmap
      --safe                untrusted image: no format probing, and data/backing
                            file names must be relative, without '..'
      --trust-references    follow data/backing file names stored in the image
                            anywhere (by default the files must lie in its folder)
      --locking=on|off      image locking (default on; off = QEMU's file.locking=off)
`;
