/**
 * NBD over Node sockets (TCP and Unix): connecting with QEMU's messages for failures ("Failed to connect to
 * '/run/x.sock': No such file or directory", "address resolution failed for h:10809: Name or service not
 * known"), a connect timeout, and the transport the runtime-agnostic client runs on.
 */
import type * as net from "node:net";
import { Qcow2Error } from "@qcowkit/spec";
import { NbdClient, type NbdClientOptions } from "../nbd/client";
import type { NbdReceiver, NbdTransport } from "../nbd/transport";
import { addressText, parseNbdFilename, type NbdAddress, type NbdLocation } from "../nbd/uri";

/** strerror() texts of the errors a connection meets. */
const socketErrorText: Readonly<Record<string, string>> = {
  ENOENT: "No such file or directory",
  ECONNREFUSED: "Connection refused",
  EACCES: "Permission denied",
  EPERM: "Operation not permitted",
  ETIMEDOUT: "Connection timed out",
  EHOSTUNREACH: "No route to host",
  ENETUNREACH: "Network is unreachable",
  ECONNRESET: "Connection reset by peer",
  EPIPE: "Broken pipe",
  ENOTSOCK: "Socket operation on non-socket",
  EADDRNOTAVAIL: "Cannot assign requested address",
  ENOTDIR: "Not a directory",
  ENAMETOOLONG: "File name too long",
  EAI_AGAIN: "Temporary failure in name resolution",
  ENOTFOUND: "Name or service not known",
  EAI_NONAME: "Name or service not known",
};

function errorText(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string" && socketErrorText[code]) return socketErrorText[code];
  return e instanceof Error ? e.message.split("\n", 1)[0]! : String(e);
}

const DEFAULT_CONNECT_TIMEOUT_MS = 30_000;

/** A connected socket as an NbdTransport. */
class SocketTransport implements NbdTransport {
  constructor(private readonly socket: net.Socket) {}

  send(data: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(data);
  }

  drained(): Promise<void> {
    if (!this.socket.writableNeedDrain || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off("drain", done);
        this.socket.off("close", done);
        resolve();
      };
      this.socket.on("drain", done);
      this.socket.on("close", done);
    });
  }

  start(receiver: NbdReceiver): void {
    let failure: Error | undefined;
    this.socket.on("data", (chunk: Uint8Array) => receiver.data(chunk));
    this.socket.on("error", (e) => {
      failure ??= new Error(errorText(e));
    });
    this.socket.on("close", () => receiver.end(failure));
  }

  end(): Promise<void> {
    if (this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      this.socket.once("close", () => resolve());
      // Hang up once what is queued (NBD_CMD_DISC) has gone out.
      this.socket.end(() => this.socket.destroy());
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Connect a socket to `address`; failures read as QEMU's. */
export async function connectNbdSocket(address: NbdAddress, opts: { timeoutMs?: number } = {}): Promise<NbdTransport> {
  const where = addressText(address);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  if (address.kind === "unix") {
    if (address.path === "") throw connectError(where, "Connection refused", "ECONNREFUSED");
    return new SocketTransport(await connectSocket({ path: address.path }, where, timeoutMs));
  }
  let addresses: string[];
  try {
    const { lookup } = await import("node:dns/promises");
    addresses = (await lookup(address.host, { all: true })).map((a) => a.address);
  } catch (e) {
    throw new Qcow2Error("IO_ERROR", `address resolution failed for ${where}: ${errorText(e)}`, { errno: "EIO", cause: e });
  }
  // Every address the name resolves to is tried in turn; the last failure is reported.
  let failure: unknown;
  for (const host of addresses) {
    try {
      return new SocketTransport(await connectSocket({ host, port: Number(address.port) }, where, timeoutMs));
    } catch (e) {
      failure = e;
    }
  }
  throw failure ?? connectError(where, "Name or service not known");
}

async function connectSocket(options: net.NetConnectOpts, where: string, timeoutMs: number): Promise<net.Socket> {
  // node:net and node:dns are loaded on the first NBD connection, not by every program that links the core.
  const { connect } = await import("node:net");
  const socket = connect(options);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = timeoutMs > 0 ? setTimeout(() => reject(Object.assign(new Error("timeout"), { code: "ETIMEDOUT" })), timeoutMs) : undefined;
      socket.once("connect", () => {
        if (timer) clearTimeout(timer);
        resolve();
      });
      socket.once("error", (e) => {
        if (timer) clearTimeout(timer);
        reject(e);
      });
    });
  } catch (e) {
    socket.destroy();
    const code = (e as { code?: unknown }).code;
    throw connectError(where, errorText(e), typeof code === "string" ? code : undefined, e);
  }
  if (!("path" in options)) socket.setNoDelay(true);
  return socket;
}

function connectError(where: string, text: string, code?: string, cause?: unknown): Qcow2Error {
  const errno = code === "ENOENT" ? "ENOENT" : code === "EACCES" ? "EACCES" : "EIO";
  return new Qcow2Error(errno === "ENOENT" ? "NOT_FOUND" : "IO_ERROR", `Failed to connect to '${where}': ${text}`, {
    errno,
    ...(cause !== undefined ? { cause } : {}),
  });
}

export interface OpenNbdOptions extends Omit<NbdClientOptions, "exportName"> {
  /** Milliseconds to wait for the connection itself (default 30 000; 0: the system's own limit). */
  connectTimeoutMs?: number;
}

/** Connect to the export an NBD name (URI or legacy form) designates and negotiate. */
export async function connectNbd(name: string | NbdLocation, opts: OpenNbdOptions = {}): Promise<{ client: NbdClient; location: NbdLocation }> {
  const location = typeof name === "string" ? parseNbdFilename(name) : name;
  const transport = await connectNbdSocket(location.address, {
    ...(opts.connectTimeoutMs !== undefined ? { timeoutMs: opts.connectTimeoutMs } : {}),
  });
  const { connectTimeoutMs: _unused, ...clientOpts } = opts;
  const client = await NbdClient.connect(transport, { ...clientOpts, exportName: location.exportName });
  return { client, location };
}
