import { defineConfig } from "tsup";

export default defineConfig({
  entry: { qimg: "src/qimg.ts", qio: "src/qio.ts" },
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
  // The tests build a private copy (test/global-setup.ts).
  outDir: process.env.QCOWKIT_CLI_OUT_DIR ?? "dist",
  // Workspace packages are bundled from their TypeScript source, so the bins never depend on a sibling's
  // (possibly stale) dist/.
  noExternal: [/^@qcowkit\//],
  esbuildOptions(options) {
    options.conditions = ["@qcowkit/source"];
  },
});
