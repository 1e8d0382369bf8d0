/**
 * The NBD client against the reference server (qemu-nbd 7.2) and against our own qnbd: reads (sparse reads
 * come back as hole chunks), writes, zero writes, trims and flushes land in the exported image, block status
 * matches `qemu-img map`, read-only exports, export names, TCP and Unix sockets, qcow2 images stored on an
 * export; QEMU's messages for bad names and failed connections (qemu-img is the oracle); and scripted
 * misbehaving servers, which must give a one-line error and never a hang.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import * as net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { isQcow2Error } from "@qcowkit/spec";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";
import { NbdClient } from "../src/nbd/client";
import { BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH } from "@qcowkit/nbd-protocol";
import { NbdImage } from "../src/nbd/nbd-image";
import type { NbdReceiver, NbdTransport } from "../src/nbd/transport";
import { parseNbdFilename } from "../src/nbd/uri";
import { connectNbd, createImage, imageInfo, openImage, type BlockImage } from "../src/node";
import { qemu, qemuStatus, tempDir } from "./helpers";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const qnbdBin = join(root, "apps", "nbd", "bin", "qnbd.js");
const t = tempDir("qcowkit-nbd-client-");
afterAll(() => t.cleanup());
let counter = 0;

type ServerKind = "qemu-nbd" | "qnbd";
const running: ChildProcess[] = [];

afterEach(async () => {
  for (const p of running.splice(0)) await stopProcess(p);
});

async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    p.once("exit", () => resolve());
    p.kill("SIGTERM");
  });
}

function canConnect(options: net.NetConnectOpts): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(options);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Serve `image` on a fresh Unix socket (or a TCP port) with qemu-nbd or qnbd; resolves once it accepts connections. */
async function serve(
  kind: ServerKind,
  image: string,
  args: string[] = [],
  opts: { port?: number } = {},
): Promise<{ url: string; socket: string; stop: () => Promise<void> }> {
  const socket = t.path(`s${++counter}.sock`);
  const where = opts.port !== undefined ? ["-p", String(opts.port), "-b", "127.0.0.1"] : ["-k", socket];
  const p =
    kind === "qemu-nbd"
      ? spawn("qemu-nbd", [...args, "-t", ...where, image], { stdio: ["ignore", "ignore", "pipe"] })
      : spawn(process.execPath, [qnbdBin, ...args, "-t", ...where, image], { stdio: ["ignore", "ignore", "pipe"] });
  running.push(p);
  let stderr = "";
  p.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const target: net.NetConnectOpts = opts.port !== undefined ? { host: "127.0.0.1", port: opts.port } : { path: socket };
  for (let i = 0; ; i++) {
    if (p.exitCode !== null) throw new Error(`${kind} exited: ${stderr}`);
    if ((opts.port !== undefined || existsSync(socket)) && (await canConnect(target))) break;
    if (i > 200) throw new Error(`${kind} did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { url: `nbd+unix:///?socket=${socket}`, socket, stop: () => stopProcess(p) };
}

/** A qcow2 image with data, a zero cluster, a compressed cluster and unallocated space (4 MiB). */
function sampleImage(): string {
  const path = t.path(`i${++counter}.qcow2`);
  qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
  qemu("qemu-io", ["-c", "write -P 0x11 0 1M", "-c", "write -z 1M 64k", "-c", "write -c -P 0x22 2M 64k", "-c", "write -P 0x33 3M 512", path]);
  return path;
}

function expectBytes(buf: Uint8Array, value: number): void {
  const wrong = buf.findIndex((b) => b !== value);
  expect(wrong, `byte ${wrong} is ${buf[wrong]}, expected ${value}`).toBe(-1);
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The message qemu-img prints after "Could not open 'NAME': " (and its further lines). */
function qemuOpenError(name: string): string {
  const r = qemuStatus("qemu-img", ["info", name]);
  expect(r.status).toBe(1);
  const prefix = `qemu-img: Could not open '${name}': `;
  expect(r.stderr.startsWith(prefix)).toBe(true);
  return r.stderr.slice(prefix.length).trimEnd();
}

/** Our open failure as qemu-img prints it: message, then the hint line(s). */
async function ourOpenError(name: string, opts: { readOnly?: boolean } = {}): Promise<string> {
  try {
    const img = await openImage(name, { readOnly: opts.readOnly ?? true });
    await img.close();
  } catch (e) {
    expect(isQcow2Error(e)).toBe(true);
    const hint = (e as { hint?: string }).hint;
    return hint !== undefined ? `${(e as Error).message}\n${hint}` : (e as Error).message;
  }
  throw new Error(`${name} opened`);
}

beforeAll(() => {
  // qnbd runs from its build.
  buildWithDependencies("@qcowkit/nbd");
}, 600_000);

describe.each<ServerKind>(["qemu-nbd", "qnbd"])("against %s", (kind) => {
  it("reads the export as the image reads (sparse parts as zeros), in pipelined requests", async () => {
    const img = sampleImage();
    const { url } = await serve(kind, img, ["-f", "qcow2", "-r"]);
    const image = await openImage(url, { format: "raw", readOnly: true });
    try {
      expect(image).toBeInstanceOf(NbdImage);
      expect(image.format).toBe("raw");
      expect(image.virtualSize).toBe(4 * 1024 * 1024);
      const all = new Uint8Array(4 * 1024 * 1024);
      await image.read(0, all);
      expectBytes(all.subarray(0, 1 << 20), 0x11);
      expectBytes(all.subarray(1 << 20, 2 << 20), 0);
      expectBytes(all.subarray(2 << 20, (2 << 20) + 65536), 0x22);
      expectBytes(all.subarray((2 << 20) + 65536, 3 << 20), 0);
      expectBytes(all.subarray(3 << 20, (3 << 20) + 512), 0x33);
      expectBytes(all.subarray((3 << 20) + 512), 0);
      // Many small unaligned reads at once, answered in any order.
      const reads = Array.from({ length: 64 }, (_, i) => {
        const offset = i * 65536 + 7;
        const buf = new Uint8Array(1000);
        return image.read(offset, buf).then(() => ({ offset, buf }));
      });
      for (const { offset, buf } of await Promise.all(reads)) {
        expect(Buffer.from(buf).equals(Buffer.from(all.subarray(offset, offset + 1000)))).toBe(true);
      }
      await expect(image.read(4 * 1024 * 1024 - 100, new Uint8Array(200))).rejects.toMatchObject({ code: "OUT_OF_BOUNDS" });
    } finally {
      await image.close();
    }
  });

  it("block status matches qemu-img map of the export", async () => {
    const img = sampleImage();
    const { url } = await serve(kind, img, ["-f", "qcow2", "-r"]);
    const image = await openImage(url, { format: "raw", readOnly: true });
    let ours;
    try {
      ours = await image.blockStatus(0, image.virtualSize);
    } finally {
      await image.close();
    }
    const theirs = JSON.parse(qemu("qemu-img", ["map", "-f", "raw", "--output=json", url])) as Record<string, unknown>[];
    expect(ours.map((e) => ({ start: e.offset, length: e.length, data: e.data, zero: e.zero, present: e.present, depth: e.depth, offset: e.hostOffset }))).toEqual(
      theirs.map((e) => ({ start: e.start, length: e.length, data: e.data, zero: e.zero, present: e.present, depth: e.depth, offset: e.offset })),
    );
    // Not a single extent: the export has holes and data.
    expect(ours.some((e) => e.data) && ours.some((e) => !e.data)).toBe(true);
  });

  it("writes, zero writes, trims and flushes land in the exported image", async () => {
    const img = t.path(`w${++counter}.qcow2`);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    qemu("qemu-io", ["-c", "write -P 0x77 0 4M", img]);
    const server = await serve(kind, img, ["-f", "qcow2", "--discard=unmap"]);
    const image = await openImage(server.url, { format: "raw" });
    try {
      expect(image.readOnly).toBe(false);
      await image.write(0, new Uint8Array(128 * 1024).fill(0x33));
      await image.write(1 << 20, new Uint8Array(65536).fill(0x44), { fua: true });
      await image.write(5, new Uint8Array(3).fill(0x55)); // unaligned
      await image.writeZeroes(64 * 1024, 64 * 1024); // stays allocated
      await image.writeZeroes(2 << 20, 1 << 20, { unmap: true });
      await image.discard(3 << 20, 1 << 20);
      await image.flush();
    } finally {
      await image.close();
    }
    await server.stop();
    qemu("qemu-io", [
      "-c", "read -P 0x33 0 5",
      "-c", "read -P 0x55 5 3",
      "-c", "read -P 0x33 8 65528",
      "-c", "read -P 0 64k 64k",
      "-c", "read -P 0x77 128k 896k",
      "-c", "read -P 0x44 1M 64k",
      "-c", "read -P 0x77 1088k 960k",
      "-c", "read -P 0 2M 1M",
      img,
    ]);
    // The discarded range reads as zeros or keeps its data (a discard is a hint), never anything else.
    const tail = new Uint8Array(1 << 20);
    const check = await openImage(img, { readOnly: true });
    try {
      await check.read(3 << 20, tail);
    } finally {
      await check.close();
    }
    expect(tail.every((b) => b === 0) || tail.every((b) => b === 0x77)).toBe(true);
    const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", img])) as { start: number; length: number; data: boolean; zero: boolean }[];
    const at = (offset: number) => map.find((e) => e.start <= offset && offset < e.start + e.length)!;
    expect(at(2 << 20).data).toBe(false);
    expect(at(2 << 20).zero).toBe(true);
    expect(qemuStatus("qemu-img", ["check", img]).status).toBe(0);
  });

  it("a read-only export refuses a read-write open as QEMU does, and reads when opened read-only", async () => {
    const img = sampleImage();
    const { url } = await serve(kind, img, ["-f", "qcow2", "-r"]);
    const q = qemuStatus("qemu-io", ["-f", "raw", "-c", "write 0 512", url]);
    expect(q.stderr).toContain("Could not open image: Permission denied");
    await expect(openImage(url, { format: "raw" })).rejects.toMatchObject({
      message: "Could not open image: Permission denied",
      errno: "EACCES",
    });
    const image = await openImage(url, { readOnly: true });
    try {
      expect(image.readOnly).toBe(true);
      await expect(image.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: "READ_ONLY" });
      const buf = new Uint8Array(512);
      await image.read(0, buf);
      expectBytes(buf, 0x11);
    } finally {
      await image.close();
    }
  });

  it("opens a named export, refuses other names with the server's message", async () => {
    const img = sampleImage();
    const { socket } = await serve(kind, img, ["-f", "qcow2", "-r", "-x", "disk one"]);
    for (const name of [`nbd+unix:///disk%20one?socket=${socket}`, `nbd:unix:${socket}:exportname=disk one`]) {
      const image = await openImage(name, { readOnly: true });
      try {
        expect(image.filename).toBe(`nbd+unix:///disk one?socket=${socket}`);
        const buf = new Uint8Array(16);
        await image.read(0, buf);
        expectBytes(buf, 0x11);
      } finally {
        await image.close();
      }
    }
    const wrong = `nbd+unix:///other?socket=${socket}`;
    const message = await ourOpenError(wrong);
    expect(message.split("\n")[0]).toBe("Requested export not available");
    expect(message).toMatch(/^server reported: .*other/m);
    if (kind === "qemu-nbd") expect(message).toBe(qemuOpenError(wrong));
  });

  it("speaks TCP: nbd://HOST:PORT/", async () => {
    const img = sampleImage();
    const port = await freePort();
    await serve(kind, img, ["-f", "qcow2", "-r"], { port });
    for (const name of [`nbd://127.0.0.1:${port}/`, `nbd+tcp://localhost:${port}`, `nbd:127.0.0.1:${port}`]) {
      const image = await openImage(name, { readOnly: true });
      try {
        expect(image.filename).toBe(name.includes("localhost") ? `nbd://localhost:${port}` : `nbd://127.0.0.1:${port}`);
        const buf = new Uint8Array(1 << 20);
        await image.read(0, buf);
        expectBytes(buf, 0x11);
      } finally {
        await image.close();
      }
    }
  });

  it("opens a qcow2 image stored on a raw export (probed, as QEMU probes it)", async () => {
    const img = sampleImage();
    const { url } = await serve(kind, img, ["-f", "raw"]);
    const image = await openImage(url, { readOnly: false });
    try {
      expect(image.format).toBe("qcow2");
      const info = await imageInfo(image, { filename: url });
      expect(info.filename).toBe(url.replace("///", "//"));
      expect(info["actual-size"]).toBeUndefined();
      await image.write(512 * 1024, new Uint8Array(4096).fill(0x99));
      const buf = new Uint8Array(4096);
      await image.read(2 << 20, buf);
      expectBytes(buf, 0x22);
    } finally {
      await image.close();
    }
    expect(qemuStatus("qemu-img", ["check", "-f", "qcow2", url]).status).toBe(0);
    qemu("qemu-io", ["-f", "qcow2", "-r", "-c", "read -P 0x99 512k 4k", url]);
  });
});

describe("against qemu-nbd only", () => {
  it("qemu:allocation-depth gives present and depth through a backing chain", async () => {
    const base = t.path(`b${++counter}.qcow2`);
    const top = t.path(`top${counter}.qcow2`);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    qemu("qemu-io", ["-c", "write -P 1 0 256k", base]);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "1M"]);
    qemu("qemu-io", ["-c", "write -P 2 512k 128k", top]);
    const { url } = await serve("qemu-nbd", top, ["-f", "qcow2", "-r", "-A"]);
    const { client, location } = await connectNbd(url, { metaContexts: [BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH] });
    expect(client.hasContext(QEMU_ALLOCATION_DEPTH)).toBe(true);
    const image = await NbdImage.open(client, { filename: location.displayName, readOnly: true, allocationDepth: true });
    let extents;
    try {
      extents = await image.blockStatus(0, image.virtualSize);
    } finally {
      await image.close();
    }
    const map = JSON.parse(qemu("qemu-img", ["map", "--output=json", top])) as { start: number; length: number; present: boolean; depth: number }[];
    const presentRuns = (runs: { start: number; length: number; present: boolean; depth: number }[]) =>
      runs.filter((r) => r.present).map((r) => ({ start: r.start, length: r.length, depth: r.depth }));
    expect(presentRuns(extents.map((e) => ({ start: e.offset, length: e.length, present: e.present, depth: e.depth })))).toEqual(presentRuns(map));
  });

  it("a qcow2 overlay reads through a backing file on an NBD export", async () => {
    const img = sampleImage();
    const { url } = await serve("qemu-nbd", img, ["-f", "qcow2", "-r"]);
    const overlay = t.path(`o${++counter}.qcow2`);
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-b", url, "-F", "raw", overlay]);
    const image = await openImage(overlay);
    try {
      await image.write(0, new Uint8Array(4096).fill(0x44));
      const buf = new Uint8Array(1 << 20);
      await image.read(0, buf);
      expectBytes(buf.subarray(0, 4096), 0x44);
      expectBytes(buf.subarray(4096), 0x11);
      const extents = await image.blockStatus(2 << 20, 65536);
      expect(extents).toMatchObject([{ depth: 1, present: true, data: true }]);
    } finally {
      await image.close();
    }
    qemu("qemu-io", ["-c", "read -P 0x44 0 4k", "-c", "read -P 0x22 2M 64k", overlay]);
  });

  it("create and convert write over an export as qemu-img does (no zero init: stale data is overwritten)", async () => {
    const target = t.path(`c${++counter}.raw`);
    qemu("qemu-img", ["create", "-q", "-f", "raw", target, "4M"]);
    qemu("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 0 4M", target]);
    const { url } = await serve("qemu-nbd", target, ["-f", "raw"]);
    await expect(createImage(url, { format: "raw", size: 8 << 20 })).rejects.toThrow("Cannot grow NBD nodes");
    await createImage(url, { format: "raw", size: 1 << 20 });
    qemu("qemu-io", ["-f", "raw", "-c", "read -P 0 0 512", "-c", "read -P 0x5a 512 512", url]);
    await createImage(url, { format: "qcow2", size: 1 << 20 });
    const info = JSON.parse(qemu("qemu-img", ["info", "--output=json", url])) as { format: string; "virtual-size": number };
    expect(info.format).toBe("qcow2");
    expect(info["virtual-size"]).toBe(1 << 20);
  });
});

