// tsup options shared by the bins (qimg, qio: apps/cli; qnbd: apps/nbd). Each bin is one CommonJS file with
// the @qcowkit workspace packages bundled in from their sources; a qimg command's code runs (is initialised)
// only when that command runs. Start-up time (issue 17): Node loads CommonJS with less work per module than
// ES modules (no module graph to resolve and link), one file is one lookup, read and compile instead of one
// per chunk (chunks measured 5 ms slower for `qimg info`), and a bundle resolves no package at run time. bin/ holds
// a package.json of type "commonjs", so the #! scripts there load the bundle without Node's ES module loader;
// they load dist/compile-cache.cjs first, which keeps V8's compiled code of the chunks between runs.
//
// What stays external, and why:
// - Node's built-in modules (platform "node").
// - @mongodb-js/zstd: a native addon, found at run time in its own package (a dependency of each app).
// - @bokuweb/zstd-wasm: loads its .wasm file from its own package folder (a dependency of each app).
// The native addon of @qcowkit/datafile stays in that package: the bundled code finds it through the app's
// dependency on @qcowkit/datafile (packages/datafile/src/node/native.ts). fflate and aws4fetch are plain
// JavaScript and are bundled; they are initialised only when used.

/** External at run time: resolved from the app's own dependencies. */
export const binExternals = ["@mongodb-js/zstd", "@bokuweb/zstd-wasm"];

/** tsup options for `entries` ({ name: source file }), plus dist/compile-cache.cjs (scripts/compile-cache.cjs). */
export function binBundle(entries) {
  return {
    entry: { ...entries, "compile-cache": "../../scripts/compile-cache.cjs" },
    format: ["cjs"],
    target: "node20",
    platform: "node",
    dts: false,
    sourcemap: true,
    clean: true,
    // One file per bin (tsup's chunks for CommonJS are experimental, and cost a lookup and compile each).
    splitting: false,
    // Minified (half the bytes to read and to load from the code cache: `qimg info` about 5 ms of CPU less),
    // with function and class names kept for messages and stack traces under QCOWKIT_DEBUG.
    minify: true,
    keepNames: true,
    // import.meta.url (the native addon's and Node built-ins' loaders) as the chunk's file URL.
    shims: true,
    noExternal: [/^@qcowkit\//, "fflate", "aws4fetch"],
    external: binExternals,
    esbuildOptions(options) {
      // The workspace packages' TypeScript sources (their "@qcowkit/source" export condition), not their dist/.
      options.conditions = ["@qcowkit/source"];
      // import() of the externals and built-ins becomes require(): they all load as CommonJS, without Node's ES
      // module loader, and the code cache (compile-cache.cjs) compiles with vm.Script, which has no import().
      options.supported = { ...options.supported, "dynamic-import": false };
    },
  };
}
