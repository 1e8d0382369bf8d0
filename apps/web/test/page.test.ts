/**
 * The page in real Chromium against QEMU: for every kind of image the CLI tests use, #info-json, #map-json
 * and #check must be exactly what qemu-img prints (info without actual-size, which a browser cannot know);
 * downloads must be the same disk as the source (qemu-img compare); damaged and foreign files give one
 * line in #error and leave the page usable; the picture is drawn and matches a stored reference.
 *
 * Files are made dense (no holes) before both sides look at them: a browser sees a file's bytes, not its
 * holes, while qemu-img map reports holes inside clusters of a sparse file as zeros.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openFiles, scratchDir, startSession, text, type Session } from "./harness";

const dir = scratchDir("qcowkit-web-test-");
const at = (name: string) => join(dir, name);
const sh = (cmd: string) => execFileSync("sh", ["-c", cmd], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const qemuImg = (args: string[]) => spawnSync("qemu-img", args, { cwd: dir, encoding: "utf8" });

/** qemu-img info --output=json -f qcow2 without the actual-size line (keeping the commas right). */
function qemuInfo(name: string): string {
  const r = qemuImg(["info", "--output=json", "-f", "qcow2", name]);
  expect(r.status, r.stderr).toBe(0);
  const lines = r.stdout.split("\n");
  const i = lines.findIndex((l) => /^ {4}"actual-size": /.test(l));
  expect(i).toBeGreaterThan(0);
  lines.splice(i, 1);
  if (/^\}/.test(lines[i]!)) lines[i - 1] = lines[i - 1]!.replace(/,$/, "");
  return lines.join("\n");
}

/** Every kind of image, made by QEMU, with the files the page is given (image first). */
const kinds: Record<string, { files: string[]; make: string }> = {
  plain: { files: ["plain.qcow2"], make: "qemu-img create -q -f qcow2 plain.qcow2 64M && qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' -c 'write -z 9M 1M' plain.qcow2" },
  compressed: {
    files: ["compressed.qcow2"],
    make: "qemu-img create -q -f qcow2 compressed.qcow2 32M && qemu-io -c 'write -c -P 3 0 1M' -c 'write -P 4 2M 128k' -c 'write -c -P 5 6M 256k' compressed.qcow2",
  },
  zstd: {
    files: ["zstd.qcow2"],
    make: "qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 16M && qemu-io -c 'write -c -P 6 0 512k' -c 'write -P 7 1M 64k' zstd.qcow2",
  },
  "extended L2": {
    files: ["extl2.qcow2"],
    make: "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k extl2.qcow2 16M && qemu-io -c 'write -P 8 0 4k' -c 'write -P 9 260k 8k' -c 'write -z 1M 64k' extl2.qcow2",
  },
  "data file": {
    files: ["df.qcow2", "df.raw"],
    make: "qemu-img create -q -f qcow2 -o data_file=df.raw df.qcow2 8M && qemu-io -c 'write -P 10 0 1M' -c 'write -P 11 4M 64k' df.qcow2",
  },
  "backing chain": {
    files: ["top.qcow2", "mid.qcow2", "base.qcow2"],
    make:
      "qemu-img create -q -f qcow2 base.qcow2 16M && qemu-io -c 'write -P 12 0 2M' base.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && qemu-io -c 'write -P 13 1M 512k' mid.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 && qemu-io -c 'write -P 14 1536k 64k' -c 'write -z 0 64k' top.qcow2",
  },
  snapshots: {
    files: ["snap.qcow2"],
    make:
      "qemu-img create -q -f qcow2 snap.qcow2 8M && qemu-io -c 'write -P 15 0 256k' snap.qcow2 >/dev/null && qemu-img snapshot -c first snap.qcow2 && " +
      "qemu-io -c 'write -P 16 128k 256k' snap.qcow2 >/dev/null && qemu-img snapshot -c second snap.qcow2",
  },
  bitmaps: {
    files: ["bitmaps.qcow2"],
    make:
      "qemu-img create -q -f qcow2 bitmaps.qcow2 8M && qemu-img bitmap --add bitmaps.qcow2 b0 && qemu-img bitmap --add -g 128k --disable bitmaps.qcow2 b1 && " +
      "qemu-io -c 'write -P 17 0 1M' bitmaps.qcow2",
  },
  // A data cluster's refcount cleared (a corruption) and a data cluster's L2 entry cleared (a leak).
  damaged: {
    files: ["damaged.qcow2"],
    make:
      "qemu-img create -q -f qcow2 damaged.qcow2 1M && qemu-io -c 'write 0 128k' damaged.qcow2 >/dev/null && " +
      "printf '\\000\\000' | dd of=damaged.qcow2 bs=1 seek=131082 conv=notrunc 2>/dev/null && " +
      "printf '\\000\\000\\000\\000\\000\\000\\000\\000' | dd of=damaged.qcow2 bs=1 seek=262152 conv=notrunc 2>/dev/null",
  },
};

let session: Session;
let page: Page;

