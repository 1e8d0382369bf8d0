/**
 * Block node features QEMU's iotests 072 089 214 226 133 158 082 250 162 need, each against qemu-img/qemu-io: a qcow2
 * image on the guest disk of another (file.driver=qcow2, in options and json: names), the compress filter,
 * the file protocol drivers opened on their own, reopen's refusals for children, backing.encrypt.*,
 * json: names shown as plain file names, convert --salvage, and the formats QEMU knows but cannot create.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { seededRandom } from "@qcowkit/datafile/testing";
import { describe, expect, it } from "vitest";
import { filterTimings, normalizeQemu, qemuImg, qemuIo, qimg, qio, subDir, tempDir } from "./helpers";

const root = tempDir("iotests-misc-");

/** Run the same arguments (made for each image) with ours and QEMU's; the same output and exit code. */
async function sameIo(args: (img: string) => string[], ours: string, theirs: string, tool: "io" | "img" = "io"): Promise<string> {
  const [o, t] = tool === "io" ? await Promise.all([qio(args(ours)), qemuIo(args(theirs))]) : await Promise.all([qimg(args(ours)), qemuImg(args(theirs))]);
  const strip = (text: string, img: string) => filterTimings(text.split(img).join("IMG"));
  expect(strip(o.stderr, ours)).toBe(strip(normalizeQemu(t.stderr), theirs));
  expect(strip(o.stdout, ours)).toBe(strip(normalizeQemu(t.stdout), theirs));
  expect(o.code).toBe(t.code);
  return o.stdout;
}

/**
 * A qcow2 image whose 64 MiB guest disk holds (as raw bytes) another qcow2 image with seeded data (test 089's
 * way: the outer disk is larger than the inner file, so the inner image can allocate); twins.
 */
async function nestedTwins(dir: string): Promise<{ ours: string; theirs: string; writes: string[] }> {
  const inner = path.join(dir, "inner.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", inner, "8M"]);
  const rnd = seededRandom(72);
  const writes = ["write -P 42 0 512"];
  for (let i = 0; i < 6; i++) writes.push(`write -P ${1 + Math.floor(rnd() * 250)} ${Math.floor(rnd() * 16000) * 512} ${(1 + Math.floor(rnd() * 64)) * 512}`);
  await qemuIo([...writes.flatMap((c) => ["-c", c]), "-f", "qcow2", inner]);
  const ours = path.join(dir, "ours.qcow2");
  await qemuImg(["create", "-q", "-f", "qcow2", ours, "64M"]);
  await qemuImg(["convert", "-n", "-f", "raw", "-O", "qcow2", inner, ours]);
  const theirs = path.join(dir, "theirs.qcow2");
  fs.copyFileSync(ours, theirs);
  return { ours, theirs, writes };
}

