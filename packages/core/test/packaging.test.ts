/**
 * The libraries install alone from their packed tarballs (each with only the @qcowkit packages it depends
 * on), and examples/custom-frontend.mjs and examples/stream-to-stdout.mjs work on the packed core. The apps'
 * bins (single bundled files, scripts/bin-bundle.mjs) run after an npm install of the packed apps.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildWithDependencies } from "../../../scripts/build-for-tests.mjs";
import { pnpmCommand } from "../../../scripts/pnpm.mjs";
import { qemu, tempDir } from "./helpers";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const libs: Record<string, string[]> = {
  spec: [],
  cluster: ["spec"],
  refcount: ["spec"],
  datafile: ["spec"],
  "nbd-protocol": ["spec"],
  core: ["spec", "cluster", "refcount", "datafile", "nbd-protocol"],
};
/** One export each package must provide once installed. */
const probe: Record<string, string> = {
  spec: "decodeImageHeader",
  cluster: "ClusterMap",
  refcount: "Refcounts",
  datafile: "MemoryStore",
  "nbd-protocol": "decodeRequestHeader",
  core: "Qcow2Image",
};
const license = readFileSync(join(root, "LICENSE"), "utf8");
const t = tempDir("qcowkit-pack-");
afterAll(() => t.cleanup());
const tarballs: Record<string, string> = {};

function npm(args: string[], cwd: string): string {
  return execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_loglevel: "error" } });
}

/** The apps packed beside the libraries (folder under apps/). */
const apps = ["cli", "nbd"];

beforeAll(() => {
  buildWithDependencies("@qcowkit/core");
  buildWithDependencies("@qcowkit/cli");
  buildWithDependencies("@qcowkit/nbd");
  const out = join(t.dir, "tarballs");
  mkdirSync(out);
  for (const dir of [...Object.keys(libs).map((n) => join(root, "packages", n)), ...apps.map((n) => join(root, "apps", n))]) {
    const [pnpm, ...pre] = pnpmCommand();
    execFileSync(pnpm!, [...pre, "pack", "--pack-destination", out], { cwd: dir, stdio: "pipe" });
  }
  for (const f of readdirSync(out)) {
    const m = /^qcowkit-([a-z-]+?)-\d/.exec(f);
    if (m) tarballs[m[1]!] = join(out, f);
  }
}, 300_000);

describe("licence", () => {
  it("every package and app carries the root LICENSE and lists it in its files", () => {
    for (const group of ["packages", "apps"]) {
      for (const name of readdirSync(join(root, group))) {
        const dir = join(root, group, name);
        const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
        expect(pkg.license, `${group}/${name}`).toBe("MIT");
        expect(pkg.files ?? [], `${group}/${name}`).toContain("LICENSE");
        expect(readFileSync(join(dir, "LICENSE"), "utf8"), `${group}/${name}`).toBe(license);
      }
    }
  });
});

