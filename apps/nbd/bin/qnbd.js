#!/usr/bin/env -S node --max-semi-space-size=2
// A young generation of 2 MiB semispaces instead of Node's up to 16: under many small requests (fio 4 KiB,
// iodepth 32) V8 grows the nursery, and qnbd's peak RSS with it, by 5-20 MiB, for no measured gain in CPU time
// per request (docs/nbd-performance.md). It applies when the bin runs as a program, as npm's links run it.
// CommonJS (bin/package.json): V8's code cache for the bundle first (dist/compile-cache.cjs), then the bin.
require("../dist/compile-cache.cjs");
require("../dist/qnbd.cjs");
