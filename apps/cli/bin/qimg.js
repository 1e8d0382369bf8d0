#!/usr/bin/env -S node --max-semi-space-size=2
// A young generation of 2 MiB semispaces instead of Node's up to 16: qimg's garbage is mostly small,
// short-lived objects, and the smaller nursery keeps the peak memory of long scans (convert, map, check of
// huge images) flat. (It applies when the bin runs as a program, as npm's links run it; a flag set at run
// time would come too late, the heap is sized at start.)
// CommonJS (bin/package.json): V8's code cache for the bundle first (dist/compile-cache.cjs), then the bin.
require("../dist/compile-cache.cjs");
require("../dist/qimg.cjs");
