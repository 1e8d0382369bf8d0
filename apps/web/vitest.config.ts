import { mergeConfig } from "vitest/config";
import { project } from "../../vitest.shared";

// The tests drive the built page (dist/) in Chromium, so it is built once before them.
export default mergeConfig(project("web", { testTimeout: 120_000 }), { test: { globalSetup: ["test/global-setup.ts"] } });
