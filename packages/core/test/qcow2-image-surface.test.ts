/**
 * Qcow2Image's public surface: the names stored in the header are read through getters that agree with
 * `qemu-img info` on QEMU-made images, and the engine's internals (the metadata owner, the lock, the write
 * observers, ...) are left out of the published declarations of @qcowkit/core.
 */
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { afterAll, describe, expect, it } from "vitest";
import { Qcow2Image, openImage } from "../src/node";
import { apiEntries, apiReport } from "../../../scripts/api-report.mjs";
import { qemu, tempDir } from "./helpers";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const t = tempDir("qcowkit-surface-");
afterAll(() => t.cleanup());

interface QemuInfo {
  "backing-filename"?: string;
  "backing-filename-format"?: string;
  "format-specific"?: { data?: { "data-file"?: string } };
}

function info(name: string): QemuInfo {
  return JSON.parse(qemu("qemu-img", ["info", "--output=json", t.path(name)])) as QemuInfo;
}

describe("Qcow2Image's header names agree with qemu-img info", () => {
  qemu("qemu-img", ["create", "-q", "-f", "raw", t.path("base.raw"), "1M"]);
  // [image, qemu-img create arguments after -f qcow2]
  const cases: Array<[string, string[]]> = [
    ["plain.qcow2", ["1M"]],
    ["over-raw.qcow2", ["-b", "base.raw", "-F", "raw"]],
    // QEMU opens a relative data file name from the working directory (not the image's): absolute ones here.
    ["data-file.qcow2", ["-o", `data_file=${t.path("data.raw")}`, "1M"]],
    ["both.qcow2", ["-b", "data-file.qcow2", "-F", "qcow2", "-o", `data_file=${t.path("data2.raw")}`]],
  ];
  for (const [name, args] of cases) {
    it(name, async () => {
      qemu("qemu-img", ["create", "-q", "-f", "qcow2", t.path(name), ...args], { cwd: t.dir });
      const q = info(name);
      const image = await openImage(t.path(name), { readOnly: true });
      try {
        expect(image).toBeInstanceOf(Qcow2Image);
        const img = image as Qcow2Image;
        expect(img.backingFile).toBe(q["backing-filename"]);
        expect(img.backingFormat).toBe(q["backing-filename-format"]);
        expect(img.dataFile).toBe(q["format-specific"]?.data?.["data-file"]);
        // The opened children: the backing image and the data file, found by those names.
        expect(img.backing === null).toBe(q["backing-filename"] === undefined);
        if (img.backingFile !== undefined) expect(img.backing?.filename).toBe(t.path(img.backingFile));
        expect(img.dataFileName).toBe(img.dataFile);
      } finally {
        await image.close();
      }
    });
  }

  it("the names cannot be assigned from outside", async () => {
    const image = (await openImage(t.path("both.qcow2"), { readOnly: true })) as Qcow2Image;
    try {
      const loose = image as unknown as Record<string, unknown>;
      for (const key of ["backingFile", "backingFormat", "dataFile", "dataFileName", "backing", "encryption"]) {
        expect(() => {
          loose[key] = "elsewhere";
        }, key).toThrow(TypeError);
      }
      expect(image.dataFile).toBe(t.path("data2.raw"));
      expect(image.backingFile).toBe("data-file.qcow2");
    } finally {
      await image.close();
    }
  });
});

/** Declarations without their comments (a comment may name an internal type to explain it). */
function withoutComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
}

const ENGINE_NAMES = [
  "MetadataOwner",
  "RwLock",
  "EngineImage",
  "writeObservers",
  "closeHooks",
  "discardUnlocked",
  "linkPreallocated",
  "signalCorruption",
  "readUnlocked",
  "writeUnlocked",
  "blockStatusUnlocked",
  "writeFromStoresGuessing",
];

