#!/usr/bin/env node
// `pnpm iotests [--ci] [--jobs N] [--verbose] [NNN...]`: runs QEMU 7.2's own qemu-iotests (qcow2, bash tests)
// against qimg, qio and qnbd, started under QEMU's names. Prints one line per test, then
// "iotests: N passed, M failed" (a test that does not run counts as failed). Exit 0 when none failed.
//
// The tests are GPL-2.0 and never part of this repository: they come at run time from Debian's source package
// `qemu` (v7.2.0 plus Debian's stable patches, the version of Debian's qemu-utils), through apt-get with a private
// deb-src list (the system's apt configuration is left alone), and are cached in ~/.cache/qcowkit/iotests
// (QCOWKIT_IOTESTS_CACHE overrides). Needs python3, dpkg-source (dpkg-dev), qemu-system-x86 and
// qemu-storage-daemon (qemu-system-common). Without arguments it runs the 115 tests of issue 20; --ci runs
// the list in scripts/iotests-ci.txt (the tests that pass, run by `npm test`).
import { spawnSync, spawn } from "node:child_process";
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The 115 qcow2 bash tests that QEMU 7.2's own tools pass on Debian 12 (issue 20). */
export const ALL_TESTS = `001 002 003 004 005 008 009 010 011 012 013 014 015 017 018 019 020 021 022 023 024 025 026 027 029 031
032 033 034 035 036 037 038 039 042 043 046 047 048 049 050 052 053 054 058 060 061 062 063 066 069 072 073 074 079
080 082 086 089 090 097 098 103 104 105 107 110 111 112 114 115 121 122 126 133 134 138 150 154 158 159 162 170
177 178 179 187 188 189 190 198 204 214 217 226 243 244 250 252 261 263 265 268 270 271 272 279 284 287 289 290
292 293 305 313`.split(/\s+/);

export function ciTests() {
  return readFileSync(join(root, "scripts/iotests-ci.txt"), "utf8")
    .split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter(Boolean)
    .flatMap((l) => l.split(/\s+/));
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...opts });
  if (r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || r.stdout || "").trim().split("\n").slice(-3).join(" / ");
    throw new Error(`${cmd} ${args.join(" ")} failed: ${why}`);
  }
  return r.stdout;
}

/** The apt deb-src entries matching the system's deb entries (deb822 and one-line forms). */
function debSrcList() {
  const lines = [];
  const dir = "/etc/apt/sources.list.d";
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => /\.(sources|list)$/.test(f)).map((f) => join(dir, f)) : [];
  if (existsSync("/etc/apt/sources.list")) files.push("/etc/apt/sources.list");
  for (const file of files) {
    const text = readFileSync(file, "utf8");
    if (file.endsWith(".sources")) {
      for (const stanza of text.split(/\n\s*\n/)) {
        if (!/^Types:.*\bdeb\b/m.test(stanza) || !/debian/.test(stanza)) continue;
        lines.push(stanza.replace(/^Types:.*$/m, "Types: deb-src").trim(), "");
      }
    } else {
      for (const l of text.split("\n")) if (/^deb\s.*debian/.test(l)) lines.push(l.replace(/^deb\s/, "deb-src "));
    }
  }
  return lines.join("\n") + "\n";
}