beforeAll(async () => {
  expect(existsSync(join(import.meta.dirname, "..", "dist", "index.html")), "build @qcowkit/web first").toBe(true);
  for (const k of Object.values(kinds)) sh(`(${k.make}) >/dev/null`);
  // Dense copies: the same bytes for qemu-img and for the browser.
  sh("for f in *; do cp --sparse=never \"$f\" \"$f.dense\" && mv \"$f.dense\" \"$f\"; done");
  session = await startSession(dir);
  page = session.page;
}, 120_000);

afterAll(() => session?.close());

describe("the page shows what qemu-img prints", () => {
  for (const [kind, { files }] of Object.entries(kinds)) {
    it(kind, async () => {
      expect(await openFiles(page, files.map(at))).toBe("ready");
      expect(await page.$eval("#error", (e) => (e as HTMLElement).hidden)).toBe(true);
      const image = files[0]!;
      expect(await text(page, "#info-json")).toBe(qemuInfo(image));
      const map = qemuImg(["map", "--output=json", "-f", "qcow2", image]);
      expect(await text(page, "#map-json")).toBe(map.stdout);
      const check = qemuImg(["check", "-f", "qcow2", image]);
      expect(await text(page, "#check")).toBe(check.stdout);
      // Findings: qemu-img's stderr lines (its error_report lines carry the program name).
      expect(await text(page, "#check-messages")).toBe(check.stderr.replace(/^qemu-img: /gm, ""));
      // The picture: drawn, with a legend naming what the check found.
      const drawn = await page.$eval("#cluster-map", (c) => {
        const canvas = c as HTMLCanvasElement;
        const px = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
        let coloured = 0;
        for (let i = 0; i < px.length; i += 4) if (px[i] !== 255 || px[i + 1] !== 255 || px[i + 2] !== 255) coloured++;
        return coloured;
      });
      expect(drawn).toBeGreaterThan(0);
      const legend = await page.$$eval("#legend li", (lis) => lis.map((li) => (li as HTMLElement).dataset.kind));
      expect(legend).toContain("header");
      if (kind === "compressed" || kind === "zstd") expect(legend).toContain("compressed");
      if (kind === "snapshots") expect(legend).toContain("snapshot-table");
      if (kind === "bitmaps") expect(legend).toContain("bitmap-directory");
      if (kind === "data file") expect(legend).toContain("data-file");
      if (kind === "damaged") expect(legend).toContain("leaked");
    });
  }
});

describe("the human view", () => {
  it("names feature bits, extensions, snapshots, bitmaps, the backing chain and the data file", async () => {
    await openFiles(page, kinds["data file"]!.files.map(at));
    const features = await page.$$eval("#feature-bits tr:not(.off) td:nth-child(3)", (tds) => tds.map((t) => t.textContent));
    expect(features).toEqual(["external data file"]);
    expect(await text(page, "#extensions")).toContain("df.raw");
    expect(await text(page, "#human")).toContain("df.raw");
    await openFiles(page, kinds.snapshots!.files.map(at));
    expect(await page.$$eval("#snapshots tr", (rows) => rows.length)).toBe(3);
    expect(await text(page, "#snapshots")).toContain("second");
    await openFiles(page, kinds.bitmaps!.files.map(at));
    expect(await text(page, "#bitmaps")).toMatch(/b0.*65536 bytes.*in-use|b0.*65536 bytes.*auto/s);
    expect(await text(page, "#bitmaps")).toContain("131072 bytes");
    await openFiles(page, kinds["backing chain"]!.files.map(at));
    const chain = await page.$$eval("#backing-chain tr td:first-child", (tds) => tds.map((t) => t.textContent));
    expect(chain).toEqual(["top.qcow2", "mid.qcow2", "base.qcow2"]);
  });
});

/** The canvas against a stored PNG, in the browser: the share of pixels that differ by more than a little. */
async function canvasDifference(reference: string): Promise<{ size: string; different: number }> {
  return page.$eval(
    "#cluster-map",
    async (c, url) => {
      const canvas = c as HTMLCanvasElement;
      const img = new Image();
      img.src = url;
      await img.decode();
      const size = `${img.width}x${img.height}`;
      if (img.width !== canvas.width || img.height !== canvas.height) return { size, different: 1 };
      const scratch = document.createElement("canvas");
      scratch.width = img.width;
      scratch.height = img.height;
      const g = scratch.getContext("2d")!;
      g.drawImage(img, 0, 0);
      const want = g.getImageData(0, 0, img.width, img.height).data;
      const got = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
      let bad = 0;
      for (let i = 0; i < got.length; i += 4) {
        if (Math.abs(got[i]! - want[i]!) + Math.abs(got[i + 1]! - want[i + 1]!) + Math.abs(got[i + 2]! - want[i + 2]!) > 24) bad++;
      }
      return { size, different: bad / (got.length / 4) };
    },
    reference,
  );
}

