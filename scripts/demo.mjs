#!/usr/bin/env node
// The main job on an embedded default: make a qcow2 image whose guest data lives in an external raw data
// file (data_file_raw=on), write to it, and show what qemu-img users would look at: info, map, check, and
// the data file read as a plain raw image. Everything runs through qcowkit's own tools (qimg, qio).
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);
const dir = join(root, "demo-output");
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });

function step(title, cmd, args) {
  console.log(`\n$ ${[cmd.split("/").pop(), ...args].join(" ")}    # ${title}`);
  const r = spawnSync(bin(cmd), args, { cwd: dir, encoding: "utf8" });
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  if (r.status !== 0 && !(cmd === "qimg" && args[0] === "compare")) {
    console.error(`demo: ${cmd} exited with ${r.status}`);
    process.exit(1);
  }
  return r;
}

step("create a 64 MiB qcow2 image with an external raw data file", "qimg", [
  "create", "-f", "qcow2", "-o", "data_file=demo.raw,data_file_raw=on", "demo.qcow2", "64M",
]);
step("write guest data, zeros and a discard", "qio", [
  "-c", "write -P 0x11 1M 4M", "-c", "write -z 2M 1M", "-c", "discard 4M 1M", "-c", "read -P 0x11 1M 1M", "demo.qcow2",
]);
step("image information (the data file is not opened)", "qimg", ["info", "demo.qcow2"]);
step("guest allocation map", "qimg", ["map", "--output=json", "demo.qcow2"]);
step("consistency check", "qimg", ["check", "demo.qcow2"]);
step("the data file is a valid raw image of the guest disk", "qimg", ["compare", "-f", "raw", "-F", "qcow2", "demo.raw", "demo.qcow2"]);
const raw = readFileSync(join(dir, "demo.raw"));
console.log(`\ndemo.raw: ${raw.length} bytes; byte at 1 MiB = 0x${raw[1048576].toString(16)}, at 2 MiB = 0x${raw[2097152].toString(16)}`);
console.log(`\nThe demo files are in ${dir}`);