/** The extracted tests/qemu-iotests of Debian's qemu source package (fetched once, then cached). */
function iotestsDir() {
  const cache = process.env.QCOWKIT_IOTESTS_CACHE ?? join(homedir(), ".cache/qcowkit/iotests");
  const done = join(cache, "current");
  if (existsSync(join(done, "tests/qemu-iotests/check"))) return join(done, "tests/qemu-iotests");
  const work = join(cache, `fetch-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, "lists/partial"), { recursive: true });
  const sources = join(work, "deb-src.sources");
  writeFileSync(sources, debSrcList());
  const apt = ["-o", `Dir::Etc::SourceList=${sources}`, "-o", "Dir::Etc::SourceParts=/dev/null", "-o", `Dir::State::Lists=${join(work, "lists")}`, "-o", "Debug::NoLocking=1", "-qq"];
  console.log("iotests: fetching Debian's qemu source package (tests/qemu-iotests, GPL-2.0; cached in " + cache + ")");
  run("apt-get", [...apt, "update"], { cwd: work });
  run("apt-get", [...apt, "source", "--download-only", "qemu"], { cwd: work });
  const dsc = readdirSync(work).find((f) => f.endsWith(".dsc"));
  if (!dsc) throw new Error("apt-get source qemu left no .dsc");
  run("dpkg-source", ["--no-check", "-x", dsc, "src"], { cwd: work });
  const keep = join(work, "keep");
  for (const d of ["tests/qemu-iotests", "python"]) cpSync(join(work, "src", d), join(keep, d), { recursive: true });
  writeFileSync(join(keep, "VERSION"), dsc.replace(/\.dsc$/, "") + "\n");
  rmSync(done, { recursive: true, force: true });
  cpSync(keep, done, { recursive: true });
  rmSync(work, { recursive: true, force: true });
  return join(done, "tests/qemu-iotests");
}

/**
 * A private copy of the built workspace packages the bins load (package.json, bin/, dist/, the native addon and
 * node_modules links), so that a build running meanwhile cannot pull dist/ from under a test.
 */
function snapshotWorkspace(dest) {
  const dirs = ["apps", "packages"].flatMap((d) => readdirSync(join(root, d)).map((n) => `${d}/${n}`));
  for (const rel of dirs) {
    const from = join(root, rel);
    if (!existsSync(join(from, "package.json")) || !existsSync(join(from, "dist"))) continue;
    const to = join(dest, rel);
    mkdirSync(to, { recursive: true });
    for (const part of ["package.json", "bin", "dist", "native/build"]) {
      if (existsSync(join(from, part))) cpSync(join(from, part), join(to, part), { recursive: true });
    }
    const modules = join(from, "node_modules");
    if (!existsSync(modules)) continue;
    const link = (src, dst) => {
      if (!lstatSync(src).isSymbolicLink()) return;
      const target = readlinkSync(src);
      const resolved = join(dirname(src), target);
      // Workspace links are relative and land in the copy; anything else points at the installed package.
      const inWorkspace = !resolved.includes("node_modules") && /^(apps|packages)\//.test(relative(root, resolved));
      symlinkSync(inWorkspace ? target : resolved, dst);
    };
    for (const name of readdirSync(modules)) {
      if (name.startsWith(".")) continue;
      const src = join(modules, name);
      if (name.startsWith("@") && !lstatSync(src).isSymbolicLink()) {
        mkdirSync(join(to, "node_modules", name), { recursive: true });
        for (const sub of readdirSync(src)) link(join(src, sub), join(to, "node_modules", name, sub));
      } else {
        mkdirSync(join(to, "node_modules"), { recursive: true });
        link(src, join(to, "node_modules", name));
      }
    }
  }
}

/** A build tree as `check` expects one: the tools under QEMU's names, and a `check` link to the sources. */
function buildTree(source) {
  const build = join(process.env.QCOWKIT_IOTESTS_BUILD ?? join(tmpdir(), `qcowkit-iotests-${process.pid}`));
  rmSync(build, { recursive: true, force: true });
  const bin = join(build, "bin");
  const iotests = join(build, "tests/qemu-iotests");
  mkdirSync(bin, { recursive: true });
  mkdirSync(iotests, { recursive: true });
  symlinkSync(join(source, "check"), join(iotests, "check"));
  const ws = join(build, "workspace");
  snapshotWorkspace(ws);
  // The tools answer to QEMU's names when started through links named as QEMU's tools.
  symlinkSync(join(ws, "apps/cli/bin/qimg.js"), join(bin, "qemu-img"));
  symlinkSync(join(ws, "apps/cli/bin/qio.js"), join(bin, "qemu-io"));
  symlinkSync(join(ws, "apps/nbd/bin/qnbd.js"), join(bin, "qemu-nbd"));
  // Debian's system emulator lacks the qtest accelerator the tests ask for: use tcg instead.
  const system = process.env.QCOWKIT_QEMU_SYSTEM ?? "/usr/bin/qemu-system-x86_64";
  const wrapper = join(bin, "qemu-system-x86_64");
  writeFileSync(
    wrapper,
    `#!/bin/sh\n# qemu-system with tcg in place of qtest (Debian builds no qtest accelerator)\n` +
      `n=$#; i=0\nwhile [ $i -lt $n ]; do a=$1; shift; i=$((i+1))\n` +
      `  case $a in qtest) a=tcg;; accel=qtest) a=accel=tcg;; esac\n  set -- "$@" "$a"\ndone\nexec ${system} "$@"\n`,
  );
  chmodSync(wrapper, 0o755);
  return { build, bin, iotests };
}

