#!/usr/bin/env -S node --max-semi-space-size=2
// A young generation of 2 MiB semispaces instead of Node's up to 16: under many small requests (fio 4 KiB,
// iodepth 32) V8 grows the nursery, and qnbd's peak RSS with it, by 5-20 MiB, for no measured gain in CPU time
// per request (docs/nbd-performance.md). It applies when the bin runs as a program, as npm's links run it.
// The old generation grows by a fifth past what survived its last collection instead of V8's default (up to
// several times as much for a small heap): under fio's 4 KiB requests at qd32 the peak RSS goes from 76-82 to
// 67-69 MiB at the same IOPS (docs/nbd-performance.md). Set here, not on the #! line: V8 ignores a flag it does
// not know when set at run time, while an unknown flag on the command line would stop Node from starting.
require("node:v8").setFlagsFromString("--heap-growing-percent=20");
// CommonJS (bin/package.json): V8's code cache for the bundle first (dist/compile-cache.cjs), then the bin.
require("../dist/compile-cache.cjs");
require("../dist/qnbd.cjs");
