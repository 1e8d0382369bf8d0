#!/usr/bin/env node
// The floor for any Node program copying a file: no format logic, no zero detection, four 2 MiB
// read-then-write requests in flight on libuv's thread pool. `pnpm bench` times it beside qemu-img
// convert -f raw -O raw to show how much of qimg's gap is Node itself (start-up and I/O path).
// Usage: node scripts/bench/node-copy.mjs SRC DST
import { closeSync, fstatSync, openSync, read, write } from "node:fs";

const [srcPath, dstPath] = process.argv.slice(2);
const src = openSync(srcPath, "r");
const dst = openSync(dstPath, "w");
const size = fstatSync(src).size;
const CHUNK = 2 * 1024 * 1024;
const call = (fn, fd, buf, length, position) =>
  new Promise((resolve, reject) => fn(fd, buf, 0, length, position, (error, n) => (error ? reject(error) : resolve(n))));
let next = 0;
async function worker() {
  const buf = new Uint8Array(CHUNK);
  while (next < size) {
    const position = next;
    next += CHUNK;
    const length = Math.min(CHUNK, size - position);
    let done = 0;
    while (done < length) done += await call(read, src, buf.subarray(done), length - done, position + done);
    done = 0;
    while (done < length) done += await call(write, dst, buf.subarray(done), length - done, position + done);
  }
}
await Promise.all(Array.from({ length: 4 }, worker));
closeSync(src);
closeSync(dst);
