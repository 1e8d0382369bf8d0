import { defineConfig } from "tsup";

export default defineConfig({
  entry: { qnbd: "src/qnbd.ts" },
  format: ["esm"],
  target: "node20",
  platform: "node",
  dts: false,
  sourcemap: true,
  clean: true,
  // Workspace packages are bundled from their TypeScript source, so the bin never depends on a sibling's
  // (possibly stale) dist/.
  noExternal: [/^@qcowkit\//],
  esbuildOptions(options) {
    options.conditions = ["@qcowkit/source"];
  },
});
