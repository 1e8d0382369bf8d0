/**
 * The core's stream API in a browser build: test/browser/stream-consumer.ts is bundled by esbuild for
 * platform=browser (a Node module in the bundle fails the build), then run in a fresh V8 context that has
 * Web APIs only (no require, process, Buffer or node: modules).
 */
import { fileURLToPath } from "node:url";
import * as vm from "node:vm";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";

const entry = fileURLToPath(new URL("./browser/stream-consumer.ts", import.meta.url));

describe("stream API in a browser bundle", () => {
  it("bundles without Node modules and streams an image out and back in a Web-only context", async () => {
    const result = await build({
      entryPoints: [entry],
      bundle: true,
      platform: "browser",
      format: "iife",
      globalName: "consumer",
      conditions: ["@qcowkit/source"],
      write: false,
      metafile: true,
      logLevel: "silent",
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs.some((i) => i.startsWith("node:"))).toBe(false);
    const code = result.outputFiles[0]!.text;
    expect(code).not.toMatch(/require\(["']node:|from ["']node:/);

    const sandbox: Record<string, unknown> = {
      ReadableStream,
      Blob,
      TextEncoder,
      TextDecoder,
      AbortController,
      WebAssembly: (globalThis as Record<string, unknown>).WebAssembly,
      console,
      setTimeout,
      clearTimeout,
      queueMicrotask,
      crypto: globalThis.crypto,
    };
    const context = vm.createContext(sandbox);
    vm.runInContext(`${code}\nglobalThis.__run = consumer.run;`, context);
    expect(vm.runInContext("typeof process + typeof require + typeof Buffer", context)).toBe("undefinedundefinedundefined");
    const out = (await (sandbox.__run as () => Promise<Record<string, unknown>>)()) as {
      streamBytes: number;
      same: boolean;
      magic: string;
      rawSame: boolean;
      aborted: string;
    };
    expect(out.magic).toBe("QFI");
    expect(out.same).toBe(true);
    expect(out.rawSame).toBe(true);
    expect(out.aborted).toBe("user stopped");
    // Header, L1, refcount table and block, one L2 table, and the 305 000 data bytes packed compressed into
    // one cluster (uncompressed they take five).
    expect(out.streamBytes).toBe(6 * 65536);
  });
});
