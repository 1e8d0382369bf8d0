import { execFileSync, spawnSync } from "node:child_process";
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isQcow2Error } from "@qcowkit/spec";
import {
  backingProtocol,
  checkSafeReference,
  directoryPrefix,
  resolveBackingFileName,
  resolveDataFileName,
  type ReferenceKind,
} from "../src/index";
import { absolutePosixPath, normalizePosixPath } from "../src/posix-path";

function thrown(run: () => unknown): { code: string; errno: string; message: string } {
  try {
    run();
  } catch (error) {
    if (!isQcow2Error(error)) throw error;
    expect(error.message).not.toContain("\n");
    return error;
  }
  throw new Error("expected a Qcow2Error");
}

describe("POSIX path helpers", () => {
  it("normalise lexically", () => {
    const cases: [string, string][] = [
      ["a/b/../c", "a/c"],
      ["./a//b/.", "a/b"],
      ["../a", "../a"],
      ["a/../..", ".."],
      ["", "."],
      ["/..", "/"],
      ["/a/../../b", "/b"],
      ["/a/b/", "/a/b"],
    ];
    for (const [input, output] of cases) expect(normalizePosixPath(input), input).toBe(output);
    expect(absolutePosixPath("/w", "x/../y")).toBe("/w/y");
    expect(absolutePosixPath("/w", "/abs")).toBe("/abs");
  });

  it("directoryPrefix keeps the trailing slash, as QEMU's path combination does", () => {
    expect(directoryPrefix("a/b/c.qcow2")).toBe("a/b/");
    expect(directoryPrefix("c.qcow2")).toBe("");
    expect(directoryPrefix("/c.qcow2")).toBe("/");
  });
});

describe("resolveDataFileName", () => {
  it("uses the stored name as a plain file name, relative to the working directory", () => {
    for (const name of ["d.raw", "sub/d.raw", "../d.raw", "/abs/d.raw", "file:/x/d.raw", "json:{}", "nbd://h/x"]) {
      expect(resolveDataFileName(name)).toEqual({ kind: "data-file", storedName: name, path: name, protocol: undefined });
    }
  });

  it("an empty name means the data file must be given at open", () => {
    const error = thrown(() => resolveDataFileName(""));
    expect([error.code, error.message]).toEqual(["INVALID_IMAGE", "'data-file' is required for this image"]);
  });
});

describe("resolveBackingFileName", () => {
  it("joins relative names to the image's directory by string, keeping '..'", () => {
    expect(resolveBackingFileName("sub/top.qcow2", "../base.qcow2")?.path).toBe("sub/../base.qcow2");
    expect(resolveBackingFileName("top.qcow2", "base.qcow2")?.path).toBe("base.qcow2");
    expect(resolveBackingFileName("/v/top.qcow2", "b/base.qcow2")?.path).toBe("/v/b/base.qcow2");
    expect(resolveBackingFileName("/v/top.qcow2", "/w/base.qcow2")?.path).toBe("/w/base.qcow2");
    expect(resolveBackingFileName("/v/top.qcow2", "s2/x:y.qcow2")).toMatchObject({
      path: "/v/s2/x:y.qcow2",
      protocol: undefined,
    });
  });

  it("detects protocol prefixes: ':' before any '/'", () => {
    expect(backingProtocol("nbd://host/x")).toBe("nbd");
    expect(backingProtocol("json:{}")).toBe("json");
    expect(backingProtocol("dir/a:b")).toBeUndefined();
    expect(backingProtocol("plain")).toBeUndefined();
    expect(resolveBackingFileName("/v/top.qcow2", "nbd://h/x")).toEqual({
      kind: "backing",
      storedName: "nbd://h/x",
      path: undefined,
      protocol: "nbd",
    });
    expect(resolveBackingFileName("/v/top.qcow2", "file:b.qcow2")).toMatchObject({ path: "b.qcow2", protocol: "file" });
  });

  it("refuses what QEMU refuses, and treats an empty name as no backing file", () => {
    expect(resolveBackingFileName("/v/top.qcow2", "")).toBeUndefined();
    expect(thrown(() => resolveBackingFileName("", "b.qcow2")).message).toBe(
      "Cannot use relative backing file names for ''",
    );
    expect(thrown(() => resolveBackingFileName("/v/top.qcow2", "file:")).message).toBe(
      "The 'file' block driver requires a file name",
    );
  });
});

