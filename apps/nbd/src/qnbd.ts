#!/usr/bin/env node
/**
 * qnbd: serve a disk image over NBD, with qemu-nbd's command line. Errors are one line `${PROG}: ...` and
 * exit status 1. SIGTERM/SIGINT/SIGHUP stop accepting, let requests in flight finish, flush and close the
 * image. With --fork the parent exits once the (detached) server is listening.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { isQcow2Error } from "@qcowkit/spec";
import { loadSnapshotReadOnly } from "@qcowkit/core/internal";
import { HELP_TEXT, parseCommandLine, type QnbdOptions } from "./cli-args";
import type { BlockImage } from "./device";
import { openExport } from "./open";
import { systemErrorText as errnoText } from "@qcowkit/datafile/node";
import { NbdServer, createExportConfig } from "./server";
import { TlsSetupError, loadTlsOptions, parseTlsObject, type TlsCredentials } from "./tls";
import type * as tls from "node:tls";
import pkg from "../package.json";

/** Started through a link or alias named `qemu-nbd`, qnbd names itself as QEMU's tool does (messages, --version). */
const QEMU_NAME = path.basename(process.argv[1] ?? "").replace(/\.m?js$/, "") === "qemu-nbd";
const PROG = QEMU_NAME ? "qemu-nbd" : "qnbd";

/** strerror() wording of a Node system error (its `code`), else its message. */
function systemErrorText(error: unknown): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  const text = typeof code === "string" ? errnoText(code) : undefined;
  return text ?? (error instanceof Error ? error.message : String((error as { message?: unknown })?.message ?? error));
}

/** Set in the environment of the background child started by --fork. */
const FORK_CHILD_ENV = "QNBD_FORK_CHILD";

class StartupError extends Error {}

/** Messages of a --fork child go to its parent over IPC (the child has no stdio). */
type ChildMessage = { type: "ready" } | { type: "line"; text: string };

function report(line: string): void {
  if (!process.env[FORK_CHILD_ENV]) process.stderr.write(`${line}\n`);
  // A --fork child has no stderr: lines go to the parent until it has returned, then nowhere (as qemu-nbd).
  else if (process.send && process.connected) process.send({ type: "line", text: line } satisfies ChildMessage);
}