describe("qcow2 on top of qcow2 (file.driver=qcow2)", () => {
  it("reads the inner image's guest data through open -o and a json: name, as qemu-io", async () => {
    const dir = subDir(root, "nested-read");
    const { ours, theirs, writes } = await nestedTwins(dir);
    const reads = writes.map((w) => w.replace("write", "read"));
    const viaOpen = (img: string) => ["-c", `open -o driver=qcow2,file.driver=qcow2,file.file.filename=${img}`, ...reads.flatMap((c) => ["-c", c])];
    const out = await sameIo(viaOpen, ours, theirs);
    expect(out).not.toContain("Pattern verification failed");
    const viaJson = (img: string) => [...reads.flatMap((c) => ["-c", c]), `json:{"driver":"qcow2","file":{"driver":"qcow2","file":{"filename":"${img}"}}}`];
    await sameIo(viaJson, ours, theirs);
    // Opened as one layer, the outer image's guest disk is the inner image's bytes: the patterns differ.
    expect(await sameIo((img) => ["-c", reads[0]!, "-f", "qcow2", img], ours, theirs)).toContain("Pattern verification failed");
  });

  it("writes land in the inner image as qemu-io places them", async () => {
    const dir = subDir(root, "nested-write");
    const { ours, theirs } = await nestedTwins(dir);
    const args = (img: string) => [
      "-c", `open -o driver=qcow2,file.driver=qcow2,file.file.filename=${img}`,
      "-c", "write -P 0x5a 1M 64k", "-c", "read -P 0x5a 1M 64k", "-c", "write -P 1 7M 1M", "-c", "info",
    ];
    expect(await sameIo(args, ours, theirs)).not.toContain("failed");
    // The inner images match, cluster for cluster, and the outer files as well.
    expect((await qemuImg(["compare", "-f", "qcow2", "-F", "qcow2", ours, theirs])).stdout).toBe("Images are identical.\n");
    expect((await qemuImg(["compare", "-f", "raw", "-F", "raw", ours, theirs])).stdout).toBe("Images are identical.\n");
    expect((await qemuImg(["check", ours])).code).toBe(0);
  });

  it("a write that would allocate past the end of the inner disk fails with EIO (QEMU accepts it and loses the data)", async () => {
    const dir = subDir(root, "nested-past-end");
    const inner = path.join(dir, "inner.qcow2");
    const img = path.join(dir, "outer.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", inner, "8M"]);
    // The outer disk is exactly the inner file: no room for new clusters.
    await qemuImg(["convert", "-f", "raw", "-O", "qcow2", inner, img]);
    const r = await qio(["-c", `open -o driver=qcow2,file.driver=qcow2,file.file.filename=${img}`, "-c", "write -P 1 1M 64k"]);
    expect(r.stdout).toBe("write failed: Input/output error\n");
    expect((await qemuImg(["check", img])).code).toBe(0);
    // The nested image stays consistent (as after any failed write), and reads as it did.
    const nested = `driver=qcow2,file.driver=qcow2,file.file.filename=${img}`;
    expect((await qemuImg(["check", "--image-opts", nested])).stdout).toContain("No errors were found on the image.");
    expect((await qemuIo(["-c", "read -P 0 0 8M", "--image-opts", nested])).stdout).not.toContain("failed");
  });
});

describe("the compress filter (driver=compress)", () => {
  it("unaligned writes are stored as compressed clusters, as QEMU's (test 214's case)", async () => {
    const dir = subDir(root, "compress");
    const ours = path.join(dir, "ours.qcow2");
    const theirs = path.join(dir, "theirs.qcow2");
    for (const img of [ours, theirs]) await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", img, "2M"]);
    const opts = (img: string) => ["--image-opts", `driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=${img}`];
    await sameIo((img) => ["-c", "write -P 0xbb 0 229376", ...opts(img)], ours, theirs);
    await sameIo((img) => ["-c", "write -P 0xcc 278528 229376", `json:{"driver":"compress","file":{"driver":"qcow2","file":{"driver":"file","filename":"${img}"}}}`], ours, theirs);
    // A compressed cluster cannot be overwritten (EIO); reads see the data; info names the filter.
    await sameIo((img) => ["-c", "write -P 1 512 512", "-c", "read -P 0xbb 0 512", "-c", "read -P 0 229376 49152", "-c", "info", ...opts(img)], ours, theirs);
    expect((await qemuImg(["compare", ours, theirs])).stdout).toBe("Images are identical.\n");
    const check = (text: string) => JSON.parse(text)["compressed-clusters"];
    expect(check((await qemuImg(["check", "--output=json", ours])).stdout)).toBe(8);
    expect(check((await qemuImg(["check", "--output=json", ours])).stdout)).toBe(check((await qemuImg(["check", "--output=json", theirs])).stdout));
  });

  it("refuses a child that cannot store compressed clusters, in QEMU's words", async () => {
    const dir = subDir(root, "compress-raw");
    const ours = path.join(dir, "ours.raw");
    const theirs = path.join(dir, "theirs.raw");
    for (const img of [ours, theirs]) await qemuImg(["create", "-q", "-f", "raw", img, "1M"]);
    await sameIo((img) => ["-c", "write 0 512", "--image-opts", `driver=compress,file.driver=raw,file.file.filename=${img}`], ours, theirs);
  });
});

