import { defineConfig } from "tsup";
import { binBundle } from "../../scripts/bin-bundle.mjs";

// qnbd is bundled with the workspace packages it uses (start-up time, issue 17); see scripts/bin-bundle.mjs.
export default defineConfig(binBundle({ qnbd: "src/qnbd.ts" }));