describe("names and connection failures read as qemu-img's", () => {
  it("bad names get QEMU's message", async () => {
    const names = [
      "nbd://",
      "nbd:///export",
      "nbd+unix:///export",
      "nbd+unix://host/export?socket=/x",
      "nbd+unix:///?socket=/x&a=b",
      "nbd+unix:///?sockets=/x",
      "nbd://127.0.0.1:10809/export?x=1",
      "nbd://127.0.0.1:99999/",
      "nbd://127.0.0.1:abc/",
      "nbd:",
      "nbd:localhost",
      "nbd:unix:/x:exportname=",
      "nbd:localhost:abc",
      "nbd+unix:foo",
    ];
    for (const name of names) expect(await ourOpenError(name), name).toBe(qemuOpenError(name));
  });

  it("a missing socket, a closed port and an unknown host fail as QEMU's do", async () => {
    const port = await freePort();
    const names = [
      `nbd+unix:///?socket=${t.path("missing.sock")}`,
      `nbd+unix:///x?socket=${t.path("missing%20too.sock")}`,
      `nbd:unix:${t.path("missing.sock")}`,
      `nbd://127.0.0.1:${port}/`,
      `nbd:127.0.0.1:${port}:exportname=x`,
      "nbd://nonexistent.invalid/",
    ];
    for (const name of names) expect(await ourOpenError(name), name).toBe(qemuOpenError(name));
    expect(await ourOpenError(`nbd+unix:///?socket=${t.path("missing.sock")}`)).toMatch(/^Failed to connect to '.*missing\.sock': No such file or directory$/);
  });

  it("canonical names are QEMU's", () => {
    expect(parseNbdFilename("nbd+unix:///?socket=/run/a.sock").displayName).toBe("nbd+unix://?socket=/run/a.sock");
    expect(parseNbdFilename("nbd+unix:///e%2Fx?socket=/run/a%20b.sock")).toMatchObject({
      exportName: "e/x",
      address: { kind: "unix", path: "/run/a b.sock" },
      displayName: "nbd+unix:///e/x?socket=/run/a b.sock",
    });
    expect(parseNbdFilename("nbd://[::1]/e").displayName).toBe("nbd://::1:10809/e");
    expect(parseNbdFilename("nbd+tcp://user@h:1234/#frag").displayName).toBe("nbd://h:1234");
    expect(parseNbdFilename("nbd:[::1]:10809:exportname=e").displayName).toBe("nbd://::1:10809/e");
    expect(parseNbdFilename("nbd:unix:/s:exportname=e").displayName).toBe("nbd+unix:///e?socket=/s");
  });
});