describe("file protocol drivers opened on their own (driver=file, host_device, host_cdrom)", () => {
  it("refuse the files their driver does not take, as qemu-io (test 226)", async () => {
    const dir = subDir(root, "protocols");
    const notAFile = path.join(dir, "a-directory");
    fs.mkdirSync(notAFile);
    for (const driver of ["file", "host_device", "host_cdrom"]) {
      for (const ro of ["-r ", ""]) {
        await sameIo(() => ["-c", `open ${ro}-o driver=${driver},filename=${notAFile}`], notAFile, notAFile);
        await sameIo(() => ["-c", `open ${ro}-o driver=${driver},filename=/dev/null,locking=off`], notAFile, notAFile);
      }
    }
  });

  it("a regular file opened with driver=file reads its bytes as they are", async () => {
    const dir = subDir(root, "file-node");
    const img = path.join(dir, "x.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", img, "1M"]);
    await sameIo(() => ["-c", `open -o driver=file,filename=${img}`, "-c", "read -v 0 16", "-c", "info"], img, img);
  });
});

describe("reopen keeps the children's node names and drivers (test 133)", () => {
  it("refuses changes and accepts the same values, as qemu-io", async () => {
    const dir = subDir(root, "reopen");
    const base = path.join(dir, "base.qcow2");
    const img = path.join(dir, "top.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"]);
    await qemuImg(["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img]);
    const cases = [
      ["-c", "reopen -o file.node-name=foo", img],
      ["-c", "reopen -o backing.node-name=foo", img],
      ["-c", `open -o file.node-name=foo ${img}`, "-c", "reopen -o file.node-name=foo"],
      ["-c", `open -o backing.node-name=foo ${img}`, "-c", "reopen -o backing.node-name=foo", "-c", "reopen"],
      ["-c", "reopen -o file.driver=qcow2", img],
      ["-c", "reopen -o backing.driver=file", img],
      ["-c", "reopen -o backing.driver=qcow2", img],
      ["-c", "reopen -o auto-read-only=qux", img],
      ["-f", "null-co", "-c", "reopen", "-c", "info", "json:{'driver': 'null-co', 'size': 65536}"],
    ];
    for (const c of cases) await sameIo(() => c, img, img);
  });
});

describe("backing.encrypt.* (test 158)", () => {
  it("opens an encrypted backing file with its own key secret, and reads what qemu-io reads", async () => {
    const dir = subDir(root, "backing-encrypt");
    const base = path.join(dir, "base.qcow2");
    const secret = "secret,id=sec0,data=astrochicken";
    await qemuImg(["create", "-q", "-f", "qcow2", "--object", secret, "-o", "encryption=on,encrypt.key-secret=sec0", base, "1M"]);
    await qemuIo(["--object", secret, "-c", "write -P 0xa 0 1M", "--image-opts", `driver=qcow2,file.filename=${base},encrypt.key-secret=sec0`]);
    const mk = async (name: string) => {
      const img = path.join(dir, name);
      await qemuImg(["create", "-q", "-f", "qcow2", "-u", "--object", secret, "-o", "encryption=on,encrypt.key-secret=sec0", "-b", base, "-F", "qcow2", img, "1M"]);
      return img;
    };
    const ours = await mk("ours.qcow2");
    const theirs = await mk("theirs.qcow2");
    const spec = (img: string) => `driver=qcow2,file.filename=${img},backing.driver=qcow2,backing.file.filename=${base},backing.encrypt.key-secret=sec0,encrypt.key-secret=sec0`;
    await sameIo((img) => ["--object", secret, "-c", "write -P 0xe 0 1024", "--image-opts", spec(img)], ours, theirs);
    const out = await sameIo((img) => ["--object", secret, "-c", "read -P 0xe 0 1024", "-c", "read -P 0xa 1024 64512", "--image-opts", spec(img)], ours, theirs);
    expect(out).not.toContain("Pattern verification failed");
    // Without the backing file's secret the backing image cannot be opened, in both.
    await sameIo((img) => ["--object", secret, "-c", "read 0 512", "--image-opts", `driver=qcow2,file.filename=${img},encrypt.key-secret=sec0`], ours, theirs);
  });
});

describe("json: names and options given directly (tests 089 110)", () => {
  it("a json: name that only locates the file is shown as the file's name; -f and open -o win over its driver", async () => {
    const dir = subDir(root, "json-names");
    const base = path.join(dir, "base.qcow2");
    const img = path.join(dir, "top.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", base, "4M"]);
    await qemuImg(["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", img]);
    for (const name of [
      `json:{"driver":"qcow2","file.filename":"${img}"}`,
      `json:{'driver':'qcow2','file':{'driver':'file','filename':'${img}'}}`,
      `json:{"driver":"qcow2","cache-clean-interval":5,"file":{"driver":"file","filename":"${img}"}}`,
    ]) {
      const out = await sameIo(() => ["info", name], img, img, "img");
      expect(out).toContain("actual path:");
    }
    await sameIo(() => ["-c", `open -o driver=qcow2 json:{"driver":"raw","file.filename":"${img}"}`, "-c", "info"], img, img);
    await sameIo(() => ["info", "-f", "raw", `json:{"driver":"qcow2","file.filename":"${img}"}`], img, img, "img");
  });
});