describe("checkSafeReference", () => {
  const allowed: [string, string, ReferenceKind, string | undefined, string][] = [
    ["/v/img/top.qcow2", "base.qcow2", "backing", undefined, "/v/img/base.qcow2"],
    ["/v/img/top.qcow2", "sub/./base.qcow2", "backing", undefined, "/v/img/sub/./base.qcow2"],
    ["img/top.qcow2", "base.qcow2", "backing", undefined, "img/base.qcow2"],
    ["top.qcow2", "d.raw", "data-file", undefined, "d.raw"],
    ["./top.qcow2", "sub/d.raw", "data-file", undefined, "sub/d.raw"],
    ["../top.qcow2", "d.raw", "data-file", undefined, "d.raw"], // the working directory is inside the image's folder
    ["/v/img/top.qcow2", "d.raw", "data-file", "/v/img", "d.raw"],
    ["/v/img/top.qcow2", "img/d.raw", "data-file", "/v", "img/d.raw"],
    ["top.qcow2", "file:d.raw", "data-file", undefined, "file:d.raw"], // a plain name for data files
  ];
  for (const [image, name, kind, cwd, expected] of allowed) {
    it(`allows ${kind} '${name}' of '${image}'${cwd ? ` from ${cwd}` : ""}`, () => {
      expect(checkSafeReference(image, name, kind, cwd === undefined ? {} : { cwd })).toBe(expected);
    });
  }

  const refused: [string, string, ReferenceKind, string | undefined, RegExp][] = [
    ["/v/img/top.qcow2", "/etc/passwd", "data-file", "/v/img", /absolute names are not allowed/],
    ["/v/img/top.qcow2", "/v/img/base.qcow2", "backing", undefined, /absolute names are not allowed/],
    ["/v/img/top.qcow2", "../base.qcow2", "backing", undefined, /'\.\.' is not allowed/],
    ["/v/img/top.qcow2", "sub/../../x", "backing", undefined, /'\.\.' is not allowed/],
    ["/v/img/top.qcow2", "sub/../d.raw", "data-file", "/v/img", /'\.\.' is not allowed/],
    ["/v/img/top.qcow2", "nbd://h/x", "backing", undefined, /protocol prefixes are not allowed/],
    ["/v/img/top.qcow2", "file:base.qcow2", "backing", undefined, /protocol prefixes are not allowed/],
    ["/v/img/top.qcow2", "d.raw", "data-file", "/home/u", /resolves outside the image's folder/],
    ["/v/img/top.qcow2", "d.raw", "data-file", "/v", /resolves outside the image's folder/],
    ["sub/top.qcow2", "d.raw", "data-file", undefined, /resolves outside the image's folder/],
    ["../../top.qcow2", "x/../d.raw", "data-file", undefined, /'\.\.' is not allowed/],
    ["top.qcow2", ".", "data-file", undefined, /resolves outside the image's folder/],
    ["/v/top.qcow2", "", "backing", undefined, /the name is empty/],
    ["/v/top.qcow2", "a\0b", "data-file", "/v", /NUL/],
  ];
  for (const [image, name, kind, cwd, pattern] of refused) {
    it(`refuses ${kind} '${JSON.stringify(name)}' of '${image}'${cwd ? ` from ${cwd}` : ""}`, () => {
      const error = thrown(() => checkSafeReference(image, name, kind, cwd === undefined ? {} : { cwd }));
      expect(error.code).toBe("NOT_SUPPORTED");
      expect(error.errno).toBe("EPERM");
      expect(error.message).toMatch(/^Refusing (data|backing) file '.*' in safe mode: /);
      expect(error.message).toMatch(pattern);
    });
  }

  it("needs the working directory for a data file of an absolutely named image", () => {
    expect(thrown(() => checkSafeReference("/v/top.qcow2", "d.raw", "data-file")).code).toBe("INVALID_ARGUMENT");
  });
});

/**
 * Differential tests: images made by qemu-img with relative names, opened by qemu-io and qemu-img
 * from several working directories; the file QEMU picks must be the one our resolver names.
 */
describe("resolution matches QEMU 7.2", () => {
  let root = "";
  const MiB = 1024 * 1024;
  /** Candidate files: real path → marker byte. */
  const markers = new Map<string, number>();

  beforeAll(async () => {
    root = await realpath(await mkdtemp(join(tmpdir(), "qcowkit-resolve-")));
    for (const dir of ["img/sub", "other/sub", "sub", "empty"]) await mkdir(join(root, dir), { recursive: true });
    await symlink(join(root, "img/sub"), join(root, "link"));
    // Images with data files named relatively, created from root/img (qemu-img creates the data file there).
    qemuImg(["create", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "x.qcow2", "1M"], join(root, "img"));
    qemuImg(["create", "-f", "qcow2", "-o", "data_file=sub/d.raw,data_file_raw=on", "y.qcow2", "1M"], join(root, "img"));
    // Overlays with relative backing names (-u: the backing files need not exist yet).
    const overlays: [string, string][] = [
      ["img/top1.qcow2", "b.qcow2"],
      ["img/top2.qcow2", "../b.qcow2"],
      ["img/sub/top3.qcow2", "../b.qcow2"],
      ["img/top4.qcow2", "sub/b.qcow2"],
      ["img/top5.qcow2", "file:b.qcow2"],
      ["img/top6.qcow2", join(root, "other/b.qcow2")],
    ];
    for (const [overlay, backing] of overlays) {
      qemuImg(["create", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", overlay, "1M"], root);
    }
    // Candidates, each with its own marker byte, everywhere a resolver might look.
    let marker = 0x10;
    for (const dir of ["", "img", "other", "img/sub", "other/sub", "sub"]) {
      const rawPath = join(root, dir, "d.raw");
      await writeFile(rawPath, new Uint8Array(MiB).fill(marker));
      markers.set(rawPath, marker++);
      if (dir === "sub" || dir === "other/sub") continue; // leave some backing candidates missing
      const basePath = join(root, dir, "b.qcow2");
      qemuImg(["create", "-f", "qcow2", basePath, "1M"], root);
      execFileSync("qemu-io", ["-c", `write -P ${marker} 0 512`, basePath], { stdio: "pipe" });
      markers.set(basePath, marker++);
    }
  });

  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  function qemuImg(args: string[], cwd: string): string {
    return execFileSync("qemu-img", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  }

  /** The first guest byte as QEMU reads it, or QEMU's error text. */
  function qemuFirstByte(image: string, cwd: string): { byte?: number; error?: string } {
    const result = spawnSync("qemu-io", ["-r", "-c", "read -v 0 1", image], { cwd, encoding: "utf8" });
    expect(result.error).toBeUndefined(); // qemu-io must be installed
    const match = /^00000000:\s+([0-9a-f]{2})/m.exec(result.stdout);
    if (match) return { byte: Number.parseInt(match[1]!, 16) };
    return { error: result.stderr.trim() };
  }

  /** The marker of the file `path` (relative to `cwd`) really is, following symbolic links. */
  async function markerOf(path: string, cwd: string): Promise<number | undefined> {
    try {
      // No lexical normalisation: the kernel resolves ".." after following symbolic links.
      return markers.get(await realpath(path.startsWith("/") ? path : `${cwd}/${path}`));
    } catch {
      return undefined;
    }
  }

  /** QEMU, reading `image` from `cwd`, reads the file `ours` names, or fails to open exactly that name. */
  async function expectQemuOpens(image: string, cwd: string, ours: string): Promise<void> {
    const qemu = qemuFirstByte(image, cwd);
    const expectedMarker = await markerOf(ours, cwd);
    if (expectedMarker === undefined) {
      expect(qemu.error).toContain(`Could not open '${ours}': No such file or directory`);
    } else {
      expect(qemu).toEqual({ byte: expectedMarker });
    }
  }

  const dataFileCases: [string, string][] = [
    ["img", "x.qcow2"],
    ["", "img/x.qcow2"],
    ["other", "../img/x.qcow2"],
    ["other", "@/img/x.qcow2"],
    ["img/sub", "../x.qcow2"],
    ["img", "y.qcow2"],
    ["", "img/y.qcow2"],
    ["other", "@/img/y.qcow2"],
    ["empty", "@/img/y.qcow2"],
    ["img/sub", "../y.qcow2"],
  ];
  for (const [cwdDir, imageArg] of dataFileCases) {
    it(`data file of ${imageArg} opened from ./${cwdDir}`, async () => {
      const cwd = join(root, cwdDir);
      const image = imageArg.replace("@", root);
      const info = JSON.parse(qemuImg(["info", "--output=json", image], cwd)) as {
        "format-specific": { data: { "data-file": string } };
      };
      const storedName = info["format-specific"].data["data-file"];
      await expectQemuOpens(image, cwd, resolveDataFileName(storedName).path ?? "");
    });
  }

  const backingCases: [string, string][] = [
    ["", "img/top1.qcow2"],
    ["img", "top1.qcow2"],
    ["other", "../img/top1.qcow2"],
    ["other", "@/img/top1.qcow2"],
    ["", "img/top2.qcow2"],
    ["img/sub", "../top2.qcow2"],
    ["", "img/sub/top3.qcow2"],
    ["other", "@/img/sub/top3.qcow2"],
    ["other", "@/link/top3.qcow2"],
    ["", "link/top3.qcow2"],
    ["", "img/top4.qcow2"],
    ["img", "top4.qcow2"],
    ["", "img/top5.qcow2"],
    ["img", "top5.qcow2"],
    ["other", "../img/top5.qcow2"],
    ["sub", "../img/top5.qcow2"],
    ["sub", "../img/top6.qcow2"],
  ];
  for (const [cwdDir, imageArg] of backingCases) {
    it(`backing file of ${imageArg} opened from ./${cwdDir}`, async () => {
      const cwd = join(root, cwdDir);
      const image = imageArg.replace("@", root);
      const info = JSON.parse(qemuImg(["info", "--output=json", image], cwd)) as {
        "backing-filename": string;
        "full-backing-filename": string;
      };
      const resolved = resolveBackingFileName(image, info["backing-filename"]);
      const ours = resolved?.path ?? "";
      // QEMU's own combined name: ours, plus the protocol prefix where there is one.
      expect(info["full-backing-filename"]).toBe(resolved?.protocol ? `${resolved.protocol}:${ours}` : ours);
      await expectQemuOpens(image, cwd, ours);
    });
  }
});