describe("packed libraries", () => {
  for (const [name, deps] of Object.entries(libs)) {
    it(`@qcowkit/${name} installs alone and loads`, () => {
      const dir = join(t.dir, `install-${name}`);
      mkdirSync(dir);
      writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "probe", version: "1.0.0", type: "module" }));
      npm(["install", "--no-audit", "--no-fund", ...[...deps, name].map((d) => tarballs[d]!)], dir);
      const pkg = JSON.parse(readFileSync(join(dir, "node_modules", "@qcowkit", name, "package.json"), "utf8"));
      expect(pkg.files).toContain("dist");
      expect(readFileSync(join(dir, "node_modules", "@qcowkit", name, "LICENSE"), "utf8")).toBe(license);
      const exported = execFileSync(
        "node",
        ["--input-type=module", "-e", `import * as m from "@qcowkit/${name}"; console.log(typeof m["${probe[name]}"])`],
        { cwd: dir, encoding: "utf8" },
      );
      expect(exported.trim()).toBe("function");
    }, 180_000);
  }

  it("examples/custom-frontend.mjs hashes a data-file image through the packed core", () => {
    const dir = join(t.dir, "install-core");
    cpSync(join(root, "examples", "custom-frontend.mjs"), join(dir, "custom-frontend.mjs"));
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "data_file=disk.raw,data_file_raw=on", join(dir, "disk.qcow2"), "8M"], { cwd: dir });
    qemu("qemu-io", ["-c", "write -P 0x42 1M 3M", "-c", "write -z 2M 64k", join(dir, "disk.qcow2")], { cwd: dir });
    const out = JSON.parse(execFileSync("node", ["custom-frontend.mjs", "disk.qcow2"], { cwd: dir, encoding: "utf8" }));
    const expected = createHash("sha256").update(readFileSync(join(dir, "disk.raw"))).digest("hex");
    expect(out).toEqual({ virtualSize: 8 * 1024 * 1024, sha256: expected });
  }, 60_000);

  it("examples/stream-to-stdout.mjs streams a qcow2 through a pipe that qemu-img checks and compares", () => {
    const dir = join(t.dir, "install-core");
    cpSync(join(root, "examples", "stream-to-stdout.mjs"), join(dir, "stream-to-stdout.mjs"));
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", join(dir, "src.qcow2"), "8M"]);
    qemu("qemu-io", ["-c", "write -P 0x42 1M 3M", join(dir, "src.qcow2")]);
    execFileSync("bash", ["-o", "pipefail", "-c", "node stream-to-stdout.mjs --compress src.qcow2 2>/dev/null | cat > out.qcow2"], { cwd: dir });
    expect(qemu("qemu-img", ["check", join(dir, "out.qcow2")])).toContain("No errors were found on the image.");
    expect(qemu("qemu-img", ["compare", join(dir, "src.qcow2"), join(dir, "out.qcow2")])).toContain("Images are identical.");
  }, 60_000);
});

describe("packed apps", () => {
  it("qimg, qio and qnbd run from an npm install of the tarballs, zstd included, and keep a code cache", () => {
    const dir = join(t.dir, "install-apps");
    mkdirSync(dir);
    writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "probe", version: "1.0.0", type: "module" }));
    npm(["install", "--no-audit", "--no-fund", ...Object.keys(libs).map((d) => tarballs[d]!), tarballs.cli!, tarballs.nbd!], dir);
    // Each bin is one bundled file (plus the code cache loader) next to its map.
    for (const app of apps) {
      const dist = readdirSync(join(dir, "node_modules", "@qcowkit", app, "dist")).filter((f) => !f.endsWith(".map"));
      expect(dist.sort(), app).toEqual(["compile-cache.cjs", app === "cli" ? "qimg.cjs" : "qnbd.cjs", ...(app === "cli" ? ["qio.cjs"] : [])].sort());
    }
    const cache = join(t.dir, "compile-cache");
    const env = { ...process.env, QCOWKIT_COMPILE_CACHE: cache };
    const bin = (name: string, args: string[]) => execFileSync(join(dir, "node_modules", ".bin", name), args, { cwd: dir, encoding: "utf8", env });
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", join(dir, "z.qcow2"), "4M"]);
    // zstd's packages are external to the bundle, found through the app's own dependencies.
    expect(bin("qio", ["-c", "write -c -P 0x5a 0 64k", "z.qcow2"])).toContain("wrote 65536/65536 bytes at offset 0");
    expect(qemu("qemu-io", ["-c", "read -P 0x5a 0 64k", join(dir, "z.qcow2")])).toContain("read 65536/65536 bytes at offset 0");
    // The first run wrote the cache; the second one uses it and prints the same.
    const first = JSON.parse(bin("qimg", ["info", "--output=json", "z.qcow2"]));
    expect(readdirSync(cache).some((f) => f.includes("-qimg.cjs-"))).toBe(true);
    expect(JSON.parse(bin("qimg", ["info", "--output=json", "z.qcow2"]))).toEqual(first);
    expect(first["format-specific"].data["compression-type"]).toBe("zstd");
    expect(existsSync(join(dir, "node_modules", "@qcowkit", "datafile", "prebuilds"))).toBe(true);
    expect(bin("qnbd", ["--version"])).toMatch(/^qnbd /);
  }, 180_000);
});
