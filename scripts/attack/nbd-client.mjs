/**
 * A raw NBD client and qnbd process helpers for the attack script (scripts/attack/nbd.mjs) and the NBD
 * handshake fuzzer (packages/core/test/fuzz/nbd-handshake.mjs): message encoders, a client that completes a
 * handshake and reads, starting the built qnbd, and its memory (/proc/PID/status).
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import * as net from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const qnbdBin = join(root, "apps", "nbd", "bin", "qnbd.js");

export const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};
export const u16 = (n) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
};
/** A 32-bit length, then the string. */
export const str = (s) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);
export const nbdOption = (type, data = Buffer.alloc(0)) => Buffer.concat([Buffer.from("IHAVEOPT"), u32(type), u32(data.length), data]);
export const nbdRequest = (type, offset, length, flags = 0, payload, cookie = 7n) => {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
};

/**
 * Connects, negotiates (fixed newstyle, NO_ZEROES, GO on the default export, simple replies) and resolves with
 * `read(offset, length)` (resolves with the data, rejects on an error reply) and `close()`. Rejects after
 * `timeoutMs` or on an option error.
 */
export function nbdConnect(target, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const s = typeof target === "string" ? net.connect(target) : net.connect(target.port, target.host);
    let got = Buffer.alloc(0);
    let stage = 0;
    let waiting;
    const timer = setTimeout(() => fail(new Error("handshake timed out")), timeoutMs);
    const fail = (e) => {
      clearTimeout(timer);
      s.destroy();
      reject(e);
      waiting?.reject(e);
    };
    s.on("error", fail);
    s.on("close", () => waiting?.reject(new Error("connection closed")));
    s.on("data", (d) => {
      got = Buffer.concat([got, d]);
      if (stage === 0 && got.length >= 18) {
        got = got.subarray(18);
        stage = 1;
        s.write(Buffer.concat([u32(3), nbdOption(7, Buffer.concat([str(""), u16(0)]))]));
      }
      while (stage === 1 && got.length >= 20) {
        const len = got.readUInt32BE(16);
        if (got.length < 20 + len) return;
        const type = got.readUInt32BE(12);
        got = got.subarray(20 + len);
        if (type >= 0x80000000) return fail(new Error(`option error ${type.toString(16)}`));
        if (type === 1) {
          stage = 2;
          clearTimeout(timer);
          resolve({
            socket: s,
            read(offset, length) {
              return new Promise((res, rej) => {
                waiting = { length, resolve: res, reject: rej };
                s.write(nbdRequest(0, offset, length));
              });
            },
            close: () => s.destroy(),
          });
        }
      }
      if (stage === 2 && waiting && got.length >= 16) {
        const errno = got.readUInt32BE(4);
        if (errno !== 0) {
          got = got.subarray(16);
          const w = waiting;
          waiting = undefined;
          w.reject(new Error(`NBD error ${errno}`));
        } else if (got.length >= 16 + waiting.length) {
          const data = got.subarray(16, 16 + waiting.length);
          got = got.subarray(16 + waiting.length);
          const w = waiting;
          waiting = undefined;
          w.resolve(data);
        }
      }
    });
  });
}

/** VmRSS and VmHWM (peak RSS) of a process, in MB (NaN once it is gone). */
export function memoryMb(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const field = (name) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
    return { rss: field("VmRSS"), peak: field("VmHWM") };
  } catch {
    return { rss: NaN, peak: NaN };
  }
}

/** Starts the built qnbd with `args` (which must include -k SOCKET) and waits for the socket. */
export async function startQnbd(args, socketPath) {
  if (!existsSync(join(root, "apps", "nbd", "dist", "qnbd.cjs"))) {
    throw new Error("build qnbd first: pnpm exec turbo run build --filter=@qcowkit/nbd...");
  }
  const child = spawn(process.execPath, [qnbdBin, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const deadline = Date.now() + 15_000;
  while (!existsSync(socketPath)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`qnbd did not start: ${stderr.trim()}`);
    }
    await new Promise((w) => setTimeout(w, 50));
  }
  return { child, stderr: () => stderr, stop: () => child.kill("SIGKILL") };
}
