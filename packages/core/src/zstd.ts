/**
 * zstd cluster compression through a WebAssembly build of the reference library (@bokuweb/zstd-wasm), so
 * the engine stays runtime-agnostic. A compressed cluster is one or more zstd frames followed by sector
 * padding. Each frame's header and block headers are walked here before a frame is handed to the decoder,
 * and the decoder is given room for no more than the rest of the cluster: a frame that declares a content
 * size larger than that (a decompression bomb) is refused before anything is allocated for it.
 *
 * The verdict is QEMU's (a streaming decode into one cluster buffer): frames are decoded one after the other
 * until the cluster is full; the cluster is bad when a frame is corrupt, does not end exactly at the end of
 * the cluster, or the cluster is not filled.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { CompressionCodec } from "./compression";

const ZSTD_MAGIC = 0xfd2fb528;
/** Skippable frames: magic 0x184D2A50 to 0x184D2A5F, a 32-bit length, that many bytes. */
const SKIPPABLE_MAGIC = 0x184d2a50;
/**
 * Largest window QEMU's zstd (64-bit) accepts: 2^31. The WebAssembly build is 32-bit and stops at 2^30; a
 * frame decoded in one call never looks back further than its own output, so a 2^31 window is decoded as 2^30.
 */
const WINDOW_LOG_MAX = 31;
const WINDOW_LOG_MAX_WASM = 30;

const u32le = (d: Uint8Array, at: number): number => (d[at]! | (d[at + 1]! << 8) | (d[at + 2]! << 16) | (d[at + 3]! << 24)) >>> 0;

export interface ZstdFrame {
  /** Bytes of the frame, checksum included. */
  length: number;
  /** Declared content size; -1 when the header does not declare one, and for skippable frames. */
  contentSize: number;
  skippable: boolean;
  /** Window larger than zstd accepts (QEMU refuses such a frame). */
  windowTooLarge: boolean;
  /** Offset of the window descriptor in the frame when its window is larger than the WebAssembly build takes. */
  wideWindowAt: number;
}

/** The zstd frame starting at `at` in `data`, or undefined when there is no complete frame there. */
export function zstdFrameAt(data: Uint8Array, at: number): ZstdFrame | undefined {
  if (at + 6 > data.byteLength) return undefined;
  const magic = u32le(data, at);
  if ((magic & 0xfffffff0) === SKIPPABLE_MAGIC) {
    if (at + 8 > data.byteLength) return undefined;
    const length = 8 + u32le(data, at + 4);
    return at + length <= data.byteLength ? { length, contentSize: -1, skippable: true, windowTooLarge: false, wideWindowAt: -1 } : undefined;
  }
  if (magic !== ZSTD_MAGIC) return undefined;
  const start = at;
  const fhd = data[at + 4]!;
  const fcsFlag = fhd >>> 6;
  const singleSegment = (fhd >>> 5) & 1;
  const checksum = (fhd >>> 2) & 1;
  const didFlag = fhd & 3;
  // The reserved bit: zstd refuses the frame (and the library would be handed a size it cannot allocate).
  if (fhd & 0x08) return undefined;
  at += 5;
  let windowTooLarge = false;
  let wideWindowAt = -1;
  if (!singleSegment) {
    if (at >= data.byteLength) return undefined;
    const windowLog = 10 + (data[at]! >>> 3);
    windowTooLarge = windowLog > WINDOW_LOG_MAX;
    if (windowLog > WINDOW_LOG_MAX_WASM) wideWindowAt = at - start;
    at += 1;
  }
  at += [0, 1, 2, 4][didFlag]!;
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (at + fcsBytes > data.byteLength) return undefined;
  let contentSize = -1;
  if (fcsBytes === 1) contentSize = data[at]!;
  else if (fcsBytes === 2) contentSize = (data[at]! | (data[at + 1]! << 8)) + 256;
  else if (fcsBytes === 4) contentSize = u32le(data, at);
  else if (fcsBytes === 8) contentSize = u32le(data, at) + u32le(data, at + 4) * 2 ** 32; // inexact above 2^53: still huge
  at += fcsBytes;
  for (;;) {
    if (at + 3 > data.byteLength) return undefined;
    const header = data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16);
    at += 3;
    const last = header & 1;
    const type = (header >>> 1) & 3;
    const size = header >>> 3;
    if (type === 3) return undefined;
    at += type === 1 ? 1 : size;
    if (at > data.byteLength) return undefined;
    if (last) break;
  }
  at += checksum ? 4 : 0;
  return at <= data.byteLength ? { length: at - start, contentSize, skippable: false, windowTooLarge, wideWindowAt } : undefined;
}

