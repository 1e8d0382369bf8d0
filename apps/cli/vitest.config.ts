import { mergeConfig } from "vitest/config";
import { project } from "../../vitest.shared";

// Some tests run bin/qimg.js and bin/qio.js, so the bundle is rebuilt once before the tests.
export default mergeConfig(project("cli", { testTimeout: 120_000 }), { test: { globalSetup: ["test/global-setup.ts"] } });
