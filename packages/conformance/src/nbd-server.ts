import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { exitStatus } from "./process";

/** An NBD server started by a case (`nbd_start`), stopped by `nbd_stop` or when the case ends. */
export interface NbdServer {
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Resolves with the exit status once the process is gone. */
  readonly exited: Promise<number>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Starts the server and waits (bounded) until its Unix socket exists. Connecting to probe would count as a
 * client, and a server started without --persistent stops after its first client, so the probe only looks
 * for the socket file.
 */
export async function startNbdServer(
  argv: readonly string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; socketPath: string; logPath: string; timeoutMs: number },
): Promise<{ server?: NbdServer; error?: string }> {
  const fd = openSync(opts.logPath, "w");
  let child: ChildProcess;
  try {
    child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd, env: opts.env, stdio: ["ignore", fd, fd] });
  } catch (e) {
    closeSync(fd);
    return { error: `${argv[0]}: ${(e as Error).message}` };
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
  while (!existsSync(opts.socketPath)) {
    if (status !== undefined) {
      const log = readFileSync(opts.logPath, "utf8");
      return { error: `${spawnError ? `${argv[0]}: ${spawnError}\n` : ""}${log}server exited with status ${status}` };
    }
    if (Date.now() > deadline) {
      await stopNbdServer(server, 1000);
      return { error: `server did not create its socket within ${opts.timeoutMs} ms` };
    }
    await sleep(20);
  }
  // The socket file appears at bind(); give the server the moment it needs to reach listen().
  await sleep(50);
  return { server };
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
  return { output: readFileSync(server.logPath, "utf8") + note, status };
}
