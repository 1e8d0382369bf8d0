/**
 * Node interop for the core's Web Streams: file descriptors (pipes, FIFOs, sockets, character devices, files)
 * as ReadableStreams and as the destination of one, and Node Readable/Writable wrappers. Node only.
 */
import { read, write } from "node:fs";
import type { Readable, Writable } from "node:stream";
import { builtin } from "./builtin";
import { Qcow2Error } from "@qcowkit/spec";

const CHUNK = 1024 * 1024;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fdRead(fd: number, buf: Uint8Array): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, 0, buf.byteLength, null, (e, n) => (e ? reject(e) : resolve(n))));
}

function fdWrite(fd: number, buf: Uint8Array): Promise<number> {
  return new Promise((resolve, reject) => write(fd, buf, 0, buf.byteLength, null, (e, n) => (e ? reject(e) : resolve(n))));
}

const isAgain = (e: unknown) => (e as NodeJS.ErrnoException)?.code === "EAGAIN";

/**
 * Standard descriptors that turned out non-blocking (EAGAIN): Node itself makes a pipe or socket on stdin or
 * stdout non-blocking as soon as process.stdin or process.stdout is first used, and a parent may hand one over
 * that way. Their bytes then go through the process's own Node stream, which libuv waits on with epoll; a
 * timer between tries would leave the pipe idle (a 1 GiB qcow2 to `| cat` took 12 s instead of about 1).
 */
const throughNode = new Set<number>();

function stdStream(fd: number): Readable | Writable | undefined {
  if (fd === 0) return process.stdin;
  if (fd === 1) return process.stdout;
  if (fd === 2) return process.stderr;
  return undefined;
}

const quieted = new WeakSet<object>();

/** Write `bytes` through a Node Writable; resolves once libuv has handed all of them to the kernel. */
function writeThrough(w: Writable, bytes: Uint8Array): Promise<void> {
  // Errors come back through the write's callback; the stream's 'error' event (emitted after it) must not
  // end the process as unhandled.
  if (!quieted.has(w)) {
    quieted.add(w);
    w.on("error", () => undefined);
  }
  return new Promise((resolve, reject) => w.write(bytes, (e) => (e ? reject(e) : resolve())));
}

/** The next chunk of a Node Readable in paused mode (null at its end). */
function readThrough(r: Readable): Promise<Uint8Array | null> {
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const errored = (r as Readable & { errored?: unknown }).errored;
      if (errored) return finish(() => reject(errored));
      const chunk = r.read() as Uint8Array | null;
      if (chunk !== null) return finish(() => resolve(chunk));
      if (r.readableEnded) return finish(() => resolve(null));
    };
    const finish = (settle: () => void): void => {
      r.off("readable", attempt);
      r.off("end", attempt);
      r.off("error", attempt);
      settle();
    };
    r.on("readable", attempt);
    r.on("end", attempt);
    r.on("error", attempt);
    attempt();
  });
}

/** The bytes of an open file descriptor, read in order until its end (pull-driven: no read-ahead). */
export function readableFromFd(fd: number, chunkBytes = CHUNK): ReadableStream<Uint8Array> {
  // Reads go one after the other into one buffer and each is handed over as a view of it, with no copy; a new
  // buffer is made once less than a pipe's capacity (64 KiB, the most one pipe read gives) is left. The views
  // keep their buffer alive until the consumer drops them.
  const refill = Math.min(chunkBytes, 64 * 1024);
  let buf = new Uint8Array(chunkBytes);
  let filled = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        for (;;) {
          if (throughNode.has(fd)) {
            const chunk = await readThrough(stdStream(fd) as Readable).catch((e: unknown) => {
              throw new Qcow2Error("IO_ERROR", `Could not read the input stream: ${(e as Error).message}`, { cause: e });
            });
            if (chunk === null) controller.close();
            else controller.enqueue(chunk);
            return;
          }
          try {
            if (buf.byteLength - filled < refill) {
              buf = new Uint8Array(chunkBytes);
              filled = 0;
            }
            const n = await fdRead(fd, buf.subarray(filled));
            if (n === 0) controller.close();
            else {
              controller.enqueue(buf.subarray(filled, filled + n));
              filled += n;
            }
            return;
          } catch (e) {
            // A non-blocking descriptor (a pipe a parent left in O_NONBLOCK): wait for data.
            if (isAgain(e)) {
              if (stdStream(fd)) throughNode.add(fd);
              else await sleep(2);
              continue;
            }
            throw new Qcow2Error("IO_ERROR", `Could not read the input stream: ${(e as Error).message}`, { cause: e });
          }
        }
      },
    },
    { highWaterMark: 0 },
  );
}

/** Write all of `bytes` to an open file descriptor at its current position (waiting out EAGAIN). */
export async function writeAllToFd(fd: number, bytes: Uint8Array): Promise<void> {
  let chunk = bytes;
  while (chunk.byteLength > 0) {
    if (throughNode.has(fd)) return writeThrough(stdStream(fd) as Writable, chunk);
    try {
      chunk = chunk.subarray(await fdWrite(fd, chunk));
    } catch (e) {
      if (!isAgain(e)) throw e;
      if (stdStream(fd)) throughNode.add(fd);
      else await sleep(2);
    }
  }
}

/** Write a stream to an open file descriptor in order (each chunk written fully before the next is pulled). */
export async function writeStreamToFd(stream: ReadableStream<Uint8Array>, fd: number): Promise<number> {
  let total = 0;
  const reader = stream.getReader();
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) return total;
      await writeAllToFd(fd, r.value);
      total += r.value.byteLength;
    }
  } catch (e) {
    await reader.cancel(e).catch(() => undefined);
    throw e;
  } finally {
    reader.releaseLock();
  }
}

/** A Node Readable (process.stdin, a socket, a file stream) as a Web ReadableStream. */
export function webStreamFromNode(readable: Readable): ReadableStream<Uint8Array> {
  return builtin("node:stream").Readable.toWeb(readable) as unknown as ReadableStream<Uint8Array>;
}

/** A Web ReadableStream as a Node Readable (for pipe(), HTTP responses, ...). */
export function nodeReadableFromWeb(stream: ReadableStream<Uint8Array>): Readable {
  return builtin("node:stream").Readable.fromWeb(stream as unknown as import("node:stream/web").ReadableStream<Uint8Array>);
}

/** Pipe a Web stream into a Node Writable with backpressure; resolves when the writable has finished. */
export async function pipeWebStreamTo(stream: ReadableStream<Uint8Array>, writable: Writable): Promise<void> {
  await builtin("node:stream/promises").pipeline(nodeReadableFromWeb(stream), writable);
}