function parseArgs(argv) {
  const o = { tests: [], jobs: 2, verbose: false, ci: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--ci") o.ci = true;
    else if (a === "--verbose" || a === "-v") o.verbose = true;
    else if (a === "--jobs" || a === "-j") o.jobs = Number(argv[++i]);
    else if (/^\d{3}$/.test(a)) o.tests.push(a);
    else throw new Error(`unknown argument '${a}' (usage: pnpm iotests [--ci] [--jobs N] [--verbose] [NNN...])`);
  }
  if (!Number.isInteger(o.jobs) || o.jobs < 1) throw new Error("--jobs wants a positive number");
  if (o.tests.length === 0) o.tests = o.ci ? ciTests() : ALL_TESTS;
  return o;
}

/** Runs `check`; resolves with { passed, failed, lines } (one result line per test). */
export function runIotests(options) {
  const source = iotestsDir();
  const { build, bin, iotests } = buildTree(source);
  const env = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH}`,
    QEMU_PROG: join(bin, "qemu-system-x86_64"),
    QEMU_IMG_PROG: join(bin, "qemu-img"),
    QEMU_IO_PROG: join(bin, "qemu-io"),
    QEMU_NBD_PROG: join(bin, "qemu-nbd"),
    QSD_PROG: process.env.QSD_PROG ?? "/usr/bin/qemu-storage-daemon",
    TEST_DIR: join(build, "scratch"),
  };
  delete env.CI; // check's output does not change with it; keep the child environment plain
  const args = [join(iotests, "check"), "-qcow2", "--color", "off", "-j", String(options.jobs), ...options.tests];
  return new Promise((resolve) => {
    // Its own process group, so that an interrupted run ends check's workers and the tests they started too.
    const child = spawn("python3", args, { cwd: iotests, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    const stop = () => {
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {}
      process.exit(130);
    };
    process.once("SIGINT", stop).once("SIGTERM", stop);
    // A test that never ends (one of them loops until a server starts) must not hang the run: when no result
    // comes for QCOWKIT_IOTESTS_STALL seconds (default 600), check and its tests are ended; the tests
    // without a result count as failed.
    const stallMs = Number(process.env.QCOWKIT_IOTESTS_STALL ?? 600) * 1000;
    let stalled = false;
    let watchdog;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        stalled = true;
        console.log(`iotests: no result for ${stallMs / 1000} s: stopping check`);
        try {
          process.kill(-child.pid, "SIGKILL");
        } catch {}
      }, stallMs);
    };
    arm();
    let out = "";
    const seen = new Map();
    const onData = (chunk) => {
      out += chunk;
      if (options.verbose) process.stdout.write(chunk);
      let nl;
      while ((nl = out.indexOf("\n")) >= 0) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        // With -j, check's workers sometimes print two results on one line ("008 pass ... 022 pass ..."): each
        // "NNN pass|fail|not run" starts a result of its own.
        for (const result of resultsOfLine(line)) {
          const m = /^(\d{3})\s+(pass|fail|not run)\b\s*(?:\[[^\]]*\]\s*)*(?:[\d.]+s)?\s*(.*)$/.exec(result);
          if (!m || seen.has(m[1])) continue;
          const status = m[2] === "pass" ? "pass" : m[2] === "fail" ? "fail" : "not run";
          seen.set(m[1], status);
          arm();
          if (!options.verbose) console.log(`${m[1]} ${status}${m[3] ? `  ${m[3].trim()}` : ""}`);
        }
      }
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.stderr.setEncoding("utf8").on("data", (c) => process.stderr.write(c));
    child.on("close", () => {
      clearTimeout(watchdog);
      let passed = 0;
      let failed = 0;
      for (const t of options.tests) {
        const s = seen.get(t);
        if (s === "pass") passed++;
        else {
          failed++;
          if (s === undefined) console.log(`${t} fail  (no result from check${stalled ? ": stopped" : ""})`);
        }
      }
      if (!options.keep) rmSync(build, { recursive: true, force: true });
      resolve({ passed, failed });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`iotests: ${e.message}`);
    process.exit(2);
  }
  options.keep = process.env.QCOWKIT_IOTESTS_KEEP === "1";
  let result;
  try {
    result = await runIotests(options);
  } catch (e) {
    console.error(`iotests: ${e.message}`);
    result = { passed: 0, failed: options.tests.length };
  }
  console.log(`iotests: ${result.passed} passed, ${result.failed} failed`);
  process.exit(result.failed > 0 ? 1 : 0);
}

/** The results in one line of check's output: a new one starts at every "NNN pass", "NNN fail" or "NNN not run". */
export function resultsOfLine(line) {
  const starts = [...line.matchAll(/(?:^|\s)(\d{3})\s+(?:pass|fail|not run)\b/g)].map((m) => m.index + (m[0].length - m[0].trimStart().length));
  if (starts.length === 0) return [line];
  return starts.map((at, i) => line.slice(at, starts[i + 1] ?? line.length).trim());
}