/** Length in bytes of the zstd frame at the start of `data`, or -1 when it is not a complete frame. */
export function zstdFrameLength(data: Uint8Array): number {
  const frame = zstdFrameAt(data, 0);
  return frame && !frame.skippable ? frame.length : -1;
}

interface ZstdModule {
  /** A URL of zstd.wasm, or its bytes (the browser build); Node's build reads its own file. */
  init(path?: string): Promise<void>;
  compress(data: Uint8Array, level?: number): Uint8Array;
  decompress(data: Uint8Array, opts?: { defaultHeapSize: number }): Uint8Array;
}

const corrupt = (why: string): Qcow2Error => new Qcow2Error("IO_ERROR", `Could not decompress cluster: ${why}`);

/**
 * Decompress the frames at the start of `compressed` into exactly `outLength` bytes. `decodeFrame(frame,
 * room)` decodes one complete frame into at most `room` bytes (the library allocates the declared content
 * size when there is one, `room` otherwise; both are at most `room` here).
 */
export function decompressZstdFrames(
  compressed: Uint8Array,
  outLength: number,
  decodeFrame: (frame: Uint8Array, room: number) => Uint8Array,
): Uint8Array {
  const out = new Uint8Array(outLength);
  let pos = 0;
  let at = 0;
  while (pos < outLength) {
    const frame = zstdFrameAt(compressed, at);
    if (!frame) throw corrupt("corrupt zstd frame");
    if (frame.skippable) {
      at += frame.length;
      continue;
    }
    const room = outLength - pos;
    if (frame.contentSize > room) throw corrupt(`zstd frame declares ${frame.contentSize} bytes, more than the cluster holds`);
    if (frame.windowTooLarge) throw corrupt("zstd frame window too large");
    let bytes = compressed.subarray(at, at + frame.length);
    if (frame.wideWindowAt >= 0) {
      bytes = bytes.slice();
      bytes[frame.wideWindowAt] = (WINDOW_LOG_MAX_WASM - 10) << 3;
    }
    let piece: Uint8Array;
    try {
      piece = decodeFrame(bytes, room);
    } catch {
      throw corrupt("corrupt zstd frame");
    }
    if (piece.byteLength > room) throw corrupt("zstd frame larger than the cluster");
    out.set(piece, pos);
    pos += piece.byteLength;
    at += frame.length;
  }
  return out;
}

/** How long the WebAssembly module may take to start before zstd counts as unavailable. */
export const ZSTD_INIT_TIMEOUT_MS = 15_000;

/** The error for every way the zstd library can fail to load. */
function unavailable(reason: unknown): Qcow2Error {
  const text = reason instanceof Error ? reason.message : String(reason);
  return new Qcow2Error("NOT_SUPPORTED", `zstd unavailable: ${text}`, { cause: reason });
}

export interface ZstdLoadOptions {
  /**
   * The library's WebAssembly bytes. Without it the library finds its zstd.wasm itself (next to its own
   * files: right in Node, wrong in a bundle that did not copy the file). The browser entry passes the
   * bytes bundled with it.
   */
  wasmBytes?: () => Promise<Uint8Array>;
  /** Give up after this many milliseconds (the library never settles when its module fails to start). */
  timeoutMs?: number;
}

/**
 * Load the WebAssembly zstd library and wrap it as a codec. Always settles: a missing, damaged or
 * slow-to-start module is Qcow2Error NOT_SUPPORTED "zstd unavailable: ...".
 */
export async function loadZstdCodec(opts: ZstdLoadOptions = {}): Promise<CompressionCodec> {
  let z: ZstdModule;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    let bytes: Uint8Array | undefined;
    if (opts.wasmBytes) {
      bytes = await opts.wasmBytes();
      // The library reports a module that fails to compile only on the console, and then waits forever.
      const wasm = (globalThis as { WebAssembly?: { compile(bytes: Uint8Array): Promise<unknown> } }).WebAssembly;
      if (!wasm) throw new Error("this runtime has no WebAssembly");
      await wasm.compile(bytes);
    }
    z = (await import("@bokuweb/zstd-wasm")) as unknown as ZstdModule;
    const timeoutMs = opts.timeoutMs ?? ZSTD_INIT_TIMEOUT_MS;
    await Promise.race([
      z.init(bytes as unknown as string | undefined),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the WebAssembly module did not start within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (e) {
    throw unavailable(e);
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
  return {
    async compress(data, maxBytes) {
      const out = z.compress(data, 3);
      return out.byteLength < maxBytes ? out : undefined;
    },
    async decompress(compressed, outLength) {
      return decompressZstdFrames(compressed, outLength, (frame, room) => z.decompress(frame, { defaultHeapSize: room }));
    },
  };
}
