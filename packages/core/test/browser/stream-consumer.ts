/**
 * A plain Web Streams consumer of the core, as a browser page would use it: no Node imports. Bundled for
 * platform=browser by streams-browser.test.ts and run where Node's modules and globals are absent.
 * Returns a summary the test checks.
 */
import { MemoryStore } from "@qcowkit/datafile";
import { Qcow2Image, createQcow2, imageToStream, streamToImage } from "@qcowkit/core";

/** A new empty qcow2 image of `size` bytes in memory, open for writing. */
export async function newImage(size: number): Promise<Qcow2Image> {
  const store = new MemoryStore();
  // createQcow2 closes the store it wrote; keep this one open for the image.
  const keepOpen = new Proxy(store, { get: (t, k) => (k === "close" ? async () => undefined : Reflect.get(t, k, t)) });
  await createQcow2(keepOpen, { size });
  return Qcow2Image.open(store, { readOnly: false });
}

/** Every chunk of a stream, joined. */
export async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array<ArrayBuffer>> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    parts.push(r.value.slice());
    total += r.value.byteLength;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export interface ConsumerSummary {
  streamBytes: number;
  same: boolean;
  magic: string;
  rawSame: boolean;
  /** The message imageToStream's reader rejected with after the signal aborted. */
  aborted: string;
  /** The last progress of imageToStream (qcow2) and of streamToImage, as done/total, and whether each only grew. */
  progressOut: string;
  progressIn: string;
  monotonic: boolean;
  /** streamToImage aborted while its input stalls: the message it rejected with, and whether the input was cancelled. */
  importAborted: string;
  inputCancelled: boolean;
}

/** Records progress calls: the last one as "done/total", and whether `done` never went back. */
function progressLog() {
  const log = { last: "", monotonic: true, done: -1 };
  const on = (done: number, total: number) => {
    if (done < log.done) log.monotonic = false;
    log.done = done;
    log.last = `${done}/${total}`;
  };
  return { log, on };
}

export async function run(): Promise<ConsumerSummary> {
  const size = 8 * 1024 * 1024;
  const src = await newImage(size);
  const data = new Uint8Array(300_000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 9)) & 0xff;
  await src.write(65536 * 3 + 1000, data);
  await src.write(6 * 1024 * 1024, data.subarray(0, 5000));

  const out = progressLog();
  const qcow2 = await collect(imageToStream(src, { compress: true, onProgress: out.on }));
  const back = await newImage(size);
  const into = progressLog();
  await streamToImage(new Blob([qcow2]).stream() as ReadableStream<Uint8Array>, back, { onProgress: into.on });
  const a = new Uint8Array(size);
  const b = new Uint8Array(size);
  await src.read(0, a);
  await back.read(0, b);
  let same = true;
  for (let i = 0; i < size; i++) if (a[i] !== b[i]) same = false;

  const raw = await collect(imageToStream(src, { format: "raw" }));
  let rawSame = raw.byteLength === size;
  for (let i = 0; i < size && rawSame; i++) if (raw[i] !== a[i]) rawSame = false;

  const ac = new AbortController();
  const reader = imageToStream(src, { format: "raw", signal: ac.signal }).getReader();
  await reader.read();
  ac.abort(new Error("user stopped"));
  let aborted = "";
  try {
    for (;;) if ((await reader.read()).done) break;
  } catch (e) {
    aborted = (e as Error).message;
  }

  // An import whose input stalls after its first 64 KiB, then aborted: it must end, and cancel the input.
  let inputCancelled = false;
  let sent = false;
  const stalling = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent) return new Promise<void>(() => undefined);
      sent = true;
      c.enqueue(raw.slice(0, 65536));
    },
    cancel() {
      inputCancelled = true;
    },
  });
  const stop = new AbortController();
  const importing = streamToImage(stalling, await newImage(size), { format: "raw", signal: stop.signal }).then(
    () => "finished",
    (e: Error) => e.message,
  );
  setTimeout(() => stop.abort(new Error("import stopped")), 20);
  const importAborted = await Promise.race([importing, new Promise<string>((r) => setTimeout(() => r("hung"), 3000))]);

  return {
    streamBytes: qcow2.byteLength,
    same,
    magic: String.fromCharCode(...qcow2.subarray(0, 3)),
    rawSame,
    aborted,
    progressOut: out.log.last,
    progressIn: into.log.last,
    monotonic: out.log.monotonic && into.log.monotonic,
    importAborted,
    inputCancelled,
  };
}

/**
 * What a page that relays images does: fetch `url` (a qcow2 or raw image; the response body is a Web stream),
 * stream it into a new in-memory image of `size` bytes, and stream that image out again with `options`.
 * Returns the bytes of the outgoing stream.
 */
export async function relay(url: string, size: number, options: Parameters<typeof imageToStream>[1] = {}): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok || !response.body) throw new Error(`fetch ${url}: ${response.status}`);
  const image = await newImage(size);
  await streamToImage(response.body, image);
  return collect(imageToStream(image, options));
}
