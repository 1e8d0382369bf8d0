/**
 * Block status of qcow2 exports, qnbd against qemu-nbd: nbdinfo --map for base:allocation,
 * qemu:allocation-depth (-A) over a backing chain, and qemu:dirty-bitmap:NAME (-B) for a persistent bitmap,
 * must be identical.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { QNBD_BIN, makeTempDir, run, runOk } from "../helpers";

const tmp = makeTempDir("qnbd-status-");
afterAll(tmp.cleanup);
const started: ChildProcess[] = [];
afterEach(() => {
  for (const c of started.splice(0)) if (c.exitCode === null) c.kill("SIGKILL");
});
const p = (n: string) => path.join(tmp.dir, n);

async function serve(kind: "qemu-nbd" | "qnbd", args: string[]): Promise<string> {
  const sock = p(`${kind}-${Math.random().toString(36).slice(2)}.sock`);
  const argv = ["-k", sock, "-t", "-r", ...args];
  const child = kind === "qnbd" ? spawn(process.execPath, [QNBD_BIN, ...argv], { stdio: "ignore" }) : spawn("qemu-nbd", argv, { stdio: "ignore" });
  started.push(child);
  const deadline = Date.now() + 15_000;
  while (!fs.existsSync(sock)) {
    if (child.exitCode !== null) throw new Error(`${kind} exited ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`${kind} did not start`);
    await new Promise((r) => setTimeout(r, 25));
  }
  // The socket file appears before listen() returns in some servers: give nbdinfo a moment of retries.
  for (let i = 0; i < 40; i++) {
    if ((await run("nbdinfo", ["--size", `nbd+unix:///?socket=${sock}`])).code === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return `nbd+unix:///?socket=${sock}`;
}

async function maps(image: string, extra: string[], context: string): Promise<[string, string]> {
  const q = await serve("qemu-nbd", [...extra, "-f", "qcow2", image]);
  const o = await serve("qnbd", [...extra, "-f", "qcow2", image]);
  const args = context === "base:allocation" ? ["--map"] : [`--map=${context}`];
  return [await runOk("nbdinfo", [...args, q]), await runOk("nbdinfo", [...args, o])];
}

describe("block status of qcow2 exports equals qemu-nbd's", () => {
  it("base:allocation over data, zero clusters, discarded and unallocated ranges", async () => {
    const img = p("a.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "16M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 3M", "-c", "write -z 1M 512k", "-c", "discard 2M 128k", "-c", "write -P 2 9M 64k", img]);
    const [q, o] = await maps(img, [], "base:allocation");
    expect(o).toBe(q);
  });

  it("qemu:allocation-depth over a three-deep backing chain", async () => {
    const base = p("base.qcow2");
    const mid = p("mid.qcow2");
    const top = p("top.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "8M"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 4M", base]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid]);
    await runOk("qemu-io", ["-c", "write -P 2 1M 1M", "-c", "write -z 6M 1M", mid]);
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top]);
    await runOk("qemu-io", ["-c", "write -P 3 1536k 1M", top]);
    const [q, o] = await maps(top, ["-A"], "qemu:allocation-depth");
    expect(o).toBe(q);
    const [qb, ob] = await maps(top, ["-A"], "base:allocation");
    expect(ob).toBe(qb);
  });

  it("qemu:dirty-bitmap:b0 for a persistent bitmap dirtied by qemu-io", async () => {
    const img = p("bm.qcow2");
    await runOk("qemu-img", ["create", "-q", "-f", "qcow2", img, "16M"]);
    await runOk("qemu-img", ["bitmap", "--add", "-g", "65536", img, "b0"]);
    await runOk("qemu-io", ["-c", "write -P 1 0 100k", "-c", "write -P 2 5M 1M", "-c", "write -z 12M 64k", img]);
    const [q, o] = await maps(img, ["-B", "b0"], "qemu:dirty-bitmap:b0");
    expect(o).toBe(q);
    expect(o).toContain("dirty");
  });
});
