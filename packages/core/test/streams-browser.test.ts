/**
 * The core's stream API in a browser build: test/browser/stream-consumer.ts is bundled by esbuild for
 * platform=browser (a Node module in the bundle fails the build), then run in a fresh V8 context that has
 * Web APIs only (no require, process, Buffer or node: modules). apps/web/test/core-streams.test.ts runs the
 * same bundle in Chromium.
 */
import * as vm from "node:vm";
import { describe, expect, it } from "vitest";
import { bundleStreamConsumer, expectConsumerSummary } from "./browser/bundle-consumer";
import type { ConsumerSummary } from "./browser/stream-consumer";

describe("stream API in a browser bundle", () => {
  it("bundles without Node modules and streams an image out and back in a Web-only context", async () => {
    const { code, inputs } = await bundleStreamConsumer();
    expect(inputs.some((i) => i.startsWith("node:"))).toBe(false);
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
    expectConsumerSummary(await (sandbox.__run as () => Promise<ConsumerSummary>)());
  });
});