describe("the published declarations of @qcowkit/core leave the engine out", () => {
  const dist = join(root, "packages", "core", "dist");
  const dts = readdirSync(dist).filter((f) => f.endsWith(".d.ts"));

  it("no .d.ts declares an engine member or names an engine type", () => {
    expect(dts).toEqual(expect.arrayContaining(["index.d.ts", "node.d.ts", "browser.d.ts", "internal.d.ts"]));
    for (const f of dts) {
      const text = withoutComments(readFileSync(join(dist, f), "utf8"));
      for (const name of ENGINE_NAMES) expect(text, `${f}: ${name}`).not.toMatch(new RegExp(`\\b${name}\\b`));
      expect(text, `${f}: metadata/lock members`).not.toMatch(/^\s*(?:readonly\s+)?(?:metadata|lock)\??\s*:/m);
    }
  });

  it("a program compiled against the published types uses the getters and the operations, and cannot reach the engine", () => {
    const consumer = t.path("consumer.ts");
    const lines = [
      `import { Qcow2Image, addBitmap, checkImage, listSnapshots, openImage } from ${JSON.stringify(join(dist, "node.js"))};`,
      "export async function use(name: string): Promise<string> {",
      "  await using image = await openImage(name, { readOnly: true });",
      "  if (!(image instanceof Qcow2Image)) return image.format;",
      "  const names: Array<string | undefined> = [image.backingFile, image.backingFormat, image.dataFile, image.dataFileName];",
      "  await addBitmap(image, 'b');",
      "  const report = await checkImage(image);",
      "  return `${names.join()} ${listSnapshots(image).length} ${report.corruptions} ${image.backing?.filename ?? ''}`;",
      "}",
      "export function reach(image: Qcow2Image): unknown[] {",
      "  return [",
    ];
    const internal = ["metadata", "lock", "writeObservers", "closeHooks", "warn", "signalCorruption", "eject", "discardUnlocked", "linkPreallocated", "readUnlocked", "writeFromStoresGuessing"];
    const first = lines.length;
    for (const name of internal) lines.push(`    image.${name},`);
    lines.push("  ];", "}", "");
    writeFileSync(consumer, lines.join("\n"));
    const program = ts.createProgram([consumer], {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
      lib: ["lib.es2023.d.ts", "lib.esnext.disposable.d.ts", "lib.dom.d.ts"],
      // The Node entry's declarations name node:stream types.
      types: ["node"],
      typeRoots: [join(root, "node_modules", "@types")],
    });
    const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => {
      const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
      return { file: d.file?.fileName, line, code: d.code, text: ts.flattenDiagnosticMessageText(d.messageText, " ") };
    });
    // Exactly one error per internal member (2339 "Property ... does not exist", 2551 the same with "Did you
    // mean"), none elsewhere (the published declarations themselves included).
    expect(diagnostics.filter((d) => d.file !== consumer || d.line < first || d.line >= first + internal.length)).toEqual([]);
    expect(diagnostics.map((d) => d.line - first)).toEqual(internal.map((_, i) => i));
    for (const d of diagnostics) expect([2339, 2551], d.text).toContain(d.code);
  }, 60_000);

  const reports = apiEntries().filter((e) => ["@qcowkit/core", "@qcowkit/core/node", "@qcowkit/core/browser"].includes(e.name));
  it("the API reports of the public entries show Qcow2Image with its name getters and without the engine", () => {
    expect(reports).toHaveLength(3);
    for (const entry of reports) {
      const report = apiReport(entry);
      const cls = /^class Qcow2Image implements BlockImage \{\n([\s\S]*?)^\}/m.exec(report)?.[1];
      expect(cls, entry.name).toBeDefined();
      for (const getter of ["backingFile", "backingFormat", "dataFile", "dataFileName"]) expect(cls).toContain(`get ${getter}(): string | undefined;`);
      expect(cls).toContain("get backing(): BlockImage | null;");
      expect(cls).not.toMatch(/^\s+(?:readonly\s+)?(?:metadata|lock|warn|eject)\b/m);
      // The operations on an image take the public class.
      for (const fn of ["addBitmap", "listSnapshots", "createSnapshot", "checkImage", "checkAndRepairImage", "repairImage"]) {
        expect(report, `${entry.name}: ${fn}`).toMatch(new RegExp(`^function ${fn}\\(image: Qcow2Image\\b`, "m"));
      }
    }
  });

  it("the internal entry still exports every name internal.ts lists (stripping left it whole)", () => {
    const listed = [...readFileSync(join(root, "packages", "core", "src", "internal.ts"), "utf8").matchAll(/^export \{([^}]*)\}/gm)]
      .flatMap((m) => m[1]!.split(","))
      .map((s) => s.trim().split(/\s+as\s+/).pop()!)
      .filter(Boolean)
      .sort();
    const entry = apiEntries().find((e) => e.name === "@qcowkit/core/internal")!;
    const exported = [...apiReport(entry).matchAll(/^\/\/ (\S+)/gm)].map((m) => m[1]!).sort();
    expect(listed.length).toBeGreaterThan(20);
    expect(exported).toEqual(listed);
  });
});
