import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";

/** The tests open the built page: build it and the packages it bundles (turbo caches unchanged ones). */
export default function setup(): void {
  buildWithDependencies("@qcowkit/web");
}