describe("convert --salvage and uncreatable formats (test 082)", () => {
  it("copies unreadable sectors as zeros with a warning each, as qemu-img", async () => {
    const dir = subDir(root, "salvage");
    const src = path.join(dir, "src.qcow2");
    await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", src, "256k"]);
    await qemuIo(["-c", "write -c -P 0x11 0 64k", "-c", "write -P 0x22 64k 64k", "-c", "write -c -P 0x33 128k 64k", "-f", "qcow2", src]);
    // The first compressed cluster's data is overwritten with garbage: it no longer decompresses (EIO).
    const fd = fs.openSync(src, "r+");
    const header = Buffer.alloc(48);
    fs.readSync(fd, header, 0, 48, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const l1e = Buffer.alloc(8);
    fs.readSync(fd, l1e, 0, 8, l1);
    const l2 = Number(l1e.readBigUInt64BE(0) & 0x00fffffffffffe00n);
    const entry = Buffer.alloc(8);
    fs.readSync(fd, entry, 0, 8, l2);
    // 64 KiB clusters: the host offset is the low 54 bits of a compressed descriptor.
    const host = Number(entry.readBigUInt64BE(0) & ((1n << 54n) - 1n));
    fs.writeSync(fd, Buffer.alloc(64, 0xff), 0, 64, host);
    fs.closeSync(fd);
    expect((await qemuImg(["convert", "-O", "raw", src, path.join(dir, "fails.raw")])).code).toBe(1);
    const ours = path.join(dir, "ours.raw");
    const theirs = path.join(dir, "theirs.raw");
    const o = await qimg(["convert", "--salvage", "-O", "raw", src, ours]);
    const t = await qemuImg(["convert", "--salvage", "-O", "raw", src, theirs]);
    expect(o.code).toBe(t.code);
    expect(o.code).toBe(0);
    expect(o.stderr.split("\n").length).toBe(129);
    expect(o.stderr).toBe(normalizeQemu(t.stderr));
    expect(fs.readFileSync(ours).equals(fs.readFileSync(theirs))).toBe(true);
    await sameIo(() => ["convert", "-C", "--salvage", "-O", "qcow2", src, path.join(dir, "never.qcow2")], src, src, "img");
  });

  it("names the formats QEMU has but cannot create as qemu-img does", async () => {
    for (const args of [["create", "-f", "bochs", "-o", "help"], ["convert", "-O", "bochs", "-o", "help"], ["create", "-f", "null-co", "-o", "help"], ["create", "-f", "nosuchformat", "-o", "help"]]) {
      await sameIo(() => args, "", "", "img");
    }
  });
});

describe("host placement after a discard (test 250)", () => {
  it("freed clusters are reused at once, lowest first, as qemu-io places them", async () => {
    const dir = subDir(root, "reuse");
    const ours = path.join(dir, "ours.qcow2");
    const theirs = path.join(dir, "theirs.qcow2");
    // Both created by qemu-img (a copy would not keep the file's holes, which map reports as zero).
    for (const img of [ours, theirs]) await qemuImg(["create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,preallocation=metadata", img, "16M"]);
    const rnd = seededRandom(250);
    const list = ["discard 0 640k", "discard 15744k 640k", "write -P 1 15744k 640k", "write -P 2 0 640k"];
    for (let i = 0; i < 8; i++) {
      const at = Math.floor(rnd() * 250) * 64;
      list.push(rnd() < 0.5 ? `discard ${at}k ${64 * (1 + Math.floor(rnd() * 4))}k` : `write -P ${i + 3} ${at}k ${64 * (1 + Math.floor(rnd() * 4))}k`);
    }
    await sameIo((img) => [...list.flatMap((c) => ["-c", c]), "-f", "qcow2", img], ours, theirs);
    const map = async (img: string) => (await qemuImg(["map", "--output=json", img])).stdout;
    expect(await map(ours)).toBe(await map(theirs));
    expect((await qemuImg(["check", ours])).code).toBe(0);
  });
});

describe("nbd and ssh nodes in json: names and --image-opts (test 162)", () => {
  /** qemu-nbd serving null-co:// on a Unix socket until killed (its pid file). */
  function nbdServer(dir: string): { socket: string; stop: () => void } {
    const socket = path.join(dir, "nbd.sock");
    const pidFile = path.join(dir, "nbd.pid");
    const r = spawnSync("qemu-nbd", ["-k", socket, "-f", "raw", "--persistent", "--fork", "--pid-file", pidFile, "null-co://"], { timeout: 20_000 });
    expect(r.status).toBe(0);
    return { socket, stop: () => process.kill(Number(fs.readFileSync(pidFile, "utf8").trim())) };
  }

  it("opens the export a json: nbd node names, by the name QEMU shows", async () => {
    const server = nbdServer(subDir(root, "nbd-json"));
    try {
      const imageLine = (text: string) => text.split("\n").filter((l) => l.startsWith("image:") || l.startsWith("virtual size:"));
      for (const name of [`json:{"driver": "nbd", "path": "${server.socket}"}`, `json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"${server.socket}"}}}`]) {
        const [o, t] = [await qimg(["info", name]), await qemuImg(["info", name])];
        expect(o.code).toBe(0);
        expect(imageLine(o.stdout)).toEqual(imageLine(t.stdout));
        expect(imageLine(o.stdout)[0]).toBe(`image: nbd+unix://?socket=${server.socket}`);
      }
      // A qcow2 node over the export: refused as QEMU refuses it.
      await sameIo((s) => ["info", "--image-opts", `driver=qcow2,file.driver=nbd,file.path=${s}`], server.socket, server.socket, "img");
    } finally {
      server.stop();
    }
  });

  it("fails as qemu-img for unreachable nbd and ssh servers and bad ports", async () => {
    const names = [
      'json:{"driver": "nbd", "host": -1}',
      `json:{"driver": "nbd", "path": "${path.join(root, "no-such.sock")}"}`,
      'json:{"driver": "ssh", "host": "127.0.0.1", "port": "0", "path": "/foo"}',
      'json:{"driver": "ssh", "host": "127.0.0.1", "port": 0.42, "path": "/foo"}',
    ];
    for (const name of names) await sameIo(() => ["info", name], "", "", "img");
    for (const opts of ["driver=ssh,host=127.0.0.1,port=0,path=/foo", "driver=ssh,host=127.0.0.1,port=0.42,path=/foo"]) {
      await sameIo(() => ["info", "--image-opts", opts], "", "", "img");
    }
  });

  it("names blkdebug over null-co blkdebug:CONFIG:null-co://, as qemu-img", async () => {
    const dir = subDir(root, "blkdebug-name");
    fs.writeFileSync(path.join(dir, "42"), "");
    const [o, t] = [await qimg(["info", 'json:{"driver": "blkdebug", "config": 42, "image.driver": "null-co"}'], dir), await qemuImg(["info", 'json:{"driver": "blkdebug", "config": 42, "image.driver": "null-co"}'], dir)];
    expect(o.code).toBe(0);
    expect(o.stdout.split("\n")[0]).toBe("image: blkdebug:42:null-co://");
    expect(o.stdout.split("\n")[0]).toBe(t.stdout.split("\n")[0]);
  });
});

describe("json: names QEMU cannot rebuild, and quorum (test 110)", () => {
  it("resolves a relative backing file through blkdebug, not through quorum, as qemu-img info", async () => {
    const dir = subDir(root, "refresh-filename");
    await qemuImg(["create", "-q", "-f", "qcow2", path.join(dir, "t.qcow2.base"), "64M"]);
    await qemuImg(["create", "-q", "-f", "qcow2", "-b", "t.qcow2.base", "-F", "qcow2", path.join(dir, "t.qcow2"), "64M"]);
    await qemuIo(["-c", "write -P 42 0 512", "-f", "qcow2", path.join(dir, "t.qcow2")]);
    fs.copyFileSync(path.join(dir, "t.qcow2"), path.join(dir, "t.qcow2.copy"));
    const img = path.join(dir, "t.qcow2");
    const names = [
      `json:{'driver':'qcow2','file':{'driver':'file','filename':'${img}'}}`,
      `json:{'driver':'qcow2','file':{'driver':'blkdebug','image':{'driver':'file','filename':'${img}'},'set-state':[{'event':'read_aio','new_state':42}]}}`,
      `json:{'driver':'qcow2','file':{'driver':'quorum','vote-threshold':1,'children':[{'driver':'file','filename':'${img}'},{'driver':'file','filename':'${img}.copy'}]}}`,
    ];
    // QEMU writes the json: name it keeps in its own spelling (the iotest filters it too).
    const lines = (text: string) => text.split("\n").filter((l) => !l.startsWith("disk size:")).map((l) => (l.startsWith("image: json:") ? "image: json:{...}" : l));
    const seen: string[] = [];
    for (const name of names) {
      const [o, t] = [await qimg(["info", name]), await qemuImg(["info", name])];
      expect(o.code).toBe(0);
      expect(lines(o.stdout)).toEqual(lines(t.stdout));
      seen.push(o.stdout.split("\n").find((l) => l.startsWith("backing file:"))!);
    }
    expect(seen[1]).toContain("(actual path: ");
    expect(seen[2]).toContain("(cannot determine actual path)");
    // Reads through the quorum: the two children agree, so a threshold of two is met.
    // (backing: null: QEMU cannot resolve a relative backing name under a quorum; neither can qcowkit.)
    await sameIo((i) => ["-c", "read -P 42 0 512", `json:{'driver':'qcow2','backing':null,'file':{'driver':'quorum','vote-threshold':2,'children':[{'driver':'file','filename':'${i}'},{'driver':'file','filename':'${i}.copy'}]}}`], img, img);
  });
});
