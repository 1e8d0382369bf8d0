import { mergeConfig } from "vitest/config";
import { project } from "../../vitest.shared";

// qcowkit.test.ts runs the built qimg, qio and qnbd bins, so they are rebuilt once before the tests.
export default mergeConfig(project("conformance", { testTimeout: 600_000 }), {
  test: { globalSetup: ["test/global-setup.ts"] },
});