describe("the picture", () => {
  const reference = join(import.meta.dirname, "reference", "cluster-map-snapshots.png");

  it("matches the stored reference (QCOWKIT_UPDATE_REFERENCE=1 rewrites it)", async () => {
    expect(await openFiles(page, kinds.snapshots!.files.map(at))).toBe("ready");
    if (process.env.QCOWKIT_UPDATE_REFERENCE === "1") {
      const url = await page.$eval("#cluster-map", (c) => (c as HTMLCanvasElement).toDataURL("image/png"));
      writeFileSync(reference, Buffer.from(url.split(",")[1]!, "base64"));
    }
    const png = `data:image/png;base64,${readFileSync(reference).toString("base64")}`;
    const diff = await canvasDifference(png);
    expect(diff.different, diff.size).toBeLessThan(0.01);
    // A different image does not pass for it.
    await openFiles(page, kinds.compressed!.files.map(at));
    expect((await canvasDifference(png)).different).toBeGreaterThan(0.01);
  });

  it("names what the pointer is on, and zooms", async () => {
    await openFiles(page, kinds.snapshots!.files.map(at));
    const box = (await page.locator("#cluster-map").boundingBox())!;
    await page.mouse.move(box.x + 3, box.y + 3);
    expect(await text(page, "#hover-details")).toMatch(/^snap\.qcow2: cluster 0 \(offset 0x0-0xffff\): 1 header$/);
    expect(await text(page, "#zoom-range")).toBe("whole file");
    await page.click("#zoom-in");
    expect(await text(page, "#zoom-range")).toBe("25.00% to 75.00% of the file");
    await page.click("#pan-left");
    expect(await text(page, "#zoom-range")).toBe("0.00% to 50.00% of the file");
    await page.click("#zoom-reset");
    expect(await text(page, "#zoom-range")).toBe("whole file");
  });
});

describe("opening", () => {
  it("by drag and drop: several files, the image first", async () => {
    const files = kinds["data file"]!.files.map((f) => ({ name: f, base64: readFileSync(at(f)).toString("base64") }));
    await page.evaluate(() => (document.body.dataset.state = "choosing"));
    await page.$eval(
      "#drop-zone",
      (zone, list) => {
        const dt = new DataTransfer();
        for (const f of list) dt.items.add(new File([Uint8Array.from(atob(f.base64), (c) => c.charCodeAt(0))], f.name));
        zone.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
      },
      files,
    );
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state ?? ""));
    expect(await page.evaluate(() => document.body.dataset.state)).toBe("ready");
    expect(await text(page, "#map-json")).toBe(qemuImg(["map", "--output=json", "df.qcow2"]).stdout);
  });

  it("?url= of a server that does not answer gives one line, and local files still open", async () => {
    const url = new URL(page.url());
    // Port 1 on loopback: the connection is refused (remote images that work: remote.test.ts).
    url.search = "?url=http://127.0.0.1:1/disk.qcow2";
    await page.goto(url.toString());
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state ?? ""), undefined, { timeout: 60_000 });
    expect(await page.evaluate(() => document.body.dataset.state)).toBe("error");
    expect(await text(page, "#error")).toMatch(/^Could not open 'http:\/\/127\.0\.0\.1:1\/disk\.qcow2': Error opening file: [^\n]+ \(5 attempts\)$/);
    expect(await openFiles(page, kinds.plain!.files.map(at))).toBe("ready");
    expect(await page.$eval("#error", (e) => (e as HTMLElement).hidden)).toBe(true);
    url.search = "";
    await page.goto(url.toString());
  });
});

describe("errors: one line in #error, the page stays usable", () => {
  const cases: Array<[string, string[], string]> = [];
  beforeAll(() => {
    sh("head -c 100000 /dev/urandom > foreign.bin");
    sh("qemu-img create -q -f qcow2 badl1.qcow2 1M && printf '\\000\\000\\000\\000\\000\\003\\000\\020' | dd of=badl1.qcow2 bs=1 seek=40 conv=notrunc 2>/dev/null");
    cases.push(["a foreign file", ["foreign.bin"], "info"], ["an unusable L1 table offset", ["badl1.qcow2"], "info"], ["a missing data file", ["df.qcow2"], "map"], ["a missing backing file", ["top.qcow2", "mid.qcow2"], "map"]);
  });

  it("each failure shows qemu-img's own line, then a good image opens", async () => {
    for (const [i, [what, files, command]] of cases.entries()) {
      expect(await openFiles(page, files.map(at)), what).toBe("error");
      // qemu-img gets only the files the page was given, in a folder of their own.
      sh(`mkdir -p only${i} && cp ${files.join(" ")} only${i}/`);
      const args = command === "info" ? ["info", "-f", "qcow2", files[0]!] : ["map", "--output=json", "-f", "qcow2", files[0]!];
      const r = spawnSync("qemu-img", args, { cwd: at(`only${i}`), encoding: "utf8" });
      expect(r.status, what).not.toBe(0);
      const line = await text(page, "#error");
      expect(line, what).toBe(r.stderr.trim().replace(/^qemu-img: /, ""));
    }
    expect(await openFiles(page, kinds.plain!.files.map(at))).toBe("ready");
    expect(await page.$eval("#error", (e) => (e as HTMLElement).hidden)).toBe(true);
  });
});
