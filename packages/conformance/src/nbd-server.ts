import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { connect } from "node:net";
import { exitStatus, readCapped } from "./process";

/** An NBD server started by a case (`nbd_start`), stopped by `nbd_stop` or when the case ends. */
export interface NbdServer {
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Resolves with the exit status once the process is gone. */
  readonly exited: Promise<number>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const NBD_MAGIC = "NBDMAGICIHAVEOPT";
const NBD_OPT_ABORT = 2;

/**
 * One polite readiness probe: read the newstyle greeting, answer with the client flags, send NBD_OPT_ABORT
 * and wait for the server to close. "ready" only when the greeting arrived; "absent" when nothing listens yet;
 * "closed" when the server hung up without a greeting (it may be failing after creating its socket).
 */
function probeNbd(socketPath: string, timeoutMs: number): Promise<"ready" | "absent" | "closed"> {
  return new Promise((resolve) => {
    const sock = connect(socketPath);
    let got = new Uint8Array(0);
    let greeted = false;
    const finish = (r: "ready" | "absent" | "closed"): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => finish(greeted ? "ready" : "closed"), timeoutMs);
    sock.on("error", (e: NodeJS.ErrnoException) =>
      finish(greeted ? "ready" : e.code === "ENOENT" || e.code === "ECONNREFUSED" ? "absent" : "closed"),
    );
    sock.on("close", () => finish(greeted ? "ready" : "closed"));
    sock.on("data", (chunk: Uint8Array) => {
      if (greeted) return;
      const joined = new Uint8Array(got.length + chunk.length);
      joined.set(got);
      joined.set(chunk, got.length);
      got = joined;
      if (got.length < 18) return;
      if (String.fromCharCode(...got.subarray(0, 16)) !== NBD_MAGIC) return finish("closed");
      greeted = true;
      const reply = new Uint8Array(20);
      const dv = new DataView(reply.buffer);
      // The server's handshake flags (16 bits after the two magics): echo the ones we understand.
      dv.setUint32(0, new DataView(got.buffer, got.byteOffset, got.byteLength).getUint16(16) & 3);
      for (let i = 0; i < 8; i++) reply[4 + i] = NBD_MAGIC.charCodeAt(8 + i);
      dv.setUint32(12, NBD_OPT_ABORT);
      dv.setUint32(16, 0);
      sock.write(reply);
    });
  });
}

/**
 * Starts a persistent server (-t) and waits, bounded, until it answers an NBD greeting on its socket. A
 * server may create its socket before it fails to open the image, so the socket file alone proves nothing.
 */
export async function startNbdServer(
  argv: readonly string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; socketPath: string; logPath: string; timeoutMs: number },
): Promise<{ server?: NbdServer; error?: string }> {
  const fd = openSync(opts.logPath, "w");
  let child: ChildProcess;
  const [program = "", ...args] = argv;
  try {
    if (program === "") throw new Error("empty command");
    child = spawn(program, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", fd, fd] });
  } catch (e) {
    closeSync(fd);
    return { error: `${program}: ${(e as Error).message}` };
  }
  closeSync(fd);
  let status: number | undefined;
  let spawnError: string | undefined;
  const exited = new Promise<number>((resolve) => {
    child.on("error", (e) => {
      spawnError = e.message;
      status = 127;
      resolve(127);
    });
    child.on("exit", (code, signal) => {
      status = exitStatus(code, signal);
      resolve(status);
    });
  });
  const server: NbdServer = { child, logPath: opts.logPath, exited };
  const deadline = Date.now() + opts.timeoutMs;
  const failed = (): { error: string } => {
    const log = readCapped(opts.logPath);
    return { error: `${spawnError ? `${argv[0]}: ${spawnError}\n` : ""}${log}server exited with status ${status}` };
  };
  for (;;) {
    if (status !== undefined) return failed();
    if (Date.now() > deadline) {
      await stopNbdServer(server, 1000);
      return { error: `server did not answer on its socket within ${opts.timeoutMs} ms` };
    }
    const probe = await probeNbd(opts.socketPath, Math.max(100, deadline - Date.now()));
    if (probe === "ready") return { server };
    if (probe === "closed") {
      // Give a failing server the moment it needs to exit, so its message is reported here.
      await Promise.race([exited, sleep(200)]);
    } else {
      await sleep(20);
    }
  }
}

/** SIGTERM, a bounded wait, then SIGKILL. Returns the server's output and exit status. */
export async function stopNbdServer(server: NbdServer, timeoutMs: number): Promise<{ output: string; status: number }> {
  if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const killed = new Promise<"timeout">((r) => {
    timer = setTimeout(() => r("timeout"), timeoutMs);
  });
  let status = await Promise.race([server.exited, killed]);
  clearTimeout(timer);
  let note = "";
  if (status === "timeout") {
    server.child.kill("SIGKILL");
    status = await server.exited;
    note = `server did not exit within ${timeoutMs} ms of SIGTERM\n`;
  }
  return { output: readCapped(server.logPath) + note, status };
}
