// V8 code cache for the bins' bundled chunks (built into each app as dist/compile-cache.cjs by
// scripts/bin-bundle.mjs, and loaded first by the #! scripts in bin/). Start-up time, issue 17.
//
// Compiling the engine's chunk (about 600 KB of JavaScript) is most of what `qimg info` spends before its work:
// 20-30 ms of CPU on a 2-core machine. V8 can instead load code it compiled in an earlier run. Node 22.1 and
// later do this themselves (module.enableCompileCache); on older Node, this file does the same for the files
// of this app's dist/ only:
// - the cache lives in <tmpdir>/qcowkit-compile-cache-<uid> (QCOWKIT_COMPILE_CACHE=DIR to move it, =0 to turn
//   it off), a directory only this user may write; anything else there is not used;
// - an entry's name holds Node's version, a hash of Node's options, a hash of the file's folder, the file's
//   name, size and modification time; V8 also checks that the cached code fits the source (its length) and
//   V8 flags, and compiles from source when it does not;
// - entries are written when the process exits, after the run compiled what it needed, through a temporary
//   file renamed into place, so concurrent runs never read half an entry; a process that ran for 2 s or more
//   (a server) writes an entry it used again when its code now holds at least 5 % more compiled functions.
// Nothing here changes what the code does: a missing, stale or unreadable cache only costs the compile time.
"use strict";
const Module = require("node:module");

/** Seconds a process must have run before its exit writes used entries again (see the exit handler). */
const LONG_RUN_SECONDS = 2;

function enable() {
  const setting = process.env.QCOWKIT_COMPILE_CACHE;
  if (setting === "0" || setting === "off") return;
  if (typeof Module.enableCompileCache === "function") {
    if (setting) Module.enableCompileCache(setting);
    else Module.enableCompileCache();
    return;
  }
  const fs = require("node:fs");
  const path = require("node:path");
  const vm = require("node:vm");
  const uid = typeof process.getuid === "function" ? process.getuid() : undefined;
  const dir = setting || path.join(require("node:os").tmpdir(), `qcowkit-compile-cache-${uid ?? "user"}`);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = fs.lstatSync(dir);
    if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o022) !== 0) return;
  } catch {
    return;
  }
  const distDir = __dirname + path.sep;
  // V8 rejects code cached under other V8 flags: runs with other flags keep entries of their own.
  const fnv = (text) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
    return h.toString(16);
  };
  const flags = fnv(`${process.execArgv.join(" ")}|${process.env.NODE_OPTIONS ?? ""}`);
  const pending = [];
  // Entries that were used: a long run (a server) compiled functions a short one never reached (the handshake,
  // the request paths), which a later server would otherwise compile again while its first client waits.
  const loaded = [];
  const original = Module.prototype._compile;
  Module.prototype._compile = function compileWithCache(content, filename) {
    if (typeof filename !== "string" || !filename.startsWith(distDir) || !filename.endsWith(".cjs")) {
      return original.call(this, content, filename);
    }
    let entry;
    try {
      const st = fs.statSync(filename);
      // The folder's hash keeps two installs (or worktrees) apart: V8 checks a source's length, not its bytes.
      entry = path.join(dir, `${process.version}-${process.arch}-${flags}-${fnv(path.dirname(filename))}-${path.basename(filename)}-${st.size}-${Math.trunc(st.mtimeMs)}`);
    } catch {
      return original.call(this, content, filename);
    }
    let cachedData;
    try {
      cachedData = fs.readFileSync(entry);
    } catch {
      cachedData = undefined;
    }
    // The bundle has no import() (scripts/bin-bundle.mjs turns them into require), which a vm.Script could not run.
    // A #! line (qnbd's entry keeps one) is a comment only at the very start of a file: keep its place as one.
    const source = content.startsWith("#!") ? `//${content.slice(2)}` : content;
    const script = new vm.Script(Module.wrap(source), { filename, cachedData });
    if (cachedData === undefined || script.cachedDataRejected) pending.push({ script, entry, bytes: 0 });
    else loaded.push({ script, entry, bytes: cachedData.byteLength });
    const wrapper = script.runInThisContext({ displayErrors: true });
    const require = Module.createRequire(filename);
    return wrapper.call(this.exports, this.exports, require, this, filename, path.dirname(filename));
  };
  process.once("exit", () => {
    // After a run of some seconds, an entry that would now hold clearly more code is written again; short
    // commands (qimg info) do not pay for making cached data they would not improve.
    if (process.uptime() >= LONG_RUN_SECONDS) {
      for (const item of loaded) {
        try {
          const data = item.script.createCachedData();
          if (data.byteLength > item.bytes * 1.05) pending.push({ script: { createCachedData: () => data }, entry: item.entry });
        } catch {
          // The cache is only an optimisation.
        }
      }
    }
    for (const { script, entry } of pending) {
      const tmp = `${entry}.${process.pid}.tmp`;
      try {
        fs.writeFileSync(tmp, script.createCachedData(), { mode: 0o600 });
        fs.renameSync(tmp, entry);
        // Entries of earlier builds of the same file are dead: drop them.
        const prefix = path.basename(entry).replace(/-\d+-\d+$/, "-");
        for (const name of fs.readdirSync(dir)) {
          if (name.startsWith(prefix) && name !== path.basename(entry) && !name.endsWith(".tmp")) fs.rmSync(path.join(dir, name), { force: true });
        }
      } catch {
        try {
          fs.rmSync(tmp, { force: true });
        } catch {
          // The cache is only an optimisation.
        }
      }
    }
  });
}

enable();
