import { defineProject } from "vitest/config";

/** One vitest project per package: resolves workspace packages to their TypeScript source. */
export function project(name: string, extra: { testTimeout?: number } = {}) {
  return defineProject({
    resolve: { conditions: ["@qcowkit/source"] },
    ssr: { resolve: { conditions: ["@qcowkit/source"], externalConditions: ["@qcowkit/source"] } },
    test: {
      name,
      include: ["test/**/*.test.ts"],
      testTimeout: extra.testTimeout ?? 60_000,
      hookTimeout: 120_000,
    },
  });
}