/**
 * A scripted server on an in-memory transport: a fixed newstyle handshake (structured replies, base:allocation,
 * NBD_OPT_GO) for an export of `size` bytes, then `onRequest` decides what each request gets.
 */
class ScriptedServer implements NbdTransport {
  private receiver: NbdReceiver | undefined;
  private input = Buffer.alloc(0);
  private phase: "flags" | "options" | "transmission" = "flags";
  sentByClient: Buffer[] = [];
  ended = false;

  constructor(
    private readonly script: {
      size?: number;
      greeting?: Buffer;
      /** Refuse NBD_OPT_GO with this reply type and message. */
      goError?: [number, string];
      /** Milliseconds before each reply goes out. */
      delayMs?: number;
      /** Reply to one request; undefined: stay silent. */
      onRequest?: (req: { type: number; flags: number; cookie: Buffer; offset: number; length: number }) => Buffer | undefined;
    },
  ) {}

  start(receiver: NbdReceiver): void {
    this.receiver = receiver;
    const greeting = this.script.greeting ?? Buffer.concat([Buffer.from("NBDMAGICIHAVEOPT"), Buffer.from([0, 3])]);
    setImmediate(() => receiver.data(new Uint8Array(greeting)));
  }

  send(data: Uint8Array): void {
    this.sentByClient.push(Buffer.from(data));
    this.input = Buffer.concat([this.input, Buffer.from(data)]);
    this.process();
  }

