/**
 * The prebuilt addons shipped in the package (prebuilds/<platform>-<arch>/node.napi.glibc.node, made by
 * native/prebuild.mjs): they load, and an install of the packed package on a machine without a C compiler
 * (npm) or with install scripts blocked (pnpm 10) still locks images against QEMU.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";
import { pnpmCommand } from "../../../scripts/pnpm.mjs";
import { runQemu, scratchDirectory } from "./native-helpers";

const packageDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const root = join(packageDir, "..", "..");
const scratch = scratchDirectory("prebuilt");

describe("prebuilt addons", () => {
  it("linux-x64 and linux-arm64 are shipped, for the right machine, with the current ABI", () => {
    const x64 = join(packageDir, "prebuilds", "linux-x64", "node.napi.glibc.node");
    const arm64 = join(packageDir, "prebuilds", "linux-arm64", "node.napi.glibc.node");
    expect(execFileSync("readelf", ["-h", x64], { encoding: "utf8" })).toMatch(/Machine:\s+Advanced Micro Devices X86-64/);
    expect(execFileSync("readelf", ["-h", arm64], { encoding: "utf8" })).toMatch(/Machine:\s+AArch64/);
    if (process.arch === "x64") {
      const addon = createRequire(import.meta.url)(x64) as { abiVersion: number; features: { ofdLocks: boolean } };
      // Must match src/node/native.ts's expectedAbiVersion: rebuild with `pnpm build:prebuilds` after a change.
      expect(addon.abiVersion).toBe(4);
      expect(addon.features.ofdLocks).toBe(true);
    }
    const pkg = JSON.parse(execFileSync("node", ["-p", "JSON.stringify(require('./package.json'))"], { cwd: packageDir, encoding: "utf8" }));
    expect(pkg.files).toContain("prebuilds");
  });
});

describe("installed from the packed package", () => {
  const tarballs: Record<string, string> = {};
  let server: ChildProcess | undefined;
  let image = "";

  beforeAll(async () => {
    buildWithDependencies("@qcowkit/datafile");
    const out = join(scratch(), "tarballs");
    mkdirSync(out);
    for (const name of ["spec", "datafile"]) {
      const [pnpm, ...pre] = pnpmCommand();
      execFileSync(pnpm!, [...pre, "pack", "--pack-destination", out], { cwd: join(root, "packages", name), stdio: "pipe" });
    }
    for (const f of readdirSync(out)) {
      const m = /^qcowkit-(\w+)-/.exec(f);
      if (m) tarballs[m[1]!] = join(out, f);
    }
    // qemu-nbd holds the image open read-write, with QEMU's write lock, for the whole file.
    image = join(scratch(), "held.qcow2");
    expect(runQemu("qemu-img", ["create", "-q", "-f", "qcow2", image, "1M"]).status).toBe(0);
    server = spawn("qemu-nbd", ["-t", "-f", "qcow2", "-k", join(scratch(), "nbd.sock"), image], { stdio: "ignore" });
    const deadline = Date.now() + 10_000;
    while (!existsSync(join(scratch(), "nbd.sock"))) {
      if (Date.now() > deadline) throw new Error("qemu-nbd did not start");
      await new Promise((r) => setTimeout(r, 50));
    }
  }, 300_000);

  afterAll(() => {
    server?.kill();
  });

  /** A PATH holding node, npm, pnpm and sh only: no cc, gcc, g++, clang or make. */
  function compilerFreePath(): string {
    const bin = join(scratch(), "bin");
    if (existsSync(bin)) return bin;
    mkdirSync(bin);
    const which = (tool: string) => execFileSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).trim();
    symlinkSync(process.execPath, join(bin, "node"));
    for (const tool of ["npm", "pnpm", "sh"]) symlinkSync(which(tool), join(bin, tool));
    for (const tool of ["cc", "gcc", "g++", "clang", "make"]) {
      expect(spawnSync(tool, ["--version"], { env: { PATH: bin } }).error).toBeDefined();
    }
    return bin;
  }

  /** In `dir`, open the held image read-write through the installed package: the error code, or "opened". */
  function tryWriter(dir: string): { available: boolean; reason: string; outcome: string } {
    const script = `
      import { FileStore, nativeAvailable, nativeUnavailableReason } from "@qcowkit/datafile/node";
      let outcome = "opened";
      try { await FileStore.open(${JSON.stringify(image)}, { lock: "write" }); } catch (e) { outcome = e.code + ": " + e.message; }
      console.log(JSON.stringify({ available: nativeAvailable, reason: nativeUnavailableReason ?? "", outcome }));`;
    return JSON.parse(execFileSync("node", ["--input-type=module", "-e", script], { cwd: dir, encoding: "utf8" }));
  }

  it("npm install without a C compiler: the prebuilt addon loads and QEMU's lock is respected", () => {
    const dir = join(scratch(), "npm");
    mkdirSync(dir);
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "probe", version: "1.0.0", type: "module" }));
    const bin = compilerFreePath();
    const env = { HOME: process.env.HOME ?? "/root", PATH: bin, npm_config_loglevel: "error", npm_config_cache: join(scratch(), "npm-cache") };
    execFileSync("npm", ["install", "--no-audit", "--no-fund", "--foreground-scripts", tarballs.spec!, tarballs.datafile!], { cwd: dir, env, stdio: "pipe" });
    // Nothing was compiled: the install script saw the prebuilt addon.
    expect(existsSync(join(dir, "node_modules", "@qcowkit", "datafile", "native", "build", "qcowkit_fs.node"))).toBe(false);
    const result = tryWriter(dir);
    expect(result.available, result.reason).toBe(true);
    expect(result.outcome).toMatch(/^LOCKED: Failed to get "write" lock/);
  }, 180_000);

  it("pnpm add with install scripts blocked: the prebuilt addon loads and QEMU's lock is respected", () => {
    const dir = join(scratch(), "pnpm");
    mkdirSync(dir);
    writeFileSync(
      join(dir, "package.json"),
      JSON.stringify({ name: "probe", version: "1.0.0", type: "module", pnpm: { overrides: { "@qcowkit/spec": `file:${tarballs.spec}` } } }),
    );
    const [pnpm, ...pre] = pnpmCommand();
    const env = { ...process.env, PATH: compilerFreePath(), npm_config_store_dir: join(scratch(), "pnpm-store") };
    const added = spawnSync(pnpm!, [...pre, "add", "--ignore-workspace", `file:${tarballs.datafile}`, `file:${tarballs.spec}`], { cwd: dir, env, encoding: "utf8" });
    expect(added.status, added.stderr + added.stdout).toBe(0);
    // pnpm 10 did not run the install script (it lists it as ignored), so no local build exists.
    expect(existsSync(join(dir, "node_modules", "@qcowkit", "datafile", "native", "build"))).toBe(false);
    const result = tryWriter(dir);
    expect(result.available, result.reason).toBe(true);
    expect(result.outcome).toMatch(/^LOCKED: Failed to get "write" lock/);
  }, 180_000);

  it("without any addon, a read-write open is refused with the opt-out named, and a reader goes ahead", () => {
    const dir = join(scratch(), "npm");
    const script = `
      import { FileStore, nativeAvailable } from "@qcowkit/datafile/node";
      const out = { available: nativeAvailable };
      try { await FileStore.open(${JSON.stringify(image)}, { lock: "write" }); out.writer = "opened"; } catch (e) { out.writer = e.code + ": " + e.message; }
      const reader = await FileStore.open(${JSON.stringify(image)}, { lock: "read", readOnly: true });
      out.reader = reader.imageLock.active;
      await reader.close();
      console.log(JSON.stringify(out));`;
    const out = JSON.parse(
      execFileSync("node", ["--input-type=module", "-e", script], { cwd: dir, encoding: "utf8", env: { ...process.env, QCOWKIT_NATIVE: "0" } }),
    );
    expect(out.available).toBe(false);
    expect(out.writer).toMatch(/^NOT_SUPPORTED: Cannot lock '.*held\.qcow2' for writing \(the native addon is not loaded: disabled by QCOWKIT_NATIVE=0\); .*locking: "off" in the API, file\.locking=off on the command line$/);
    expect(out.reader).toBe(false);
  }, 60_000);
});
