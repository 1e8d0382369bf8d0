import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";

/** The tests run the built bins: build this app and the packages it uses (turbo caches unchanged ones). */
export default function setup(): void {
  buildWithDependencies("@qcowkit/cli");
}
