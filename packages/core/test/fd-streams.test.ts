/**
 * readableFromFd and writeStreamToFd on real pipes (FIFOs): the chunks a reader hands over are views of shared
 * read buffers, so every chunk kept by the consumer must still hold its bytes after later reads; a writer whose
 * pipe is full must deliver every byte in order.
 */
import { spawn, spawnSync } from "node:child_process";
import { closeSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { readableFromFd, writeStreamToFd } from "../src/node";
import { randomData, tempDir } from "./helpers";

const t = tempDir("qcowkit-fdstreams-");
afterAll(() => t.cleanup());

describe("file descriptor streams over pipes", () => {
  it("a reader's chunks, all kept until the end, still hold what was written (pipe reads of 64 KiB and less)", async () => {
    const data = randomData(5 * 1024 * 1024 + 12345, 3);
    writeFileSync(t.path("src"), data);
    spawnSync("mkfifo", [t.path("fifo")]);
    // A writer in small, uneven pieces with pauses, so reads come back short and at odd lengths.
    const writer = spawn("python3", [
      "-c",
      "import sys, time\nd = open(sys.argv[1], 'rb').read()\nf = open(sys.argv[2], 'wb', buffering=0)\ni = 0\nn = 1\nwhile i < len(d):\n    f.write(d[i:i + n]); i += n; n = (n * 7 + 13) % 200000 + 1\n    if n % 5 == 0: time.sleep(0.001)\nf.close()",
      t.path("src"),
      t.path("fifo"),
    ]);
    const fd = openSync(t.path("fifo"), "r");
    try {
      const chunks: Uint8Array[] = [];
      const reader = readableFromFd(fd, 256 * 1024).getReader();
      for (;;) {
        const r = await reader.read();
        if (r.done) break;
        chunks.push(r.value);
      }
      expect(chunks.length).toBeGreaterThan(20);
      expect(Buffer.compare(Buffer.concat(chunks), data)).toBe(0);
    } finally {
      closeSync(fd);
      await new Promise((r) => writer.once("exit", r));
    }
  });

  it("a writer into a pipe whose reader starts late gets every byte through, in order", async () => {
    const data = randomData(3 * 1024 * 1024, 4);
    spawnSync("mkfifo", [t.path("fifo2")]);
    const reader = spawn("sh", ["-c", `sleep 0.3; cat "${t.path("fifo2")}" > "${t.path("out2")}"`]);
    const fd = openSync(t.path("fifo2"), "w");
    try {
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          for (let at = 0; at < data.byteLength; at += 100_000) controller.enqueue(data.slice(at, at + 100_000));
          controller.close();
        },
      });
      expect(await writeStreamToFd(stream, fd)).toBe(data.byteLength);
    } finally {
      closeSync(fd);
      await new Promise((r) => reader.once("exit", r));
    }
    expect(Buffer.compare(readFileSync(t.path("out2")), data)).toBe(0);
  });
});
