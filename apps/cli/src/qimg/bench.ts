/**
 * qimg bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain]
 *            [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-U] [-w] filename
 *
 * As qemu-img 7.2: `count` requests of `buffer_size` bytes, `depth` in flight, starting at `offset` and
 * advancing by `step_size` (wrapping before the image end); writes fill the buffer with `pattern`; with a
 * flush interval, a flush after that many requests (waiting for the ones in flight unless --no-drain).
 */
import type { BlockImage } from "@qcowkit/core/node";
import { CliError, UsageError } from "../cli/errors";
import { getopt } from "../cli/getopt";
import { openCliImage, usingImage } from "../cli/open";
import { sizeArgument } from "../cli/size";
import type { QimgCommand } from "./context";
import { helpText } from "./help";

const INT_MAX = 2147483647;
const CACHE_MODES = ["none", "off", "writeback", "writethrough", "directsync", "unsafe"];

/** qemu_strtoul(optarg, NULL, 0) limited to INT_MAX; undefined when invalid. */
function strtoulInt(text: string): number | undefined {
  const m = /^\s*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) return undefined;
  const d = m[1]!;
  const v = /^0[xX]/.test(d) ? parseInt(d, 16) : d.length > 1 && d.startsWith("0") ? parseInt(d, 8) : Number(d);
  return v > INT_MAX ? undefined : v;
}

export interface BenchParams {
  count: number;
  depth: number;
  bufferSize: number;
  offset: number;
  step: number;
  write: boolean;
  pattern: number;
  flushInterval: number;
  drainOnFlush: boolean;
}

/** Issue the requests of a bench run. */
export async function runBench(image: BlockImage, p: BenchParams): Promise<void> {
  const size = image.virtualSize;
  let next = p.offset;
  let remaining = p.count;
  let issued = 0;
  const buffers = Array.from({ length: p.depth }, () => new Uint8Array(p.bufferSize).fill(p.pattern));
  const one = async (slot: number, offset: number) => {
    const buf = buffers[slot]!;
    if (p.write) await image.write(offset, buf);
    else await image.read(offset, buf);
  };
  const worker = async (slot: number) => {
    while (remaining > 0) {
      remaining--;
      const offset = next;
      next += p.step;
      next = size <= p.bufferSize ? 0 : next % (size - p.bufferSize);
      await one(slot, offset);
      issued++;
      if (p.flushInterval > 0 && issued % p.flushInterval === 0) await image.flush();
    }
  };
  await Promise.all(Array.from({ length: Math.min(p.depth, p.count) }, (_, i) => worker(i)));
  if (p.write) await image.flush();
}

export const benchCommand: QimgCommand = {
  name: "bench",
  async run(args, ctx) {
    const { options, operands } = getopt(args, {
      short: ":hc:d:f:ni:o:qs:S:t:wU",
      argv0: "bench",
      long: [
        { name: "help", hasArg: false, key: "h" },
        { name: "flush-interval", hasArg: true, key: "flush-interval" },
        { name: "image-opts", hasArg: false, key: "image-opts" },
        { name: "pattern", hasArg: true, key: "pattern" },
        { name: "no-drain", hasArg: false, key: "no-drain" },
        { name: "force-share", hasArg: false, key: "U" },
      ],
    });
    const p: BenchParams = { count: 75000, depth: 64, bufferSize: 4096, offset: 0, step: 0, write: false, pattern: 0, flushInterval: 0, drainOnFlush: true };
    let format: string | undefined;
    let forceShare = false;
    for (const o of options) {
      const v = o.value ?? "";
      switch (o.key) {
        case "h":
          ctx.io.out(helpText());
          return 0;
        case "c": {
          const n = strtoulInt(v);
          if (n === undefined) throw new CliError("Invalid request count specified");
          p.count = n;
          break;
        }
        case "d": {
          const n = strtoulInt(v);
          // Depth 0 would never issue a request (QEMU loops forever): refused.
          if (n === undefined || n === 0) throw new CliError("Invalid queue depth specified");
          p.depth = n;
          break;
        }
        case "f":
          format = v;
          break;
        case "n":
          break;
        case "i":
          if (!["threads", "native", "io_uring"].includes(v)) throw new CliError(`Invalid aio option: ${v}`);
          break;
        case "o":
          p.offset = Number(sizeArgument("offset", v, { onWarning: ctx.warn }));
          break;
        case "q":
          break;
        case "s":
          p.bufferSize = Number(sizeArgument("buffer size", v, { max: BigInt(INT_MAX), onWarning: ctx.warn }));
          break;
        case "S":
          p.step = Number(sizeArgument("step_size", v, { max: BigInt(INT_MAX), onWarning: ctx.warn }));
          break;
        case "t":
          if (!CACHE_MODES.includes(v)) throw new CliError("Invalid cache mode");
          break;
        case "w":
          p.write = true;
          break;
        case "U":
          forceShare = true;
          break;
        case "flush-interval": {
          const n = strtoulInt(v);
          if (n === undefined) throw new CliError("Invalid flush interval specified");
          p.flushInterval = n;
          break;
        }
        case "pattern": {
          const n = strtoulInt(v);
          if (n === undefined || n > 0xff) throw new CliError("Invalid pattern byte specified");
          p.pattern = n;
          break;
        }
        case "no-drain":
          p.drainOnFlush = false;
          break;
        case "image-opts":
          throw new CliError("--image-opts is not supported by qimg; give the file name (and -f)");
      }
    }
    if (operands.length !== 1) throw new UsageError("Expecting one image file name");
    if (!p.write && p.flushInterval) throw new CliError("--flush-interval is only available in write tests");
    if (p.flushInterval && p.flushInterval < p.depth) throw new CliError("Flush interval can't be smaller than depth");
    if (p.step === 0) p.step = p.bufferSize;
    const image = await openCliImage(operands[0]!, {
      readOnly: !p.write,
      forceShare,
      ...(format !== undefined ? { format } : {}),
      onWarning: (w) => ctx.io.err(`${w}\n`),
    });
    return usingImage(image, async (img) => {
      ctx.io.out(
        `Sending ${p.count} ${p.write ? "write" : "read"} requests, ${p.bufferSize} bytes each, ${p.depth} in parallel (starting at offset ${p.offset}, step size ${p.step})\n`,
      );
      if (p.flushInterval) ctx.io.out(`Sending flush every ${p.flushInterval} requests\n`);
      const t0 = process.hrtime.bigint();
      try {
        await runBench(img, p);
      } catch (e) {
        throw new CliError(`Failed request: ${(e as Error).message}`, { cause: e });
      }
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      ctx.io.out(`Run completed in ${seconds.toFixed(3)} seconds.\n`);
      return 0;
    });
  },
};
