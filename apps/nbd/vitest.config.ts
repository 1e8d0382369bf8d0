import { mergeConfig } from "vitest/config";
import { project } from "../../vitest.shared";

// The CLI tests run bin/qnbd.js, so the bundle is rebuilt once before the tests.
export default mergeConfig(project("nbd"), { test: { globalSetup: ["test/global-setup.ts"] } });
