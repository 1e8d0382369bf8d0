import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";

/**
 * bin.test.ts runs this package's built bin and qcowkit.test.ts the built bins of the CLI and NBD apps
 * (turbo skips packages that did not change).
 */
export default function setup(): void {
  buildWithDependencies("@qcowkit/conformance");
  buildWithDependencies("@qcowkit/cli");
  buildWithDependencies("@qcowkit/nbd");
}
