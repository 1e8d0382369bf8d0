/**
 * qimg with stream operands, through real pipes and FIFOs (bash): convert to and from `-`, /dev/stdout and
 * FIFOs, incremental streams, info/check/dd on stdin, progress on stderr only, refusals and broken streams.
 * Every qcow2 that comes out is checked with qemu-img check and compared with qemu-img compare.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { QIMG, qemuImg, tempDir } from "./helpers";

const dir = tempDir("qimg-streams-");
const p = (name: string) => path.join(dir, name);

/** Run a bash pipeline in the test folder; `$Q` is qimg. */
function sh(script: string, env: Record<string, string> = {}): { code: number; stdout: Buffer; stderr: string } {
  const r = spawnSync("bash", ["-o", "pipefail", "-c", `Q() { "$NODE_BIN" "$QIMG_JS" "$@"; }\n${script.replace(/\$Q(?![A-Z_])/g, "Q")}`], { cwd: dir, env: { ...process.env, NODE_BIN: process.execPath, QIMG_JS: QIMG, ...env }, maxBuffer: 512 * 1024 * 1024, timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

function expectOk(r: { code: number; stderr: string }): void {
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

async function checkClean(file: string): Promise<void> {
  const r = await qemuImg(["check", file]);
  expect(r.stdout).toContain("No errors were found on the image.");
  expect(r.code).toBe(0);
}

async function same(a: string, b: string, fa = "qcow2", fb = "qcow2"): Promise<void> {
  const r = await qemuImg(["compare", "-f", fa, "-F", fb, a, b]);
  expect(r.stdout).toContain("Images are identical.");
}

/** A raw disk with data, zeros and holes, and its qcow2 copy made by qemu-img. */
function makeDisk(name: string, mib: number, seed: number): void {
  let x = seed;
  const bytes = new Uint8Array(mib * 1024 * 1024);
  for (let at = 0; at < bytes.length; at += 65536 * 3) {
    x = (x * 1103515245 + 12345) >>> 0;
    const len = 512 * (1 + (x % 200));
    for (let i = 0; i < len && at + i < bytes.length; i++) bytes[at + i] = (x >>> (i % 24)) & 0xff;
  }
  writeFileSync(p(`${name}.raw`), bytes);
  spawnSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", p(`${name}.raw`), p(`${name}.qcow2`)]);
}

makeDisk("disk", 6, 1);

/**
 * Start qimg with TMPDIR=`tmp`, wait until its stderr says `waitFor` (a temporary file is made by then), send
 * SIGINT: it dies of the signal and leaves `tmp` empty.
 */
async function expectSigintCleansUp(args: string[], tmp: string, waitFor: string, feed?: (child: ChildProcessWithoutNullStreams) => void): Promise<void> {
  sh(`mkdir -p ${tmp}`);
  const child = spawn(process.execPath, [QIMG, ...args], { env: { ...process.env, TMPDIR: tmp }, stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  child.stdin.on("error", () => undefined);
  feed?.(child);
  for (let i = 0; i < 400 && !err.includes(waitFor); i++) await new Promise((r) => setTimeout(r, 50));
  expect(err).toContain(waitFor);
  const during = readdirSync(tmp).length;
  const done = new Promise<string>((r) => child.on("exit", (code, signal) => r(`${code} ${signal}`)));
  child.kill("SIGINT");
  expect(during).toBe(1);
  expect(await done).toBe("null SIGINT");
  expect(readdirSync(tmp)).toEqual([]);
}

describe("qimg convert to a stream", () => {
  const cases: Array<[string, string]> = [
    ["defaults", ""],
    ["512 B clusters", "-o cluster_size=512"],
    ["2 MiB clusters", "-o cluster_size=2M"],
    ["extended L2", "-o extended_l2=on,cluster_size=64k"],
    ["compat 0.10, refcount default", "-o compat=0.10"],
    ["refcount_bits=1", "-o refcount_bits=1"],
    ["-c zlib", "-c"],
    ["-c zstd, 4 KiB clusters, refcount_bits=8", "-c -o compression_type=zstd,cluster_size=4k,refcount_bits=8"],
  ];
  for (const [label, opts] of cases) {
    it(`${label}: pipe to a file, checked and compared; back through a pipe to raw, byte-exact`, async () => {
      const out = `out-${label.replace(/\W+/g, "_")}.qcow2`;
      expectOk(sh(`$Q convert -O qcow2 ${opts} disk.qcow2 - | cat > ${out}`));
      await checkClean(p(out));
      await same(p("disk.qcow2"), p(out));
      const back = sh(`cat ${out} | $Q convert -f qcow2 -O raw - - | cmp - disk.raw`);
      expect(back.stderr).toMatch(/^(qimg: -: spooling the stream to .*\n)?$/);
      expect(back.code).toBe(0);
    });
  }

  it("is at most qimg convert's file size plus a cluster per GiB", async () => {
    expectOk(sh(`$Q convert -O qcow2 disk.raw - > piped.qcow2 && $Q convert -O qcow2 disk.raw file.qcow2`));
    expect(statSync(p("piped.qcow2")).size).toBeLessThanOrEqual(statSync(p("file.qcow2")).size + 65536);
  });

  it("raw: every byte in order, to /dev/stdout and into a FIFO", () => {
    expectOk(sh(`$Q convert -O raw disk.qcow2 /dev/stdout | cmp - disk.raw`));
    expectOk(sh(`rm -f fifo1 && mkfifo fifo1 && { cmp fifo1 disk.raw & } && $Q convert -O raw disk.qcow2 fifo1 && wait $!`));
  });

  it("a socket on stdout and a character device are stream targets (fstat, not the name)", async () => {
    const sock = p("out.sock");
    const received: Buffer[] = [];
    let ended!: () => void;
    const allReceived = new Promise<void>((r) => (ended = r));
    const server = net.createServer((c) => {
      c.on("data", (d) => received.push(d));
      c.on("end", () => ended());
    });
    await new Promise<void>((r) => server.listen(sock, r));
    const client = net.connect(sock);
    await new Promise<void>((r) => client.on("connect", r));
    const child = spawn(process.execPath, [QIMG, "convert", "-O", "qcow2", p("disk.qcow2"), "-"], { stdio: ["ignore", client, "pipe"] });
    let err = "";
    child.stderr!.on("data", (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    client.end();
    await allReceived;
    client.destroy();
    server.close();
    expect(err).toBe("");
    expect(code).toBe(0);
    writeFileSync(p("from-socket.qcow2"), Buffer.concat(received));
    await checkClean(p("from-socket.qcow2"));
    await same(p("disk.qcow2"), p("from-socket.qcow2"));
    expectOk(sh(`$Q convert -O qcow2 disk.qcow2 /dev/null`));
  });

  it("-p prints progress on stderr only; stdout carries exactly the image", async () => {
    const r = sh(`$Q convert -p -O qcow2 disk.qcow2 - > prog.qcow2`);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^ {4}\(0\.00\/100%\)\r.*\(100\.00\/100%\)\r\n$/s);
    await checkClean(p("prog.qcow2"));
    await same(p("disk.qcow2"), p("prog.qcow2"));
  });

  it("incremental: -B base -F raw carries only the changed clusters and reads as the new disk over the base", async () => {
    const today = new Uint8Array(readFileSync(p("disk.raw")));
    today.fill(0xee, 65536 * 7, 65536 * 7 + 3000);
    today.fill(0, 65536 * 20, 65536 * 22);
    writeFileSync(p("today.raw"), today);
    expectOk(sh(`$Q convert -O qcow2 -B disk.raw -F raw today.raw - | cat > diff.qcow2`));
    await checkClean(p("diff.qcow2"));
    const info = JSON.parse((await qemuImg(["info", "--output=json", p("diff.qcow2")])).stdout);
    expect(info["backing-filename"]).toBe("disk.raw");
    expect(info["backing-filename-format"]).toBe("raw");
    const map = JSON.parse((await qemuImg(["map", "--output=json", p("diff.qcow2")])).stdout) as Array<{ depth: number; data: boolean; zero: boolean; length: number }>;
    const own = map.filter((e) => e.depth === 0);
    expect(own.filter((e) => e.data).reduce((s, e) => s + e.length, 0)).toBe(65536);
    // Cluster 20 was zero in the base already: only cluster 21 changes to zeros.
    expect(own.filter((e) => !e.data && e.zero).reduce((s, e) => s + e.length, 0)).toBe(65536);
    await same(p("diff.qcow2"), p("today.raw"), "qcow2", "raw");
    // Applied over a copy of the base with qemu-img commit, it gives the new disk.
    expectOk(sh(`cp disk.raw applied.raw && cp diff.qcow2 applied.qcow2 && qemu-img rebase -q -u -b applied.raw -F raw applied.qcow2 && qemu-img commit -q applied.qcow2 && cmp applied.raw today.raw`));
    // Read from a pipe, the diff becomes a qcow2 over the same base.
    expectOk(sh(`cat diff.qcow2 | $Q convert -O qcow2 - received.qcow2`));
    const received = JSON.parse((await qemuImg(["info", "--output=json", p("received.qcow2")])).stdout);
    expect(received["backing-filename"]).toBe("disk.raw");
    await checkClean(p("received.qcow2"));
    await same(p("received.qcow2"), p("today.raw"), "qcow2", "raw");
    // Stream to stream: the backing file is found from the current directory; flattened without -B, an
    // incremental stream again with it.
    const flat = sh(`cat diff.qcow2 | $Q convert -O raw - - | cmp - today.raw`);
    expect(flat.code, flat.stderr).toBe(0);
    expect(flat.stderr).toMatch(/^qimg: -: spooling the stream to \S+\n$/);
    expect(sh(`cat diff.qcow2 | $Q convert -O qcow2 -B disk.raw -F raw - - > rediff.qcow2`).code).toBe(0);
    await checkClean(p("rediff.qcow2"));
    await same(p("rediff.qcow2"), p("today.raw"), "qcow2", "raw");
    const remap = JSON.parse((await qemuImg(["map", "--output=json", p("rediff.qcow2")])).stdout) as Array<{ depth: number; data: boolean; length: number }>;
    expect(remap.filter((e) => e.depth === 0 && e.data).reduce((s, e) => s + e.length, 0)).toBe(65536);
    const toRaw = sh(`cat diff.qcow2 | $Q convert -O raw - flat.raw`);
    expect(toRaw.stderr).toBe("qimg: The stream has a backing file (disk.raw): convert it to qcow2, or give -B\n");
    expect(toRaw.code).toBe(1);
  });

  it("a 1 TiB sparse image streams small and comes back through a pipe with bounded memory", async () => {
    expectOk(sh(`qemu-img create -q -f qcow2 big.qcow2 1T && qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 700G 2M' big.qcow2 > /dev/null`));
    const r = sh(`rm -f big2.qcow2; $Q convert -O qcow2 big.qcow2 - | /usr/bin/time -f 'rss=%M' "$NODE_BIN" "$QIMG_JS" convert -f qcow2 -O qcow2 - big2.qcow2`);
    expect(r.code, r.stderr).toBe(0);
    const rss = Number(/rss=(\d+)/.exec(r.stderr)![1]);
    expect(rss).toBeLessThan(300 * 1024); // KiB
    expect(sh(`$Q convert -O qcow2 big.qcow2 - | wc -c`).stdout.toString().trim()).toMatch(/^\d+$/);
    expect(Number(sh(`$Q convert -O qcow2 big.qcow2 - | wc -c`).stdout.toString())).toBeLessThan(4 * 1024 * 1024);
    await checkClean(p("big2.qcow2"));
    await same(p("big.qcow2"), p("big2.qcow2"));
    // Into a raw file: 1 TiB, sparse (only the data is written), memory as small.
    const raw = sh(`rm -f big2.raw; $Q convert -O qcow2 big.qcow2 - | /usr/bin/time -f 'rss=%M' "$NODE_BIN" "$QIMG_JS" convert -f qcow2 -O raw - big2.raw`);
    expect(raw.code, raw.stderr).toBe(0);
    expect(Number(/rss=(\d+)/.exec(raw.stderr)![1])).toBeLessThan(300 * 1024);
    expect(statSync(p("big2.raw")).size).toBe(1024 ** 4);
    expect(statSync(p("big2.raw")).blocks * 512).toBeLessThan(16 * 1024 * 1024);
    await same(p("big.qcow2"), p("big2.raw"), "qcow2", "raw");
    sh(`rm -f big2.raw`);
  });

  it("refuses options a stream cannot honour, in one line, writing nothing", () => {
    for (const [opts, what] of [
      ["-o preallocation=full", "Option 'preallocation'"],
      ["-o data_file=x.data", "Option 'data_file'"],
      ["-o lazy_refcounts=on", "Option 'lazy_refcounts'"],
      ["-n", "-n"],
      ["-n --target-is-zero", "-n"],
      ["--bitmaps", "--bitmaps"],
      ["-o data_file_raw=on", "Option 'data_file_raw'"],
      ["-o encryption=on", "Option 'encryption'"],
      ["--object secret,id=s0,data=pw -o encrypt.format=luks,encrypt.key-secret=s0", "Option 'encrypt.format'"],
    ] as const) {
      const r = sh(`$Q convert -O qcow2 ${opts} disk.qcow2 - | wc -c`);
      expect(r.stderr).toBe(`qimg: ${what} cannot be used when the target is a stream\n`);
      expect(r.code).toBe(1);
      expect(r.stdout.toString().trim()).toBe("0");
    }
    const c = sh(`$Q convert -c -O raw disk.qcow2 - | wc -c`);
    expect(c.stderr).toBe("qimg: Compression not supported for this file format\n");
  });
});

describe("qimg convert from a stream", () => {
  it("raw stdin into qcow2 and raw files (the target grows with the stream)", async () => {
    expectOk(sh(`cat disk.raw | $Q convert -f raw -O qcow2 - in.qcow2 && cat disk.raw | $Q convert -f raw -O raw /dev/stdin in.raw`));
    await checkClean(p("in.qcow2"));
    await same(p("disk.raw"), p("in.qcow2"), "raw");
    expect(Buffer.compare(readFileSync(p("in.raw")), readFileSync(p("disk.raw")))).toBe(0);
  });

  it("qcow2 through a FIFO in one pass, compressed clusters included", async () => {
    expectOk(sh(`$Q convert -c -O qcow2 disk.qcow2 c.qcow2 && rm -f fifo2 && mkfifo fifo2 && { cat c.qcow2 > fifo2 & } && $Q convert -O qcow2 fifo2 fromfifo.qcow2`));
    await checkClean(p("fromfifo.qcow2"));
    await same(p("disk.qcow2"), p("fromfifo.qcow2"));
  });

  it("a qcow2 whose tables point back is spooled under TMPDIR, said once, and removed", async () => {
    const tmp = path.join(dir, "tmp1");
    sh(`mkdir -p ${tmp}`);
    expectOk(sh(`cp disk.qcow2 moved.qcow2 && qemu-img resize -q moved.qcow2 6G && qemu-io -f qcow2 -c 'write -P 7 5G 64k' moved.qcow2 > /dev/null`));
    const r = sh(`cat moved.qcow2 | $Q convert -O qcow2 - unmoved.qcow2`, { TMPDIR: tmp });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`^qimg: -: the stream refers back to earlier bytes; spooling them to ${tmp}/qimg-spool-\\w+/spool\\n$`));
    expect(readdirSync(tmp)).toEqual([]);
    await checkClean(p("unmoved.qcow2"));
    await same(p("moved.qcow2"), p("unmoved.qcow2"));
  });

  it("a truncated, cut mid-cluster or non-qcow2 stream fails in one line with a non-zero exit", () => {
    expectOk(sh(`$Q convert -O qcow2 disk.qcow2 - > whole.qcow2`));
    const size = statSync(p("whole.qcow2")).size;
    for (const cut of [50, 70000, size - 65536 - 777]) {
      const r = sh(`head -c ${cut} whole.qcow2 | $Q convert -f qcow2 -O raw - cut.raw`);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^qimg: (error while converting '-': |Could not open '-': )Truncated stream: it ends at byte \d+\n$/);
    }
    const junk = sh(`head -c 300000 disk.raw | $Q convert -f qcow2 -O raw - junk.raw`);
    expect(junk.code).toBe(1);
    expect(junk.stderr).toBe("qimg: Could not open '-': Image is not in qcow2 format\n");
  });

  it("info -, check - and map - work on a spooled copy; dd if=- of=- copies in order", () => {
    const info = sh(`cat disk.qcow2 | $Q info --output=json -`);
    expect(info.code).toBe(0);
    expect(JSON.parse(info.stdout.toString())["virtual-size"]).toBe(6 * 1024 * 1024);
    expect(info.stderr).toMatch(/^qimg: -: spooling the stream to .*\n$/);
    const check = sh(`cat disk.qcow2 | $Q check -`);
    expect(check.code).toBe(0);
    expect(check.stdout.toString()).toContain("No errors were found on the image.");
    expect(sh(`cat disk.qcow2 | $Q dd -f qcow2 bs=64k count=20 skip=3 if=- of=- | cmp - <(tail -c +196609 disk.raw | head -c $((1310720 - 196608)))`).code).toBe(0);
  });

  it("SIGINT while spooling removes the temporary file", async () => {
    const tmp = path.join(dir, "tmp2");
    await expectSigintCleansUp(["info", "-"], tmp, "spooling", (child) => {
      child.stdout.resume();
      child.stdin.write(readFileSync(p("disk.qcow2")).subarray(0, 200000));
    });
    expect(existsSync(tmp)).toBe(true);
  });
});

describe("qimg convert with streams: concatenation, -l, -c from a stream, data past the planning cache", () => {
  it("several sources concatenate into a stream target as qemu-img concatenates them into a file", async () => {
    expectOk(sh(`qemu-img create -q -f qcow2 cat1.qcow2 3M && qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 2M 512k' cat1.qcow2 > /dev/null`));
    expectOk(sh(`head -c 1536000 disk.raw > cat2.raw && qemu-img create -q -f qcow2 cat3.qcow2 1M && qemu-io -f qcow2 -c 'write -P 3 64k 64k' cat3.qcow2 > /dev/null`));
    expectOk(sh(`qemu-img convert -O qcow2 cat1.qcow2 cat2.raw cat3.qcow2 catref.qcow2`));
    expectOk(sh(`$Q convert -O qcow2 cat1.qcow2 cat2.raw cat3.qcow2 - > catq.qcow2 && $Q convert -O raw cat1.qcow2 cat2.raw cat3.qcow2 - | cat > catr.raw`));
    expectOk(sh(`$Q convert -c -O qcow2 -o compression_type=zstd cat1.qcow2 cat2.raw cat3.qcow2 - > catc.qcow2`));
    const size = (f: string) => JSON.parse(sh(`qemu-img info --output=json ${f}`).stdout.toString())["virtual-size"];
    expect(size("catq.qcow2")).toBe(size("catref.qcow2"));
    expect(statSync(p("catr.raw")).size).toBe(size("catref.qcow2"));
    for (const f of ["catq.qcow2", "catc.qcow2"]) {
      await checkClean(p(f));
      await same(p("catref.qcow2"), p(f));
    }
    await same(p("catref.qcow2"), p("catr.raw"), "qcow2", "raw");
    // As in qemu-img: a backing file or a snapshot makes no sense with several sources.
    const b = sh(`$Q convert -O qcow2 -B cat1.qcow2 -F qcow2 cat1.qcow2 cat2.raw - | wc -c`);
    expect(b.stderr).toBe("qimg: Having a backing file for the target makes no sense when concatenating multiple input images\n");
    expect(b.stdout.toString().trim()).toBe("0");
    const s = sh(`$Q convert -l x -O qcow2 cat1.qcow2 cat2.raw - | wc -c`);
    expect(s.stderr).toBe("qimg: No support for concatenating multiple snapshot\n");
    const fromStream = sh(`cat cat2.raw | $Q convert -f raw -O qcow2 - cat3.qcow2 - | wc -c`);
    expect(fromStream.stderr).toBe("qimg: Concatenating several images is not supported with a stream source\n");
  });

  it("-l snapshot with a stream target streams the snapshot's content", async () => {
    expectOk(sh(`cp disk.qcow2 snap.qcow2 && qemu-img snapshot -c s1 snap.qcow2 && qemu-io -f qcow2 -c 'write -P 9 0 2M' snap.qcow2 > /dev/null`));
    expectOk(sh(`qemu-img convert -l s1 -O qcow2 snap.qcow2 snapref.qcow2`));
    expectOk(sh(`$Q convert -l s1 -O qcow2 snap.qcow2 - > snapout.qcow2 && $Q convert -l snapshot.name=s1 -O raw snap.qcow2 - > snapout.raw`));
    await checkClean(p("snapout.qcow2"));
    await same(p("snapref.qcow2"), p("snapout.qcow2"));
    await same(p("disk.raw"), p("snapout.raw"), "raw", "raw");
    const r = sh(`$Q convert -l nosuch -O qcow2 snap.qcow2 - | wc -c`);
    expect(r.stderr).toBe("qimg: Failed to load snapshot: Can't find snapshot\n");
    expect(r.stdout.toString().trim()).toBe("0");
  });

  it("-c with a stream source stores compressed clusters, raw and qcow2 streams alike", async () => {
    expectOk(sh(`head -c 3000000 < <(yes 'a compressible line of text') > text.raw && qemu-img convert -c -f raw -O qcow2 text.raw textref.qcow2`));
    expectOk(sh(`cat text.raw | $Q convert -c -f raw -O qcow2 - textc.qcow2`));
    expectOk(sh(`$Q convert -O qcow2 disk.qcow2 - | $Q convert -c -f qcow2 -O qcow2 -o compression_type=zstd - diskc.qcow2`));
    for (const [out, src, fmt] of [["textc.qcow2", "text.raw", "raw"], ["diskc.qcow2", "disk.qcow2", "qcow2"]] as const) {
      await checkClean(p(out));
      await same(p(src), p(out), fmt);
      const check = JSON.parse(sh(`qemu-img check --output=json ${out}`).stdout.toString());
      expect(check["compressed-clusters"]).toBeGreaterThan(0);
    }
    // As small as qemu-img's own compressed convert of the file, give or take a cluster.
    expect(statSync(p("textc.qcow2")).size).toBeLessThanOrEqual(statSync(p("textref.qcow2")).size + 65536);
    const raw = sh(`cat text.raw | $Q convert -c -f raw -O raw - textc.raw`);
    expect(raw.stderr).toBe("qimg: Compression not supported for this file format\n");
    expect(raw.code).toBe(1);
  });

  it("data past the 32 MiB planning cache: a local file is read again, a compressed stream waits under TMPDIR (said once, removed)", async () => {
    const tmp = path.join(dir, "tmp3");
    sh(`mkdir -p ${tmp}`);
    expectOk(sh(`head -c 36000000 /dev/urandom > big.raw`));
    // Not compressed, from a local file: nothing under TMPDIR, nothing said.
    const plain = sh(`$Q convert -f raw -O qcow2 big.raw - > big.out.qcow2`, { TMPDIR: tmp });
    expectOk(plain);
    expect(readdirSync(tmp)).toEqual([]);
    await checkClean(p("big.out.qcow2"));
    await same(p("big.raw"), p("big.out.qcow2"), "raw");
    // Compressed: the planned payloads are kept, so no cluster is compressed twice.
    const r = sh(`$Q convert -c -f raw -O qcow2 big.raw - > bigc.out.qcow2`, { TMPDIR: tmp });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`^qimg: big.raw: the planned data exceeds the memory cache; keeping the rest in ${tmp}/qimg-spool-\\w+/spool\\n$`));
    expect(readdirSync(tmp)).toEqual([]);
    await checkClean(p("bigc.out.qcow2"));
    await same(p("big.raw"), p("bigc.out.qcow2"), "raw");
    sh(`rm -f big.raw big.out.qcow2 bigc.out.qcow2`);
  });

  it("non-blocking pipes on stdin and stdout with a slow peer: every byte arrives, in order", async () => {
    // A parent may hand qimg non-blocking pipes (and Node makes stdout one as soon as it is looked at): the
    // peer here starts late, so qimg's first writes and reads find the pipe full or empty (EAGAIN).
    const nonBlocking = `python3 -c 'import fcntl, os, sys
for fd in (0, 1):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
os.execvp(sys.argv[1], sys.argv[1:])' "$NODE_BIN" "$QIMG_JS"`;
    expectOk(sh(`head -c 36000000 /dev/urandom > big.raw`));
    expectOk(sh(`${nonBlocking} convert -f raw -O qcow2 big.raw - | { sleep 0.5; cat; } > slow.qcow2`));
    await checkClean(p("slow.qcow2"));
    await same(p("big.raw"), p("slow.qcow2"), "raw");
    expectOk(sh(`{ sleep 0.5; cat slow.qcow2; } | ${nonBlocking} convert -f qcow2 -O raw - slow.raw`));
    await same(p("big.raw"), p("slow.raw"), "raw", "raw");
    expectOk(sh(`{ sleep 0.5; cat big.raw; } | ${nonBlocking} convert -f raw -O raw - - | { sleep 0.5; cat; } | cmp - big.raw`));
    sh(`rm -f big.raw slow.qcow2 slow.raw`);
  });
});

describe("qimg convert with streams: chains, sizes per option, progress, refusals, broken streams", () => {
  it("a backing chain is flattened into the stream: no backing file, same content, back to raw byte-exact", async () => {
    expectOk(sh(`qemu-img create -q -f qcow2 -b disk.qcow2 -F qcow2 chain-top.qcow2 && qemu-io -f qcow2 -c 'write -P 44 1M 300k' -c 'write -z 3M 128k' chain-top.qcow2 > /dev/null`));
    expectOk(sh(`qemu-img convert -O raw chain-top.qcow2 chain-top.raw`));
    expectOk(sh(`$Q convert -O qcow2 chain-top.qcow2 - | cat > chain-flat.qcow2`));
    const info = JSON.parse(sh(`qemu-img info --output=json chain-flat.qcow2`).stdout.toString());
    expect(info["backing-filename"]).toBeUndefined();
    await checkClean(p("chain-flat.qcow2"));
    await same(p("chain-top.qcow2"), p("chain-flat.qcow2"));
    const back = sh(`cat chain-flat.qcow2 | $Q convert -O raw - - | cmp - chain-top.raw`);
    expect(back.code).toBe(0);
  });

  it("for each create option, the stream is at most qimg convert's file plus one cluster (a 6 MiB disk: under 1 GiB)", () => {
    for (const [opts, cluster] of [
      ["-o cluster_size=512", 512],
      ["-o cluster_size=2M", 2 * 1024 * 1024],
      ["-o extended_l2=on", 65536],
      ["-o refcount_bits=1", 65536],
      ["-o compat=0.10", 65536],
      ["-c", 65536],
      ["-c -o compression_type=zstd,cluster_size=4k", 4096],
    ] as const) {
      const r = sh(`$Q convert -O qcow2 ${opts} disk.qcow2 - > opt-stream.qcow2 && rm -f opt-file.qcow2 && $Q convert -O qcow2 ${opts} disk.qcow2 opt-file.qcow2`);
      expectOk(r);
      const streamed = statSync(p("opt-stream.qcow2")).size;
      const file = statSync(p("opt-file.qcow2")).size;
      expect(streamed, opts).toBeLessThanOrEqual(file + cluster);
    }
  });

  it("-p with a stream source: progress on stderr only, stdout carries exactly the image", async () => {
    const r = sh(`cat disk.qcow2 | $Q convert -p -f qcow2 -O raw - - | cmp - disk.raw`);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^ {4}\(0\.00\/100%\)\r/);
    expect(r.stderr).toMatch(/\(100\.00\/100%\)\r\n$/);
    expect(r.stderr.replace(/ {4}\(\d+\.\d\d\/100%\)\r/g, "").replace(/qimg: -: spooling the stream to \S+\n/, "")).toBe("\n");
    const f = sh(`cat disk.qcow2 | $Q convert -p -f qcow2 -O qcow2 - prog-in.qcow2`);
    expect(f.code).toBe(0);
    expect(f.stdout.byteLength).toBe(0);
    expect(f.stderr).toMatch(/^( {4}\(\d+\.\d\d\/100%\)\r)+\n$/);
    await same(p("disk.qcow2"), p("prog-in.qcow2"));
  });

  it("a FIFO named like an image file is a stream target (fstat decides, not the name)", async () => {
    const r = sh(`rm -f named.qcow2 && mkfifo named.qcow2 && { cat named.qcow2 > got-named.qcow2 & } && $Q convert -O qcow2 -c disk.qcow2 named.qcow2 && wait $!`);
    expectOk(r);
    expect(statSync(p("named.qcow2")).isFIFO()).toBe(true);
    await checkClean(p("got-named.qcow2"));
    await same(p("disk.qcow2"), p("got-named.qcow2"));
  });

  it("incremental over a qcow2 base, compat 0.10 (no zero flag: zeroed clusters are carried as data)", async () => {
    expectOk(sh(`cp disk.qcow2 today.qcow2 && qemu-io -f qcow2 -c 'write -P 91 128k 10k' -c 'write -P 92 4M 64k' -c 'write -z 1920k 64k' today.qcow2 > /dev/null`));
    // Cluster 30 (1920k) holds data in the base: zeroing it is a change.
    expect(readFileSync(p("disk.raw")).subarray(30 * 65536, 31 * 65536).some((b) => b !== 0)).toBe(true);
    expectOk(sh(`$Q convert -O qcow2 -o compat=0.10 -B disk.qcow2 -F qcow2 today.qcow2 - | cat > inc10.qcow2`));
    await checkClean(p("inc10.qcow2"));
    const info = JSON.parse(sh(`qemu-img info --output=json inc10.qcow2`).stdout.toString());
    expect(info["format-specific"].data.compat).toBe("0.10");
    expect(info["backing-filename"]).toBe("disk.qcow2");
    const map = JSON.parse(sh(`qemu-img map --output=json inc10.qcow2`).stdout.toString()) as Array<{ depth: number; data: boolean; length: number }>;
    const own = map.filter((e) => e.depth === 0 && e.data).reduce((s, e) => s + e.length, 0);
    // Clusters 2 and 64 changed, cluster 30 was zeroed (carried as zero data).
    expect(own).toBe(3 * 65536);
    await same(p("inc10.qcow2"), p("today.qcow2"));
    expectOk(sh(`cp disk.qcow2 applied10.qcow2 && cp inc10.qcow2 over10.qcow2 && qemu-img rebase -q -u -b applied10.qcow2 -F qcow2 over10.qcow2 && qemu-img commit -q over10.qcow2`));
    await same(p("applied10.qcow2"), p("today.qcow2"));
  });

  it("a truncated or non-qcow2 stream into a stream target fails in one line, exit 1 (not zeros and success)", () => {
    expectOk(sh(`$Q convert -O qcow2 disk.qcow2 - > whole2.qcow2`));
    const size = statSync(p("whole2.qcow2")).size;
    for (const cut of [300, 65536 * 3 + 5, size - 65536 - 777]) {
      const r = sh(`head -c ${cut} whole2.qcow2 | $Q convert -f qcow2 -O raw - - | wc -c > /dev/null`);
      expect(r.code, String(cut)).toBe(1);
      expect(r.stderr).toMatch(/^(qimg: -: spooling the stream to \S+\n)?qimg: (error while converting '-': |Could not open '-': )Truncated stream: it ends at byte \d+\n$/);
    }
    const junk = sh(`head -c 300000 disk.raw | $Q convert -f qcow2 -O qcow2 - - | wc -c`);
    expect(junk.stderr).toBe("qimg: Could not open '-': Image is not in qcow2 format\n");
    expect(junk.code).toBe(1);
  });

  it("SIGINT while the planned data waits under TMPDIR removes the temporary file", async () => {
    sh(`head -c 40000000 /dev/urandom > int.raw`);
    // Nobody reads standard output: the stream stalls once the pipe is full, after the plan has spilled
    // (compressed: a local file's planned data is kept, not read again).
    await expectSigintCleansUp(["convert", "-c", "-f", "raw", "-O", "qcow2", p("int.raw"), "-"], path.join(dir, "tmp4"), "keeping the rest");
    sh(`rm -f int.raw`);
  });
});
