/**
 * Reproduce fuzz cases: `node --conditions=@qcowkit/source --import tsx test/fuzz/show.ts SEED...` (from
 * packages/core; `pnpm fuzz --show SEED` does this) writes each mutated image to a directory, prints what
 * was mutated and both sides' verdicts and messages, and leaves the files for a closer look.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildCorpus } from "./corpus";
import { runOurs, runQemu } from "./harness";
import { mutate } from "./mutate";
import { openImage } from "../../src/node";
import { checkAndRepairImage } from "../../src/repair";
import type { Qcow2Image } from "../../src/qcow2-image";

const dir = mkdtempSync(join(tmpdir(), "qcowkit-fuzz-show-"));
const corpus = buildCorpus(dir);
for (const arg of process.argv.slice(2)) {
  const seed = Number(arg);
  const name = `c${String(seed).padStart(9, "0")}.qcow2`;
  const seedImage = corpus[seed % corpus.length]!;
  const m = mutate(seedImage.bytes, seed, name);
  writeFileSync(join(dir, name), m.bytes);
  console.log(`== seed ${seed}: ${seedImage.name}: ${m.description.join("; ")}`);
  console.log("qemu:", JSON.stringify(await runQemu(name, `q-${name}`, true, dir)));
  const ours = await runOurs(join(dir, name), join(dir, `o-${name}`), true);
  console.log("ours:", JSON.stringify(ours.verdicts), ours.crashes.length ? ours.crashes : "", ours.slow.length ? ours.slow : "");
  for (const opts of [{ readOnly: true, noIo: true }, { readOnly: true, checkMode: true }]) {
    try {
      const image = await openImage(join(dir, name), opts);
      console.log(`ours ${JSON.stringify(opts)}: opened ${image.format}`);
      await image.close();
    } catch (e) {
      console.log(`ours ${JSON.stringify(opts)}: ${(e as Error).message}`);
    }
  }
  for (const mode of [undefined, "all"] as const) {
    const path = join(dir, mode ? `o2-${name}` : name);
    if (mode) writeFileSync(path, m.bytes);
    try {
      const image = await openImage(path, { readOnly: !mode, checkMode: true, onWarning: (w) => console.log(`  warning: ${w}`) });
      const r = await checkAndRepairImage(image as Qcow2Image, mode, { onMessage: (l) => console.log(`  ${l}`) });
      console.log(`ours check ${mode ?? ""} -> ${r.exitCode} ${JSON.stringify({ ...r.report, messages: undefined })}`);
      await image.close();
    } catch (e) {
      console.log(`ours check ${mode ?? ""}: ${(e as Error).message}`);
    }
  }
  for (const args of [["info", name], ["check", name], ["check", "-r", "all", `q2-${name}`]]) {
    if (args.length === 4) writeFileSync(join(dir, `q2-${name}`), m.bytes);
    const r = spawnSync("qemu-img", args, { cwd: dir, encoding: "utf8", timeout: 3000 });
    console.log(`qemu-img ${args.join(" ")} -> ${r.status}\n${r.stdout}${r.stderr}`);
  }
  console.log(execFileSync("ls", ["-la", dir]).toString().split("\n").filter((l) => l.includes(name)).join("\n"));
}
console.log(`files in ${dir}`);
