/** The version of @qcowkit/cli (from its package.json, inlined by the bundler). */
import pkg from "../../package.json" with { type: "json" };

export const VERSION: string = (pkg as { version: string }).version;