  end(): void {
    this.ended = true;
  }

  destroy(): void {
    this.ended = true;
  }

  private reply(b: Buffer): void {
    const deliver = () => {
      if (!this.ended) this.receiver!.data(new Uint8Array(b));
    };
    if (this.script.delayMs) setTimeout(deliver, this.script.delayMs);
    else setImmediate(deliver);
  }

  private optionReply(option: number, type: number, data = Buffer.alloc(0)): Buffer {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(0x3e889045565a9n, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    return Buffer.concat([h, data]);
  }

  private process(): void {
    for (;;) {
      if (this.phase === "flags") {
        if (this.input.length < 4) return;
        this.input = this.input.subarray(4);
        this.phase = "options";
      } else if (this.phase === "options") {
        if (this.input.length < 16) return;
        const option = this.input.readUInt32BE(8);
        const length = this.input.readUInt32BE(12);
        if (this.input.length < 16 + length) return;
        this.input = this.input.subarray(16 + length);
        if (option === 8) this.reply(this.optionReply(8, 1));
        else if (option === 10) {
          const ctx = Buffer.concat([Buffer.from([0, 0, 0, 7]), Buffer.from("base:allocation")]);
          this.reply(Buffer.concat([this.optionReply(10, 4, ctx), this.optionReply(10, 1)]));
        } else if (option === 7 && this.script.goError) {
          this.reply(this.optionReply(7, this.script.goError[0], Buffer.from(this.script.goError[1])));
        } else if (option === 7) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(0, 0);
          info.writeBigUInt64BE(BigInt(this.script.size ?? 1 << 20), 2);
          info.writeUInt16BE(1 | 4 | 8 | 32 | 64, 10);
          this.reply(Buffer.concat([this.optionReply(7, 3, info), this.optionReply(7, 1)]));
          this.phase = "transmission";
        } else this.reply(this.optionReply(option, 0x80000001));
      } else {
        if (this.input.length < 28) return;
        const req = {
          flags: this.input.readUInt16BE(4),
          type: this.input.readUInt16BE(6),
          cookie: Buffer.from(this.input.subarray(8, 16)),
          offset: Number(this.input.readBigUInt64BE(16)),
          length: this.input.readUInt32BE(24),
        };
        const payload = req.type === 1 ? req.length : 0;
        if (this.input.length < 28 + payload) return;
        this.input = this.input.subarray(28 + payload);
        const answer = this.script.onRequest?.(req);
        if (answer) this.reply(answer);
      }
    }
  }
}