async function main(argv: readonly string[]): Promise<number> {
  const parsed = parseCommandLine(argv);
  switch (parsed.kind) {
    case "help":
      process.stdout.write(HELP_TEXT);
      return 0;
    case "version":
      process.stdout.write(
        QEMU_NAME ? `qemu-nbd 7.2.22 (qcowkit ${pkg.version})\n` : `qnbd ${pkg.version} (qcowkit; qemu-nbd 7.2 compatible command line)\n`,
      );
      return 0;
    case "error":
      report(`${PROG}: ${parsed.message}`);
      return 1;
  }
  const options = parsed.options;
  if (options.fork && !process.env[FORK_CHILD_ENV]) return forkServer(argv);
  try {
    await serve(options);
    return -1; // keeps running; exit happens on shutdown
  } catch (error) {
    if (error instanceof StartupError || error instanceof TlsSetupError) report(`${PROG}: ${error.message}`);
    else report(`${PROG}: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  }
}

/** Starts a detached copy of this command and waits until it listens (exit 0) or fails (exit 1). */
function forkServer(argv: readonly string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...argv], {
      detached: true,
      stdio: ["ignore", "ignore", "ignore", "ipc"],
      env: { ...process.env, [FORK_CHILD_ENV]: "1" },
    });
    let settled = false;
    child.on("message", (message: ChildMessage) => {
      if (message.type === "line") process.stderr.write(`${message.text}\n`);
      else if (message.type === "ready" && !settled) {
        settled = true;
        child.disconnect();
        child.unref();
        resolve(0);
      }
    });
    child.on("exit", (code) => {
      if (!settled) {
        settled = true;
        resolve(code === 0 ? 1 : (code ?? 1));
      }
    });
    child.on("error", (error) => {
      if (!settled) {
        settled = true;
        process.stderr.write(`${PROG}: Failed to fork: ${error.message}\n`);
        resolve(1);
      }
    });
  });
}

function resolveTls(options: QnbdOptions): tls.TLSSocketOptions | undefined {
  let creds: TlsCredentials | undefined = options.tls;
  const objects = options.tlsObjects.map(parseTlsObject);
  if (options.tlsCredsId !== undefined) {
    const found = objects.find((o) => o.id === options.tlsCredsId);
    if (!found) throw new StartupError(`Failed to get TLS creds: No TLS credentials with id '${options.tlsCredsId}'`);
    creds = found.creds;
  }
  return creds ? loadTlsOptions(creds) : undefined;
}

/**
 * QCOWKIT_NBD_CONNECTION_MIB: payload and reply bytes one connection may hold before qnbd stops reading its
 * requests (default 4 MiB, `defaultConnectionLimits`). Larger lets a client keep more large requests in flight
 * per connection, at the cost of peak memory (docs/nbd-performance.md).
 */
function connectionBytesFromEnv(): number | undefined {
  const text = process.env.QCOWKIT_NBD_CONNECTION_MIB;
  if (text === undefined || text === "") return undefined;
  const mib = /^\d{1,4}$/.test(text) ? Number(text) : NaN;
  if (!(mib >= 1 && mib <= 1024)) throw new StartupError(`QCOWKIT_NBD_CONNECTION_MIB must be a whole number of MiB from 1 to 1024, not '${text}'`);
  return mib * 1024 * 1024;
}

async function serve(options: QnbdOptions): Promise<void> {
  const connectionBytes = connectionBytesFromEnv();
  const tlsOptions = resolveTls(options);

  let device: BlockImage;
  try {
    device = await openExport(options.file, {
      readOnly: options.readOnly,
      ...(options.format ? { format: options.format } : {}),
      ...(options.discard ? { discard: options.discard } : {}),
      ...(options.safe ? { safe: true } : {}),
      ...(options.trustReferences ? { trustReferences: true } : {}),
      ...(options.locking !== undefined ? { locking: options.locking } : {}),
    });
  } catch (error) {
    const message = isQcow2Error(error) || error instanceof Error ? error.message : String(error);
    throw new StartupError(`Failed to blk_new_open '${options.file}': ${message}`);
  }
  if (options.loadSnapshot) {
    try {
      await loadSnapshotReadOnly(device, options.loadSnapshot);
    } catch (error) {
      await device.close().catch(() => undefined);
      throw new StartupError(`Failed to load snapshot: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  if (options.format === undefined && device.format === "raw") {
    report(
      `WARNING: Image format was not specified for '${options.file}' and probing guessed raw.\n` +
        "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
        "         Specify the 'raw' format explicitly to remove the restrictions.",
    );
  }
  try {
    const known = (await device.listBitmaps?.()) ?? [];
    for (const name of options.bitmaps) {
      if (!known.some((b) => b.name === name)) throw new StartupError(`Bitmap '${name}' is not found`);
    }

    const log = options.verbose ? (m: string) => report(`${PROG}: ${m}`) : undefined;
    const server = new NbdServer({
      export: createExportConfig({
        device,
        name: options.exportName,
        description: options.description,
        readOnly: options.readOnly,
        allocationDepth: options.allocationDepth,
        bitmaps: options.bitmaps,
        discard: options.discard,
        cache: options.cache,
        multiConn: options.shared !== 1,
      }),
      shared: options.shared,
      limits: { handshakeTimeoutMs: options.handshakeLimitSeconds * 1000, ...(connectionBytes ? { maxConnectionBytes: connectionBytes } : {}) },
      ...(tlsOptions ? { tls: tlsOptions } : {}),
      ...(log ? { log } : {}),
    });

    await listen(server, options);
    if (options.pidFile !== undefined) writePidFile(options.pidFile);

    let stopping = false;
    const stop = async (reason: string) => {
      if (stopping) return;
      stopping = true;
      log?.(reason);
      let code = 0;
      await server.close();
      try {
        if (!device.readOnly) await device.flush();
      } catch (error) {
        report(`${PROG}: flush failed: ${error instanceof Error ? error.message : String(error)}`);
        code = 1;
      }
      await device.close().catch(() => {});
      if (options.pidFile !== undefined) removePidFile(options.pidFile);
      process.exit(code);
    };
    for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
      process.on(signal, () => {
        if (stopping) process.exit(1); // a second signal: give up waiting
        void stop(`received ${signal}`);
      });
    }
    if (!options.persistent) server.on("idle", () => void stop("last client disconnected"));

    if (process.env[FORK_CHILD_ENV] && process.send && process.connected) {
      process.send({ type: "ready" } satisfies ChildMessage, () => process.disconnect());
    }
  } catch (error) {
    await device.close().catch(() => {});
    throw error;
  }
}

async function listen(server: NbdServer, options: QnbdOptions): Promise<void> {
  if (options.socketPath !== undefined) {
    try {
      await server.listenUnix(options.socketPath);
    } catch (error) {
      let code = (error as { code?: string }).code;
      // libuv reports a missing directory as EACCES.
      if (code === "EACCES" && !fs.existsSync(path.dirname(options.socketPath))) code = "ENOENT";
      const text = code === "EADDRINUSE" ? "Address already in use" : systemErrorText({ code, message: String(error) });
      throw new StartupError(`Failed to bind socket to ${options.socketPath}: ${text}`);
    }
    return;
  }
  try {
    await server.listenTcp(options.bind, options.port);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "EAI_FAIL") {
      throw new StartupError(`address resolution failed for ${options.bind}:${options.port}: Name or service not known`);
    }
    const text =
      code === "EADDRINUSE" ? "Address already in use"
      : code === "EADDRNOTAVAIL" ? "Cannot assign requested address"
      : code === "EACCES" ? "Permission denied"
      : systemErrorText(error);
    throw new StartupError(`Failed to find an available port: ${text}`);
  }
}

function writePidFile(file: string): void {
  try {
    fs.writeFileSync(file, `${process.pid}\n`);
  } catch (error) {
    throw new StartupError(`Could not create '${file}': ${systemErrorText(error)}`);
  }
}

function removePidFile(file: string): void {
  try {
    if (fs.readFileSync(file, "utf8").trim() === String(process.pid)) fs.unlinkSync(file);
  } catch {
    // gone or replaced: leave it
  }
}

void main(process.argv.slice(2)).then((code) => {
  if (code >= 0) process.exit(code);
});
