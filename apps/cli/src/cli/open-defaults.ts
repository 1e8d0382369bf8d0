/**
 * Settings of the whole invocation that apply to every image a command opens: `safe` is the shared --safe
 * flag (untrusted images: see @qcowkit/core's README, "Safe mode"), set once by each program's main; `cacheSize`
 * the metadata cache of each qcow2 image (the core's default when unset).
 */
export const cliOpenDefaults: { safe: boolean; cacheSize?: number } = { safe: false };
