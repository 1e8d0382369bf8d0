/**
 * `driver=blkdebug` over a format node, with request limits (align, max-transfer, opt-write-zero,
 * max-write-zero, opt-discard, max-discard): QEMU's block layer splits requests to such a node as below,
 * which changes what reaches the format (a write-zeroes fragment smaller than the zero alignment becomes
 * a write of zero bytes, and allocates). Reads and plain writes reach it with the same bytes.
 */
import type { BlockImage, ZeroOptions } from "@qcowkit/core/node";
import type { BlkdebugLimits } from "@qcowkit/datafile";
import { Qcow2Error } from "@qcowkit/spec";

const INT_MAX = 2 ** 31 - 1;
/** QEMU's bounce buffer limit for the write fallback of write-zeroes (32768 sectors). */
const MAX_BOUNCE_BUFFER = 32768 * 512;

const minNonZero = (a: number, b: number): number => (a && b ? Math.min(a, b) : a || b);
const alignDown = (n: number, a: number): number => n - (n % a);

/** The image seen through a blkdebug node with `limits`: write-zeroes and discard split as QEMU splits them. */
export function withBlkdebugLimits(image: BlockImage, limits: BlkdebugLimits): BlockImage {
  const requestAlignment = limits.align || 1;
  const zeroAlignment = Math.max(limits.optWriteZero ?? 0, requestAlignment);
  const maxTransfer = minNonZero(limits.maxTransfer ?? 0, MAX_BOUNCE_BUFFER);
  const maxZero = alignDown(minNonZero(limits.maxWriteZero ?? 0, INT_MAX), zeroAlignment);
  const discardAlignment = Math.max(limits.optDiscard ?? 0, requestAlignment);
  const maxDiscard = alignDown(minNonZero(limits.maxDiscard ?? 0, INT_MAX), discardAlignment);

  /** blkdebug's own write-zeroes: a fragment smaller than the zero alignment is refused (ENOTSUP). */
  const zeroFragment = async (offset: number, num: number, opts: ZeroOptions): Promise<void> => {
    if (num >= zeroAlignment) return image.writeZeroes(offset, num, opts);
    if (opts.noFallback) throw new Qcow2Error("NOT_SUPPORTED", "Operation not supported", { errno: "ENOTSUP" });
    // The block layer's fallback: zero bytes written, in pieces of at most max-transfer.
    for (let at = offset; at < offset + num; ) {
      const n = Math.min(maxTransfer, offset + num - at);
      await image.write(at, new Uint8Array(n));
      at += n;
    }
  };

  const writeZeroes = async (offset: number, bytes: number, opts: ZeroOptions = {}): Promise<void> => {
    let head = offset % zeroAlignment;
    const tail = (offset + bytes) % zeroAlignment;
    while (bytes > 0) {
      let num = bytes;
      if (head) {
        num = Math.min(bytes, maxTransfer, zeroAlignment - head);
        head = (head + num) % zeroAlignment;
      } else if (tail && num > zeroAlignment) {
        num -= tail;
      }
      if (num > maxZero) num = maxZero;
      await zeroFragment(offset, num, opts);
      offset += num;
      bytes -= num;
    }
  };

  const discard = async (offset: number, bytes: number): Promise<void> => {
    let head = offset % discardAlignment;
    let tail = (offset + bytes) % discardAlignment;
    while (bytes > 0) {
      let num = bytes;
      if (head) {
        num = Math.min(bytes, discardAlignment - head);
        if (num % requestAlignment !== 0) num %= requestAlignment;
        head = (head + num) % discardAlignment;
      } else if (tail) {
        if (num > discardAlignment) num -= tail;
        else if (tail % requestAlignment !== 0 && tail > requestAlignment) {
          tail %= requestAlignment;
          num -= tail;
        }
      }
      if (num > maxDiscard) num = maxDiscard;
      // blkdebug ignores (ENOTSUP) a discard smaller than the request alignment.
      if (num >= requestAlignment) await image.discard(offset, num);
      offset += num;
      bytes -= num;
    }
  };

  const overrides: Partial<BlockImage> = { writeZeroes, discard };
  return new Proxy(image, {
    get(target, key) {
      if (key in overrides) return overrides[key as keyof BlockImage];
      const v: unknown = Reflect.get(target, key, target);
      // Methods run on the image itself, so that its own calls do not come back here.
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
