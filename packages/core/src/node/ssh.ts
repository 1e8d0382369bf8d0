/**
 * `ssh://[USER@]HOST[:PORT]/PATH` names (QEMU's ssh driver). qcowkit has no SSH client: the host is reached
 * (so an unreachable one fails as QEMU's driver fails, "Failed to connect to 'HOST:PORT': ..."), then the
 * open is refused as not supported.
 */
import { Qcow2Error } from "@qcowkit/spec";
import { connectNbdSocket } from "./nbd-socket";

export function isSshName(name: string): boolean {
  return name.startsWith("ssh://");
}

/** Where an ssh:// name points: host and port (22 when not given). */
export function parseSshName(name: string): { host: string; port: string; path: string } {
  const m = /^ssh:\/\/(?:[^@/]*@)?(\[[^\]]*\]|[^:/]*)(?::(\d*))?(\/.*)?$/.exec(name);
  if (!m || m[1] === "") throw new Qcow2Error("INVALID_ARGUMENT", "Failed to parse ssh URI", { errno: "EINVAL" });
  const host = m[1]!.startsWith("[") ? m[1]!.slice(1, -1) : m[1]!;
  return { host, port: m[2] !== undefined && m[2] !== "" ? String(Number(m[2])) : "22", path: m[3] ?? "/" };
}

export async function openSshImage(name: string, timeoutMs?: number): Promise<never> {
  const { host, port } = parseSshName(name);
  const transport = await connectNbdSocket({ kind: "tcp", host, port }, timeoutMs !== undefined ? { timeoutMs } : {});
  transport.destroy();
  throw new Qcow2Error("NOT_SUPPORTED", "The ssh protocol is not supported", { errno: "ENOTSUP" });
}
