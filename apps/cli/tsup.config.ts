import { defineConfig } from "tsup";
import { binBundle } from "../../scripts/bin-bundle.mjs";

// Each bin is bundled with the workspace packages it uses, and each command's code sits in a chunk of its own,
// loaded when the command runs (start-up time, issue 17). See scripts/bin-bundle.mjs for what stays external.
export default defineConfig(binBundle({ qimg: "src/qimg.ts", qio: "src/qio.ts" }));
