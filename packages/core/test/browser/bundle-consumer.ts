/**
 * stream-consumer.ts bundled by esbuild for platform=browser, as a page would load it (an IIFE defining
 * `consumer`). The build fails on a Node module; `inputs` lists what went in, for the tests to check.
 */
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { expect } from "vitest";
import type { ConsumerSummary } from "./stream-consumer";

export async function bundleStreamConsumer(): Promise<{ code: string; inputs: string[] }> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL("./stream-consumer.ts", import.meta.url))],
    bundle: true,
    platform: "browser",
    format: "iife",
    globalName: "consumer",
    conditions: ["@qcowkit/source"],
    write: false,
    metafile: true,
    logLevel: "silent",
  });
  return { code: result.outputFiles[0]!.text, inputs: Object.keys(result.metafile.inputs) };
}

/** What the consumer must report, wherever it runs. */
export function expectConsumerSummary(out: ConsumerSummary): void {
  expect(out.magic).toBe("QFI");
  expect(out.same).toBe(true);
  expect(out.rawSame).toBe(true);
  expect(out.aborted).toBe("user stopped");
  // Header, L1, refcount table and block, one L2 table, and the 305 000 data bytes packed compressed into
  // one cluster (uncompressed they take five).
  expect(out.streamBytes).toBe(6 * 65536);
  const [done, total] = out.progressOut.split("/").map(Number);
  expect(done).toBe(total);
  expect(total).toBeGreaterThan(0);
  expect(out.progressIn).toBe(`${8 * 1024 * 1024}/${8 * 1024 * 1024}`);
  expect(out.monotonic).toBe(true);
  expect(out.importAborted).toBe("import stopped");
  expect(out.inputCancelled).toBe(true);
}