function chunk(cookie: Buffer, type: number, done: boolean, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(done ? 1 : 0, 4);
  h.writeUInt16BE(type, 6);
  cookie.copy(h, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}

function dataChunk(cookie: Buffer, offset: number, data: Buffer, done = true): Buffer {
  const p = Buffer.alloc(8);
  p.writeBigUInt64BE(BigInt(offset));
  return chunk(cookie, 1, done, Buffer.concat([p, data]));
}

function holeChunk(cookie: Buffer, offset: number, length: number, done = false): Buffer {
  const p = Buffer.alloc(12);
  p.writeBigUInt64BE(BigInt(offset));
  p.writeUInt32BE(length, 8);
  return chunk(cookie, 2, done, p);
}

async function failureOf(work: Promise<unknown>): Promise<Error> {
  const started = Date.now();
  try {
    await work;
  } catch (e) {
    expect(Date.now() - started).toBeLessThan(5000);
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).not.toContain("\n");
    return e as Error;
  }
  throw new Error("did not fail");
}

describe("misbehaving servers: a one-line error, never a hang", () => {
  it("assembles reads from data and hole chunks sent out of order", async () => {
    const server = new ScriptedServer({
      onRequest: (r) =>
        r.type === 0
          ? Buffer.concat([
              dataChunk(r.cookie, r.offset + 1024, Buffer.alloc(r.length - 1024, 0xab), false),
              holeChunk(r.cookie, r.offset, 1024),
              chunk(r.cookie, 0, true, Buffer.alloc(0)),
            ])
          : undefined,
    });
    const client = await NbdClient.connect(server, { exportName: "" });
    const buf = new Uint8Array(4096).fill(0xff);
    await client.read(0, buf);
    expectBytes(buf.subarray(0, 1024), 0);
    expectBytes(buf.subarray(1024), 0xab);
    await client.close();
    expect(server.ended).toBe(true);
    // The last thing sent is NBD_CMD_DISC.
    expect(server.sentByClient.at(-1)!.readUInt16BE(6)).toBe(2);
  });

  it("a silent server times out in the handshake and in a request", async () => {
    const silent = new ScriptedServer({ greeting: Buffer.from("NBDMAGIC") });
    const e1 = await failureOf(NbdClient.connect(silent, { exportName: "", timeoutMs: 200 }));
    expect(e1.message).toBe("Failed to read initial magic: No reply from the NBD server within 0.2 s");
    const client = await NbdClient.connect(new ScriptedServer({}), { exportName: "", timeoutMs: 200 });
    const e2 = await failureOf(client.read(0, new Uint8Array(512)));
    expect(e2).toMatchObject({ errno: "EIO" });
    expect(e2.message).toContain("within 0.2 s");
    // The connection is dead: later requests fail at once.
    await expect(client.read(0, new Uint8Array(512))).rejects.toMatchObject({ errno: "EIO" });
    await client.close();
  });

  const broken: [string, (r: { cookie: Buffer; offset: number; length: number }) => Buffer][] = [
    ["a data chunk longer than the read", (r) => dataChunk(r.cookie, r.offset, Buffer.alloc(r.length + 512))],
    ["a chunk outside the request", (r) => dataChunk(r.cookie, r.offset + r.length, Buffer.alloc(1))],
    ["overlapping chunks", (r) => Buffer.concat([holeChunk(r.cookie, r.offset, r.length), dataChunk(r.cookie, r.offset, Buffer.alloc(1))])],
    ["an unknown cookie", (r) => dataChunk(Buffer.alloc(8, 0xee), r.offset, Buffer.alloc(r.length))],
    ["a bad reply magic", () => Buffer.alloc(32, 0x41)],
    ["a huge error message length", (r) => chunk(r.cookie, 0x8001, true, Buffer.from([0, 0, 0, 5, 0xff, 0xff]))],
    ["a simple reply to a structured read", (r) => Buffer.concat([Buffer.from([0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]), r.cookie])],
    ["a block status chunk for a read", (r) => chunk(r.cookie, 5, true, Buffer.from([0, 0, 0, 7, 0, 0, 2, 0, 0, 0, 0, 0]))],
    ["a 4 GiB chunk header", (r) => chunk(r.cookie, 1, true, Buffer.alloc(0)).fill(0xff, 16, 20)],
  ];
  it.each(broken)("%s fails the request and the connection", async (_name, reply) => {
    const client = await NbdClient.connect(new ScriptedServer({ onRequest: (r) => (r.type === 0 ? reply(r) : undefined) }), {
      exportName: "",
      timeoutMs: 2000,
    });
    const e = await failureOf(client.read(0, new Uint8Array(4096)));
    expect(e).toMatchObject({ errno: expect.stringMatching(/^(EIO|EINVAL)$/) });
    expect(client.closed).toBe(true);
    await client.close();
  });

  it("a refused export ends with NBD_OPT_ABORT and QEMU's message, the server's text on the next line", async () => {
    const server = new ScriptedServer({ goError: [0x80000006, "no such\nexport"] });
    const e = await failureOf(NbdClient.connect(server, { exportName: "x" }));
    expect(e.message).toBe("Requested export not available");
    expect((e as { hint?: string }).hint).toBe("server reported: no such export");
    const last = server.sentByClient.at(-1)!;
    expect(last.readUInt32BE(8)).toBe(2);
    expect(server.ended).toBe(true);
  });

  it("close waits for the requests in flight and refuses the queued ones", async () => {
    const server = new ScriptedServer({ delayMs: 20, onRequest: (r) => (r.type === 0 ? dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, 9)) : undefined) });
    const client = await NbdClient.connect(server, { exportName: "", maxInFlight: 2 });
    const reads = Array.from({ length: 6 }, (_, i) => client.read(i * 512, new Uint8Array(512)).then(() => "read", (e: Error) => e.message));
    await client.close();
    const results = await Promise.all(reads);
    expect(results.slice(0, 2)).toEqual(["read", "read"]);
    expect(results.slice(2).every((r) => r === "The NBD connection is closed")).toBe(true);
    expect(server.sentByClient.at(-1)!.readUInt16BE(6)).toBe(2);
  });

  it("an error chunk fails only its request, with the server's errno and message", async () => {
    const server = new ScriptedServer({
      onRequest: (r) => {
        if (r.offset === 0) {
          const msg = Buffer.from("disk on fire");
          const p = Buffer.alloc(6);
          p.writeUInt32BE(28, 0);
          p.writeUInt16BE(msg.length, 4);
          return chunk(r.cookie, 0x8001, true, Buffer.concat([p, msg]));
        }
        return dataChunk(r.cookie, r.offset, Buffer.alloc(r.length, 1));
      },
    });
    const client = await NbdClient.connect(server, { exportName: "" });
    await expect(client.read(0, new Uint8Array(512))).rejects.toMatchObject({ errno: "ENOSPC", message: "disk on fire" });
    const buf = new Uint8Array(512);
    await client.read(512, buf);
    expectBytes(buf, 1);
    await client.close();
  });

  it("block status descriptors are clipped to the request and the status is asked again where it stopped", async () => {
    const server = new ScriptedServer({
      size: 1 << 20,
      onRequest: (r) => {
        if (r.type !== 7) return undefined;
        // 4 KiB of data, then a hole reaching past the request.
        const p = Buffer.alloc(4 + 16);
        p.writeUInt32BE(7, 0);
        p.writeUInt32BE(4096, 4);
        p.writeUInt32BE(0, 8);
        p.writeUInt32BE(r.length + 65536, 12);
        p.writeUInt32BE(3, 16);
        return chunk(r.cookie, 5, true, p);
      },
    });
    const client = await NbdClient.connect(server, { exportName: "" });
    const image = await NbdImage.open(client, { filename: "scripted", readOnly: true });
    const extents = await image.blockStatus(0, 1 << 20);
    expect(extents.map((e) => [e.offset, e.length, e.data, e.zero])).toEqual([
      [0, 4096, true, false],
      [4096, (1 << 20) - 4096, false, true],
    ]);
    await image.close();
  });
});

describe("NbdImage on an export it cannot resize", () => {
  it("resize fails as QEMU's does", async () => {
    const client = await NbdClient.connect(new ScriptedServer({}), { exportName: "" });
    const image: BlockImage = await NbdImage.open(client, { filename: "scripted" });
    await expect(image.resize(2 << 20)).rejects.toThrow("Cannot resize NBD nodes");
    await image.close();
  });
});
