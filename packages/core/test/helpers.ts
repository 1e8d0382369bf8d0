import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A fresh directory on tmpfs when available. */
export function tempDir(prefix = "qcowkit-core-"): { dir: string; path: (name: string) => string; cleanup: () => void } {
  const base = (() => {
    try {
      return mkdtempSync(join("/dev/shm", prefix));
    } catch {
      return mkdtempSync(join(tmpdir(), prefix));
    }
  })();
  return { dir: base, path: (n) => join(base, n), cleanup: () => rmSync(base, { recursive: true, force: true }) };
}

/** Run a QEMU tool; throws with its stderr on failure. */
export function qemu(tool: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(tool, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], ...opts });
}

/** Run a QEMU tool and return status and output without throwing. */
export function qemuStatus(tool: string, args: string[], opts: { cwd?: string } = {}): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(tool, args, { encoding: "utf8", ...opts });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function patternBuffer(byteLength: number, pattern: number): Uint8Array {
  return new Uint8Array(byteLength).fill(pattern);
}

/**
 * qemu-img creating a LUKS header: QEMU times PBKDF2 with the thread's CPU clock and gives up ("Unable to get
 * accurate CPU usage") when that clock did not move, which happens on a busy machine. Tried again then
 * (at most 5 times); any other failure fails at once.
 */
export function qemuCreatingLuks(args: string[]): void {
  for (let attempt = 1; ; attempt++) {
    const r = qemuStatus("qemu-img", args);
    if (r.status === 0) return;
    if (attempt >= 5 || !r.stderr.includes("Unable to get accurate CPU usage")) throw new Error(`qemu-img ${args.join(" ")}: ${r.stderr}`);
  }
}

/** `size` bytes from the seeded generator. */
export function randomData(size: number, seed: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (r() * 256) | 0;
  return out;
}
