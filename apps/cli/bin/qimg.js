#!/usr/bin/env node
import { setFlagsFromString } from "node:v8";
// A young generation of 2 MiB semispaces instead of up to 16: qimg's garbage is mostly small, short-lived
// objects, and the smaller nursery keeps the peak memory of long scans (convert, map, check) flat.
setFlagsFromString("--max-semi-space-size=2");
import("../dist/qimg.js");
