#!/usr/bin/env node
// CommonJS (bin/package.json): V8's code cache for the bundle first (dist/compile-cache.cjs), then the bin.
require("../dist/compile-cache.cjs");
require("../dist/qio.cjs");
