/**
 * qemu-io's commands, with its argument checks, output lines and failure texts. A command returns true when
 * it succeeded; qio exits 1 when any command failed.
 */
import { CompressFilter, Qcow2Image, RawImage, createImage, readVmState, writeVmState, type BlockImage, type JsonValue, type Preallocation } from "@qcowkit/core/node";
import { qcow2SpecificInfo, dumpHuman } from "@qcowkit/core/internal";
import { errnoText, isQcow2Error } from "@qcowkit/spec";
import type { BlkdebugStore } from "@qcowkit/datafile";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { join, resolve as resolvePath } from "node:path";
import { NullStore, systemErrorText } from "@qcowkit/datafile/node";
import { isProtocolDriver } from "../cli/layered-options";
import { strerror } from "../cli/errno";
import { CliError, UsageError, errorText, type Output } from "../cli/errors";
import { getopt, type ParsedOption } from "../cli/getopt";
import { blkdebugNodeOf, openCliImage } from "../cli/open";
import { cvtstr } from "../cli/size";
import { splitOptionList } from "../cli/qemu-opts";
import { programNames } from "../cli/program";
import { applyBlockOptions, parseDiscard, type OpenRequest } from "./open";
import { cvtnum, elapsedSince, hexDump, parsePattern, report } from "./report";

/** BDRV_REQUEST_MAX_BYTES: the largest single request. */
const MAX_REQUEST_BYTES = 2147483136;

export interface Session {
  io: Output;
  image: BlockImage | undefined;
  request: OpenRequest | undefined;
  /**
   * qemu-io's default cache mode is writethrough: every write is durable (data and metadata) before the
   * command reports it, so a crash after it (sigraise 9) leaves what QEMU leaves.
   */
  writethrough: boolean;
  quit: boolean;
  /** Commands come from standard input (qemu-io's prompt loop). */
  interactive?: boolean;
  /**
   * aio_read/aio_write requests in flight, in issue order: each runs after the one before it and resolves with
   * the lines it prints on completion. They are printed when qemu-io would run its event loop: before the next
   * command that is not an aio request (before every command when reading standard input) and at the end.
   */
  aio?: Array<Promise<string>>;
  /** Open `req` as the current image (errors prefixed "can't open device NAME: "). */
  open(req: OpenRequest): Promise<void>;
}

interface Command {
  name: string;
  alias?: string;
  args: string;
  oneline: string;
  /** Arguments (options included) allowed: min, max (-1: no limit). */
  argmin: number;
  argmax: number;
  /** Needs an open image. */
  needsImage: boolean;
  /** Needs write permission. */
  writes?: boolean;
  /** Extended help (`help NAME`), after the usage line and a blank line. */
  help?: string;
  run(s: Session, argv: string[]): Promise<boolean>;
}

/** The one-line usage qemu-io prints after a bad invocation. */
function usage(c: Command): string {
  return `${c.name} ${c.args} -- ${c.oneline}\n`;
}

/** An error reported by a command's own checks: printed on stdout, the command fails. */
class CommandFailure extends Error {}

function parseOpts(c: Command, argv: string[], short: string): { options: ParsedOption[]; operands: string[] } {
  return getopt(argv.slice(1), { short, argv0: c.name, style: { command: c.name } });
}

function num(s: Session, text: string): number {
  const r = cvtnum(text);
  if (!r.ok) {
    s.io.out(`${r.message}\n`);
    throw new CommandFailure();
  }
  return r.value;
}

function pattern(s: Session, text: string): number {
  const p = parsePattern(text);
  if (p === undefined) {
    s.io.out(`${text} is not a valid pattern byte\n`);
    throw new CommandFailure();
  }
  return p;
}

/** The strerror() text QEMU prints for a failed request; out-of-range requests are EIO in QEMU's block layer. */
function requestError(e: unknown): string {
  if (isQcow2Error(e) && e.code === "OUT_OF_BOUNDS") return "Input/output error";
  if (!isQcow2Error(e)) throw e;
  return strerror(e);
}

function checkLength(s: Session, count: number, text: string): void {
  if (count > MAX_REQUEST_BYTES) {
    s.io.out(`length cannot exceed ${MAX_REQUEST_BYTES}, given ${text}\n`);
    throw new CommandFailure();
  }
}

/** qemu-io's check for requests that must be whole sectors (-b, -c): false, with its message, when not. */
function sectorAligned(s: Session, offset: number, count: number): boolean {
  if (offset % 512 !== 0) {
    s.io.out(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512 !== 0) {
    s.io.out(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}

const readCmd: Command = {
  help: " Reads LEN bytes at offset OFF of the open image.\n  -C  print the statistics as one machine-readable line\n  -P  check that every byte read equals PATTERN (-s and -l narrow the check to a part)\n  -q  print nothing but errors\n  -v  hex dump of the data read\n",
  name: "read",
  alias: "r",
  args: "[-abCqv] [-P pattern [-s off] [-l len]] off len",
  oneline: "read LEN bytes from OFF",
  argmin: 2,
  argmax: -1,
  needsImage: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "bCl:pP:qs:v");
    let machine = false;
    let quiet = false;
    let verbose = false;
    let pat: number | undefined;
    let patOffset = 0;
    let patCount: number | undefined;
    let lflag = false;
    let sflag = false;
    let vmState = false;
    for (const o of options) {
      if (o.key === "b") vmState = true;
      if (o.key === "C") machine = true;
      if (o.key === "q") quiet = true;
      if (o.key === "v") verbose = true;
      if (o.key === "P") pat = pattern(s, o.value!);
      if (o.key === "s") {
        sflag = true;
        patOffset = num(s, o.value!);
      }
      if (o.key === "l") {
        lflag = true;
        patCount = num(s, o.value!);
      }
    }
    if (operands.length !== 2) {
      s.io.out(usage(this));
      return false;
    }
    const offset = num(s, operands[0]!);
    const count = num(s, operands[1]!);
    checkLength(s, count, operands[1]!);
    if (vmState && !sectorAligned(s, offset, count)) return false;
    if (pat === undefined && (lflag || sflag)) {
      s.io.out(usage(this));
      return false;
    }
    if (!lflag) patCount = count - patOffset;
    if (patCount! < 0 || patCount! + patOffset > count) {
      s.io.out("pattern verification range exceeds end of read data\n");
      return false;
    }
    const buf = new Uint8Array(count).fill(0xab);
    const start = process.hrtime.bigint();
    try {
      if (vmState) await readVmState(s.image!, offset, buf);
      else await s.image!.read(offset, buf);
    } catch (e) {
      // readv reports its own name (qemu-io: "readv failed").
      s.io.out(`${argv[0] === "readv" ? "readv" : "read"} failed: ${requestError(e)}\n`);
      return false;
    }
    const t = elapsedSince(start);
    let ok = true;
    if (pat !== undefined) {
      const region = buf.subarray(patOffset, patOffset + patCount!);
      if (region.some((b) => b !== pat)) {
        s.io.out(`Pattern verification failed at offset ${offset + patOffset}, ${patCount} bytes\n`);
        ok = false;
      }
    }
    if (quiet) return ok;
    if (verbose) s.io.out(hexDump(buf, offset));
    s.io.out(report("read", t, offset, count, count, 1, machine));
    return ok;
  },
};

async function fillFromFile(s: Session, file: string, count: number): Promise<Uint8Array> {
  let content: Uint8Array;
  try {
    content = new Uint8Array(await readFile(file));
  } catch (e) {
    // perror(): the file name and strerror().
    const code = (e as { code?: unknown }).code;
    s.io.err(`${file}: ${(typeof code === "string" && systemErrorText(code)) || errorText(e)}\n`);
    throw new CommandFailure();
  }
  if (content.byteLength === 0) {
    s.io.err(`${file}: file is empty\n`);
    throw new CommandFailure();
  }
  const buf = new Uint8Array(count);
  for (let at = 0; at < count; at += content.byteLength) buf.set(content.subarray(0, Math.min(content.byteLength, count - at)), at);
  return buf;
}

const writeCmd: Command = {
  help: " Writes LEN bytes at offset OFF of the open image, filled with 0xcd unless told otherwise.\n  -P  fill with PATTERN\n  -s  fill with the content of SOURCE_FILE (repeated)\n  -z  write zeros without data (-u: the range may be deallocated, -n: fail instead of writing zero bytes)\n  -c  write compressed clusters\n  -f  durable on return (FUA)\n  -C  print the statistics as one machine-readable line\n  -q  print nothing but errors\n",
  name: "write",
  alias: "w",
  args: "[-bcCfnquz] [-P pattern | -s source_file] off len",
  oneline: "write LEN bytes at OFF",
  argmin: 2,
  argmax: -1,
  needsImage: true,
  writes: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "bcCfnpP:qs:uz");
    let machine = false;
    let quiet = false;
    let compressed = false;
    let fua = false;
    let noFallback = false;
    let unmap = false;
    let zero = false;
    let pat = 0xcd;
    let patGiven = false;
    let source: string | undefined;
    let vmState = false;
    for (const o of options) {
      switch (o.key) {
        case "b":
          vmState = true;
          break;
        case "c":
          compressed = true;
          break;
        case "C":
          machine = true;
          break;
        case "f":
          fua = true;
          break;
        case "n":
          noFallback = true;
          break;
        case "P":
          patGiven = true;
          pat = pattern(s, o.value!);
          break;
        case "q":
          quiet = true;
          break;
        case "s":
          source = o.value!;
          break;
        case "u":
          unmap = true;
          break;
        case "z":
          zero = true;
          break;
      }
    }
    if (operands.length !== 2) {
      s.io.out(usage(this));
      return false;
    }
    if (fua && (compressed || vmState)) {
      s.io.out("-f and -b or -c cannot be specified at the same time\n");
      return false;
    }
    if (noFallback && !zero) {
      s.io.out("-n requires -z to be specified\n");
      return false;
    }
    if (unmap && !zero) {
      s.io.out("-u requires -z to be specified\n");
      return false;
    }
    if (Number(zero) + Number(patGiven) + Number(source !== undefined) > 1) {
      s.io.out("Only one of -z, -P, and -s can be specified at the same time\n");
      return false;
    }
    const offset = num(s, operands[0]!);
    const count = num(s, operands[1]!);
    if (count > MAX_REQUEST_BYTES && !noFallback) {
      s.io.out(`length cannot exceed ${MAX_REQUEST_BYTES} without -n, given ${operands[1]}\n`);
      return false;
    }
    if ((compressed || vmState) && !sectorAligned(s, offset, count)) return false;
    let buf: Uint8Array | undefined;
    if (!zero) buf = source !== undefined ? await fillFromFile(s, source, count) : new Uint8Array(count).fill(pat);
    const start = process.hrtime.bigint();
    try {
      const durable = fua || s.writethrough;
      if (vmState) {
        await writeVmState(s.image!, offset, buf ?? new Uint8Array(count));
        // QEMU's blk_save_vmstate flushes after the write in writethrough mode, as for a guest write.
        if (durable) await s.image!.flush();
      } else if (zero) await s.image!.writeZeroes(offset, count, { unmap, noFallback, fua: durable });
      else await s.image!.write(offset, buf!, { fua: durable, compressed });
    } catch (e) {
      s.io.out(`${argv[0] === "writev" ? "writev" : "write"} failed: ${requestError(e)}\n`);
      return false;
    }
    if (!quiet) s.io.out(report("wrote", elapsedSince(start), offset, count, count, 1, machine));
    return true;
  },
};

/** readv/writev: the lengths are summed (one request). */
function vectorCommand(base: Command, name: "readv" | "writev", args: string, short: string): Command {
  return {
    name,
    args,
    oneline: base.oneline,
    argmin: 2,
    argmax: -1,
    needsImage: true,
    ...(name === "writev" ? { writes: true } : {}),
    async run(s, argv) {
      const { options, operands } = parseOpts(this, argv, short);
      if (operands.length < 2) {
        s.io.out(usage(this));
        return false;
      }
      let total = 0;
      for (const l of operands.slice(1)) total += num(s, l);
      const flags = options.flatMap((o) => (o.value === undefined ? [`-${o.key}`] : [`-${o.key}`, o.value]));
      return base.run(s, [name, ...flags, operands[0]!, String(total)]);
    },
  };
}

/** The lengths of a vectored request (create_iovec()): their sum, or undefined after printing why not. */
function vectorLength(s: Session, lengths: string[]): number | undefined {
  let total = 0;
  for (const arg of lengths) {
    const len = num(s, arg);
    if (len > MAX_REQUEST_BYTES) {
      s.io.out(`Argument '${arg}' exceeds maximum size ${MAX_REQUEST_BYTES}\n`);
      return undefined;
    }
    if (total > MAX_REQUEST_BYTES - len) {
      s.io.out(`The total number of bytes exceed the maximum size ${MAX_REQUEST_BYTES}\n`);
      return undefined;
    }
    total += len;
  }
  return total;
}

/** Queue an asynchronous request: it starts after those before it; its lines wait for the next drain. */
function submitAio(s: Session, op: () => Promise<string>): void {
  const queue = (s.aio ??= []);
  const before = queue[queue.length - 1] ?? Promise.resolve("");
  queue.push(before.then(op, op));
}

/**
 * Wait for every request in flight and print what each printed on completion, in order (blk_drain_all()).
 * A request suspended by a blkdebug breakpoint (and those queued after it) stays in flight: the wait ends
 * there, as only a later `resume` can let it go on.
 */
export async function drainAio(s: Session): Promise<void> {
  const node = s.image ? blkdebugNodeOf(s.image) : undefined;
  while (s.aio && s.aio.length > 0) {
    const done = s.aio[0]!;
    if (node?.armed) {
      const first = await Promise.race([done.then((text) => ({ text })), node.whenSuspended().then(() => undefined)]);
      if (!first) return;
    }
    s.aio.shift();
    s.io.out(await done);
  }
}

const aioReadCmd: Command = {
  help: " Reads LEN bytes (the sum of the lengths) at offset OFF asynchronously: the command succeeds once the\n request is submitted; its result is printed when it completes (aio_flush waits for all).\n  -C  print the statistics as one machine-readable line\n  -P  check that every byte read equals PATTERN\n  -i  count an invalid request (statistics only)\n  -q  print nothing but errors\n  -v  hex dump of the data read\n",
  name: "aio_read",
  args: "[-Ciqv] [-P pattern] off len [len..]",
  oneline: "start a read and go on; the result comes later",
  argmin: 2,
  argmax: -1,
  needsImage: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "CP:iqv");
    let machine = false;
    let quiet = false;
    let verbose = false;
    let pat: number | undefined;
    for (const o of options) {
      if (o.key === "C") machine = true;
      if (o.key === "q") quiet = true;
      if (o.key === "v") verbose = true;
      if (o.key === "P") pat = pattern(s, o.value!);
      if (o.key === "i") {
        s.io.out("injecting invalid read request\n");
        return true;
      }
    }
    if (operands.length < 2) {
      s.io.out(usage(this));
      return false;
    }
    const offset = num(s, operands[0]!);
    const count = vectorLength(s, operands.slice(1));
    if (count === undefined) return false;
    const image = s.image!;
    submitAio(s, async () => {
      const buf = new Uint8Array(count).fill(0xab);
      const start = process.hrtime.bigint();
      try {
        await image.read(offset, buf);
      } catch (e) {
        return `readv failed: ${requestError(e)}\n`;
      }
      const t = elapsedSince(start);
      let out = "";
      if (pat !== undefined && buf.some((b) => b !== pat)) out += `Pattern verification failed at offset ${offset}, ${count} bytes\n`;
      if (quiet) return out;
      if (verbose) out += hexDump(buf, offset);
      return out + report("read", t, offset, count, count, 1, machine);
    });
    return true;
  },
};

const aioWriteCmd: Command = {
  help: " Writes LEN bytes (the sum of the lengths) at offset OFF asynchronously, filled with 0xcd unless told\n otherwise: the command succeeds once the request is submitted; its result is printed when it completes.\n  -P  fill with PATTERN\n  -C  print the statistics as one machine-readable line\n  -f  durable on completion (FUA)\n  -i  count an invalid request (statistics only)\n  -q  print nothing but errors\n  -z  write zeros without data (-u: the range may be deallocated)\n",
  name: "aio_write",
  args: "[-Cfiquz] [-P pattern] off len [len..]",
  oneline: "start a write and go on; the result comes later",
  argmin: 2,
  argmax: -1,
  needsImage: true,
  writes: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "CfiqP:uz");
    let machine = false;
    let quiet = false;
    let fua = false;
    let unmap = false;
    let zero = false;
    let pat = 0xcd;
    for (const o of options) {
      if (o.key === "C") machine = true;
      if (o.key === "f") fua = true;
      if (o.key === "q") quiet = true;
      if (o.key === "u") unmap = true;
      if (o.key === "z") zero = true;
      if (o.key === "P") pat = pattern(s, o.value!);
      if (o.key === "i") {
        s.io.out("injecting invalid write request\n");
        return true;
      }
    }
    if (operands.length < 2) {
      s.io.out(usage(this));
      return false;
    }
    if (zero && operands.length !== 2) {
      s.io.out("-z supports only a single length parameter\n");
      return false;
    }
    if (unmap && !zero) {
      s.io.out("-u requires -z to be specified\n");
      return false;
    }
    const offset = num(s, operands[0]!);
    const count = zero ? num(s, operands[1]!) : vectorLength(s, operands.slice(1));
    if (count === undefined) return false;
    const image = s.image!;
    const durable = fua || s.writethrough;
    submitAio(s, async () => {
      const start = process.hrtime.bigint();
      try {
        if (zero) await image.writeZeroes(offset, count, { unmap, fua: durable });
        else await image.write(offset, new Uint8Array(count).fill(pat), { fua: durable });
      } catch (e) {
        return `aio_write failed: ${requestError(e)}\n`;
      }
      return quiet ? "" : report("wrote", elapsedSince(start), offset, count, count, 1, machine);
    });
    return true;
  },
};

const aioFlushCmd: Command = {
  name: "aio_flush",
  args: "",
  oneline: "wait until every started request has finished",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    await drainAio(s);
    return true;
  },
};

const discardCmd: Command = {
  help: " Discards LEN bytes at offset OFF of the open image (whole clusters).\n  -C  print the statistics as one machine-readable line\n  -q  print nothing but errors\n",
  name: "discard",
  alias: "d",
  args: "[-Cq] off len",
  oneline: "discard LEN bytes at OFF",
  argmin: 2,
  argmax: -1,
  needsImage: true,
  writes: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "Cq");
    const machine = options.some((o) => o.key === "C");
    const quiet = options.some((o) => o.key === "q");
    if (operands.length !== 2) {
      s.io.out(usage(this));
      return false;
    }
    const offset = num(s, operands[0]!);
    const count = num(s, operands[1]!);
    checkLength(s, count, operands[1]!);
    const start = process.hrtime.bigint();
    try {
      await s.image!.discard(offset, count);
    } catch (e) {
      s.io.out(`discard failed: ${requestError(e)}\n`);
      return false;
    }
    if (!quiet) s.io.out(report("discard", elapsedSince(start), offset, count, count, 1, machine));
    return true;
  },
};

/** The blkdebug node under the open image, or undefined after printing `failure` (ENOTSUP, as QEMU's). */
function debugNode(s: Session, failure: string): BlkdebugStore | undefined {
  const node = blkdebugNodeOf(s.image!);
  if (!node) s.io.out(`${failure}: ${errnoText.ENOTSUP}\n`);
  return node;
}

/** Run a breakpoint operation, printing `failure` with the reason when it is refused. */
function debugOp(s: Session, failure: string, op: (node: BlkdebugStore) => void): boolean {
  const node = debugNode(s, failure);
  if (!node) return false;
  node.report = (line) => s.io.out(line);
  try {
    op(node);
    return true;
  } catch (e) {
    if (!isQcow2Error(e)) throw e;
    s.io.out(`${failure}: ${errnoText[e.errno]}\n`);
    return false;
  }
}

const breakCmd: Command = {
  help: " Stops the next request that raises the blkdebug event EVENT (of the blkdebug node under the image)\n before its next I/O, under the name TAG; `resume TAG` lets it go on.\n",
  name: "break",
  args: "event tag",
  oneline: "stop the next request raising a blkdebug event, naming it TAG",
  argmin: 2,
  argmax: 2,
  needsImage: true,
  async run(s, argv) {
    return debugOp(s, "Could not set breakpoint", (node) => node.setBreakpoint(argv[1]!, argv[2]!));
  },
};

const removeBreakCmd: Command = {
  name: "remove_break",
  args: "tag",
  oneline: "drop the breakpoints named TAG and resume their stopped requests",
  argmin: 1,
  argmax: 1,
  needsImage: true,
  async run(s, argv) {
    return debugOp(s, `Could not remove breakpoint ${argv[1]}`, (node) => node.removeBreakpoint(argv[1]!));
  },
};

const resumeCmd: Command = {
  name: "resume",
  args: "tag",
  oneline: "let the request stopped under TAG go on",
  argmin: 1,
  argmax: 1,
  needsImage: true,
  async run(s, argv) {
    return debugOp(s, "Could not resume request", (node) => node.resume(argv[1]!));
  },
};

const waitBreakCmd: Command = {
  name: "wait_break",
  args: "tag",
  oneline: "wait until a request is stopped under TAG",
  argmin: 1,
  argmax: 1,
  needsImage: true,
  async run(s, argv) {
    const node = blkdebugNodeOf(s.image!);
    if (!node) return true;
    node.report = (line) => s.io.out(line);
    // QEMU polls until the request stops; here the wait also ends when no request is left that could (all
    // done, or stopped under another tag), where QEMU would wait forever.
    if (node.isSuspended(argv[1]!) || !s.aio?.length) return true;
    await Promise.race([Promise.allSettled(s.aio), node.whenSuspended()]);
    return true;
  },
};

const flushCmd: Command = {
  name: "flush",
  alias: "f",
  args: "",
  oneline: "make everything written so far durable",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    try {
      await s.image!.flush();
      return true;
    } catch (e) {
      // qemu-io's flush returns the error without printing it: only the exit code tells.
      if (!isQcow2Error(e)) throw e;
      return false;
    }
  },
};

/** Allocation in the top image only (bdrv_is_allocated): runs of [allocated?, bytes] over [offset, end). */
async function topAllocation(image: BlockImage, offset: number, bytes: number): Promise<Array<[boolean, number]>> {
  const out: Array<[boolean, number]> = [];
  for (const e of await image.blockStatus(offset, bytes)) {
    const allocated = e.present && e.depth === 0;
    const last = out[out.length - 1];
    if (last && last[0] === allocated) last[1] += e.length;
    else out.push([allocated, e.length]);
  }
  return out;
}

const allocCmd: Command = {
  name: "alloc",
  args: "offset [count]",
  oneline: "tell whether a range is allocated in this image",
  argmin: 1,
  argmax: 2,
  needsImage: true,
  async run(s, argv) {
    const start = num(s, argv[1]!);
    let count = argv.length === 3 ? num(s, argv[2]!) : 512;
    const size = s.image!.virtualSize;
    // Past the end of the image the allocation query stops (count shrinks to what was looked at).
    if (start >= size) count = 0;
    else count = Math.min(count, size - start);
    let allocated = 0;
    if (count > 0) for (const [a, n] of await topAllocation(s.image!, start, count)) if (a) allocated += n;
    s.io.out(`${allocated}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
    return true;
  },
};

const mapCmd: Command = {
  name: "map",
  args: "",
  oneline: "list the allocated and unallocated ranges",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    const size = s.image!.virtualSize;
    let offset = 0;
    if (size === 0) return true;
    for (const [allocated, n] of await topAllocation(s.image!, 0, size)) {
      s.io.out(
        `${cvtstr(n)} (0x${n.toString(16)}) bytes ${allocated ? "    allocated" : "not allocated"} at offset ${cvtstr(offset)} (0x${offset.toString(16)})\n`,
      );
      offset += n;
    }
    return true;
  },
};

const infoCmd: Command = {
  name: "info",
  alias: "i",
  args: "",
  oneline: "show the image's format and cluster size",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    const top = s.image!;
    const driver = s.request?.format;
    // Protocol nodes (file, host_device, null-co) are named twice: as the node and as its driver's protocol.
    if (driver !== undefined && (isProtocolDriver(driver) || driver === "null-co")) {
      s.io.out(`format name: ${driver}\nformat name: ${driver}\n`);
      if (driver === "null-co") return false;
      s.io.out("cluster size: 0 bytes\nvm state offset: 0 bytes\n");
      return true;
    }
    const image = top instanceof CompressFilter ? top.child : top;
    s.io.out(`format name: ${top instanceof CompressFilter ? top.driver : image.format}\n`);
    // null-co answers no driver information, and raw asks its file.
    if (image instanceof RawImage && image.store instanceof NullStore) return false;
    if (!(image instanceof Qcow2Image)) {
      s.io.out("cluster size: 0 bytes\nvm state offset: 0 bytes\n");
      return true;
    }
    // The VM state lives after the last L1 entry the virtual size needs.
    const l2Coverage = image.clusterSize * (image.clusterSize / (image.extendedL2 ? 16 : 8));
    const vmStateOffset = Math.ceil(image.virtualSize / l2Coverage) * l2Coverage;
    s.io.out(`cluster size: ${cvtstr(image.clusterSize)}\nvm state offset: ${cvtstr(vmStateOffset)}\n`);
    // A filter has no format specific information of its own.
    if (top instanceof CompressFilter) return true;
    const data = await qcow2SpecificInfo(image);
    s.io.out(`Format specific information:\n${dumpHuman(data as unknown as JsonValue, 1)}`);
    return true;
  },
};

const lengthCmd: Command = {
  name: "length",
  alias: "l",
  args: "",
  oneline: "print the image's virtual size",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    s.io.out(`${cvtstr(s.image!.virtualSize)}\n`);
    return true;
  },
};

const PREALLOCATION: Preallocation[] = ["off", "metadata", "falloc", "full"];

const truncateCmd: Command = {
  name: "truncate",
  alias: "t",
  args: "[-m prealloc_mode] off",
  oneline: "resize the image to OFF bytes",
  argmin: 1,
  argmax: 3,
  needsImage: true,
  writes: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "m:");
    let preallocation: Preallocation = "off";
    for (const o of options) {
      if (!PREALLOCATION.includes(o.value as Preallocation)) {
        s.io.err(`${programNames.qio}: Invalid preallocation mode '${o.value}'\n`);
        return false;
      }
      preallocation = o.value as Preallocation;
    }
    if (operands.length < 1) {
      s.io.out(usage(this));
      return false;
    }
    const size = num(s, operands[0]!);
    try {
      await s.image!.resize(size, { shrink: true, preallocation });
    } catch (e) {
      s.io.err(`${programNames.qio}: ${errorText(e)}\n`);
      return false;
    }
    return true;
  },
};

const openCmd: Command = {
  help: " Opens an image (when none is open).\n  -r  read-only\n  -U  do not take the image lock\n  -d  discard mode: ignore or unmap\n  -t  cache mode (checked, ignored)\n  -o  block driver options, e.g. driver=qcow2,data-file.filename=DATA\n",
  name: "open",
  alias: "o",
  args: "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
  oneline: "open an image",
  argmin: 1,
  argmax: -1,
  needsImage: false,
  async run(s, argv) {
    if (s.image) {
      s.io.err(`${programNames.qio}: file open already, try 'help close'\n`);
      return false;
    }
    const { options, operands } = parseOpts(this, argv, "snCro:ki:t:d:U");
    let req: OpenRequest = { filename: "", readOnly: false, forceShare: false, discard: "unmap" };
    let blockOptions: string | undefined;
    for (const o of options) {
      if (o.key === "r") req.readOnly = true;
      else if (o.key === "U") req.forceShare = true;
      else if (o.key === "d") req.discard = parseDiscard(o.value!);
      else if (o.key === "t") s.writethrough = checkCacheMode(o.value!);
      else if (o.key === "n") s.writethrough = false;
      else if (o.key === "s") req.snapshot = true;
      else if (o.key === "o") blockOptions = blockOptions === undefined ? o.value! : `${blockOptions},${o.value}`;
    }
    if (operands.length > 1) {
      s.io.out(usage(this));
      return false;
    }
    if (operands[0] !== undefined) req.filename = operands[0];
    if (blockOptions !== undefined) {
      try {
        req = applyBlockOptions(req, blockOptions, false, (w) => s.io.err(`${programNames.qio}: warning: ${w}\n`));
      } catch (e) {
        throw new CliError(`${req.filename === "" ? "can't open" : `can't open device ${req.filename}`}: ${errorText(e)}`, { cause: e });
      }
    }
    // Described by its options alone: QEMU names no device when the open fails.
    if (operands[0] === undefined) req.imageOpts = true;
    await s.open(req);
    return true;
  },
};

/** The options given to reopen -o that a reopen cannot change (bdrv_reopen's "Cannot change the option"). */
const FIXED_ON_REOPEN: Array<[keyof OpenRequest, string]> = [["nodeName", "node-name"], ["format", "driver"]];

const reopenCmd: Command = {
  help: " Applies the options given to the open image; those not given keep their values.\n  -r  read-only\n  -w  read-write\n  -c  cache mode\n  -o  block driver options, e.g. lazy-refcounts=on\n",
  name: "reopen",
  args: "[(-r|-w)] [-c cache] [-o options]",
  oneline: "open the image again with other options",
  argmin: 0,
  argmax: -1,
  needsImage: true,
  async run(s, argv) {
    const { options, operands } = parseOpts(this, argv, "c:o:rw");
    let readOnly: boolean | undefined;
    let cache: string | undefined;
    let blockOptions: string | undefined;
    for (const o of options) {
      if (o.key === "c") {
        cache = o.value!;
        checkCacheMode(cache);
      } else if (o.key === "o") blockOptions = blockOptions === undefined ? o.value! : `${blockOptions},${o.value}`;
      else if (o.key === "r" || o.key === "w") {
        if (readOnly !== undefined) throw new CliError("Only one -r/-w option may be given");
        readOnly = o.key === "r";
      }
    }
    if (operands.length > 0) {
      s.io.out(usage(this));
      return false;
    }
    const old = s.request!;
    let req: OpenRequest = { ...old };
    if (blockOptions !== undefined) {
      const given = splitOptionList(blockOptions).map((e) => e.split("=")[0]!);
      if (readOnly !== undefined && given.includes("read-only")) throw new CliError("Cannot set both -r/-w and 'read-only'");
      if (cache !== undefined && given.some((k) => k.startsWith("cache."))) throw new CliError("Cannot set both -c and the cache options");
      const { format: oldFormat, ...withoutFormat } = old;
      const changed = applyBlockOptions(withoutFormat, blockOptions, false);
      for (const [field, name] of FIXED_ON_REOPEN) {
        const now = field === "format" ? s.image!.format : old[field];
        if (changed[field] !== undefined && changed[field] !== now) throw new CliError(`Cannot change the option '${name}'`);
      }
      const pairs = splitOptionList(blockOptions).map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)] as const);
      const backing = s.image instanceof Qcow2Image ? s.image.backing : null;
      for (const [key, value] of pairs) {
        // The children keep their names and drivers too.
        if (key.endsWith(".node-name") && old.childNodeNames?.[key.slice(0, -".node-name".length)] !== value) {
          throw new CliError("Cannot change the option 'node-name'");
        }
        if ((key === "file.driver" && value !== "file") || (key === "backing.driver" && value !== backing?.format)) {
          throw new CliError("Cannot change the option 'driver'");
        }
      }
      const { format: _changedFormat, ...changedWithoutFormat } = changed;
      req = { ...changedWithoutFormat, ...(old.format !== undefined && { format: old.format }) };
    }
    if (readOnly !== undefined) req.readOnly = readOnly;
    if (cache !== undefined) s.writethrough = checkCacheMode(cache);
    const image = s.image!;
    s.image = undefined;
    await image.close();
    try {
      // bdrv_reopen's errors name no device.
      await openForSession(s, req, "");
    } catch (e) {
      // As bdrv_reopen: a failed reopen leaves the image as it was.
      await openForSession(s, old);
      throw e;
    }
    return true;
  },
};

const closeCmd: Command = {
  name: "close",
  alias: "c",
  args: "",
  oneline: "close the image",
  argmin: 0,
  argmax: 0,
  needsImage: true,
  async run(s) {
    const image = s.image;
    s.image = undefined;
    s.request = undefined;
    await image!.close();
    return true;
  },
};

const quitCmd: Command = {
  name: "quit",
  alias: "q",
  args: "",
  oneline: "leave qio",
  argmin: 0,
  argmax: 0,
  needsImage: false,
  async run(s) {
    s.quit = true;
    return true;
  },
};

/** A decimal number argument ("X is not a valid WHAT" otherwise). */
function wholeNumber(s: Session, text: string, what: string): number {
  if (!/^[0-9]+$/.test(text)) {
    s.io.out(`${text} is not a valid ${what}\n`);
    throw new CommandFailure();
  }
  return Number(text);
}

const sleepCmd: Command = {
  name: "sleep",
  args: "milliseconds",
  oneline: "pause for that many milliseconds",
  argmin: 1,
  argmax: 1,
  needsImage: false,
  async run(s, argv) {
    const ms = wholeNumber(s, argv[1]!, "number");
    await new Promise((r) => setTimeout(r, ms));
    return true;
  },
};

const sigraiseCmd: Command = {
  name: "sigraise",
  args: "signal",
  oneline: "deliver SIGNAL to this process (for tests)",
  argmin: 1,
  argmax: 1,
  needsImage: false,
  async run(s, argv) {
    const sig = wholeNumber(s, argv[1]!, "signal");
    // Like raise(): the process ends as the signal says (without closing the image cleanly). qemu-io flushes
    // its output first.
    s.io.flush?.();
    process.kill(process.pid, sig);
    await new Promise((r) => setTimeout(r, 1000));
    return true;
  },
};

const helpCmd: Command = {
  name: "help",
  alias: "?",
  args: "[command]",
  oneline: "list the commands, or explain one",
  argmin: 0,
  argmax: 1,
  needsImage: false,
  async run(s, argv) {
    if (argv.length === 2) {
      const c = findCommand(argv[1]!);
      if (!c) {
        s.io.out(`command ${argv[1]} not found\n`);
        return false;
      }
      s.io.out(usage(c));
      if (c.help) s.io.out(`\n${c.help}\n`);
      return true;
    }
    for (const c of [...COMMANDS].sort((a, b) => (a.name < b.name ? -1 : 1))) s.io.out(usage(c));
    s.io.out("\n'help COMMAND' describes one command in full.\n");
    return true;
  },
};

/** Check a cache mode; returns whether it is writethrough (writethrough, directsync) or not. */
export function checkCacheMode(mode: string): boolean {
  if (!["none", "off", "writeback", "writethrough", "directsync", "unsafe"].includes(mode)) {
    throw new CliError(`Invalid cache option: ${mode}`);
  }
  return mode === "writethrough" || mode === "directsync";
}

const COMMANDS: Command[] = [
  readCmd,
  vectorCommand(readCmd, "readv", "[-Cqv] [-P pattern] off len [len..]", "CqP:v"),
  writeCmd,
  vectorCommand(writeCmd, "writev", "[-Cfq] [-P pattern] off len [len..]", "CfqP:"),
  discardCmd,
  aioReadCmd,
  aioWriteCmd,
  aioFlushCmd,
  breakCmd,
  removeBreakCmd,
  resumeCmd,
  waitBreakCmd,
  flushCmd,
  allocCmd,
  mapCmd,
  infoCmd,
  lengthCmd,
  truncateCmd,
  openCmd,
  reopenCmd,
  closeCmd,
  quitCmd,
  sleepCmd,
  sigraiseCmd,
  helpCmd,
];

function findCommand(name: string): Command | undefined {
  return COMMANDS.find((c) => c.name === name || c.alias === name);
}

/** Commands that run without qemu-io's event loop turning: pending aio completions are not printed before them. */
const NO_EVENT_LOOP = new Set(["aio_read", "aio_write", "length", "info", "help", "sigraise", "break", "remove_break"]);

/** Run one command line (split on spaces like qemu-io). Returns true on success. */
export async function runCommandLine(s: Session, line: string): Promise<boolean> {
  const argv = line.split(" ").filter((w) => w !== "");
  if (argv.length === 0) return true;
  const c = findCommand(argv[0]!);
  if (!c) {
    s.io.err(`command "${argv[0]}" not found\n`);
    return false;
  }
  // qemu-io completes aio requests when it runs its event loop: in a command that does I/O, and before every
  // command read from standard input (not before an aio submission or a command that only looks at state).
  if (!NO_EVENT_LOOP.has(c.name) || s.interactive) await drainAio(s);
  if (c.needsImage && !s.image) {
    s.io.err("no file open, try 'help open'\n");
    return false;
  }
  const n = argv.length - 1;
  if (n < c.argmin || (c.argmax !== -1 && n > c.argmax)) {
    let expected: string;
    if (c.argmax === -1) expected = `at least ${c.argmin} arguments`;
    else if (c.argmin === c.argmax) expected = `${c.argmin} arguments`;
    else expected = `between ${c.argmin} and ${c.argmax} arguments`;
    s.io.err(`bad argument count ${n} to ${argv[0]}, expected ${expected}\n`);
    return false;
  }
  if (c.writes && s.image!.readOnly) {
    s.io.err(`${programNames.qio}: Block node is read-only\n`);
    return false;
  }
  try {
    return await c.run(s, argv);
  } catch (e) {
    if (e instanceof CommandFailure) return false;
    if (e instanceof UsageError && e.command !== undefined) {
      s.io.err(`${e.message}\n`);
      s.io.out(usage(c));
      return false;
    }
    if (e instanceof CliError || isQcow2Error(e)) {
      s.io.err(`${programNames.qio}: ${errorText(e)}\n`);
      return false;
    }
    throw e;
  }
}

/** Open `req` for a session (used by the command line and the open command). */
export async function openForSession(s: Session, req: OpenRequest, errorPrefix?: string): Promise<void> {
  if (req.snapshot) {
    s.image = await openSnapshotMode(s, req);
    s.request = req;
    return;
  }
  s.image = await openCliImage(req.filename, {
    readOnly: req.readOnly,
    forceShare: req.forceShare,
    ...(req.locking !== undefined ? { locking: req.locking } : {}),
    ...(req.format !== undefined ? { format: req.format } : {}),
    ...(req.dataFile !== undefined ? { dataFile: req.dataFile } : {}),
    ...(req.backing !== undefined ? { backing: req.backing } : {}),
    ...(req.backingFormat !== undefined ? { backingFormat: req.backingFormat } : {}),
    discard: req.discard,
    ...(req.encrypt ? { encrypt: req.encrypt } : {}),
    ...(req.backingEncrypt ? { backingEncrypt: req.backingEncrypt } : {}),
    ...(req.fileImage ? { fileImage: req.fileImage } : {}),
    ...(req.fileQuorum ? { fileQuorum: req.fileQuorum } : {}),
    ...(req.lazyRefcounts !== undefined ? { lazyRefcounts: req.lazyRefcounts } : {}),
    ...(req.overlapCheckInactiveL2 ? { overlapCheckInactiveL2: true } : {}),
    ...(req.qcow2Cache !== undefined ? { qcow2Cache: req.qcow2Cache } : {}),
    ...(req.fileBlkdebug !== undefined ? { fileBlkdebug: req.fileBlkdebug } : {}),
    ...(req.dataFileBlkdebug !== undefined ? { dataFileBlkdebug: req.dataFileBlkdebug } : {}),
    ...(req.topBlkdebug !== undefined ? { topBlkdebug: req.topBlkdebug } : {}),
    program: programNames.qio,
    onWarning: (w) => s.io.err(`${w}\n`),
    errorPrefix: errorPrefix ?? (req.filename === "" || req.imageOpts ? "can't open: " : `can't open device ${req.filename}: `),
  });
  s.request = req;
}

/**
 * qemu-io -s: the image is opened read-only and a temporary qcow2 overlay on top of it (in TMPDIR, else
 * /var/tmp, as QEMU's temporary snapshot) takes the writes; the overlay is unlinked once open.
 */
async function openSnapshotMode(s: Session, req: OpenRequest): Promise<BlockImage> {
  const base = await openCliImage(req.filename, {
    readOnly: true,
    forceShare: req.forceShare,
    ...(req.format !== undefined ? { format: req.format } : {}),
    ...(req.dataFile !== undefined ? { dataFile: req.dataFile } : {}),
    ...(req.backing !== undefined ? { backing: req.backing } : {}),
    ...(req.backingFormat !== undefined ? { backingFormat: req.backingFormat } : {}),
    ...(req.encrypt ? { encrypt: req.encrypt } : {}),
    ...(req.backingEncrypt ? { backingEncrypt: req.backingEncrypt } : {}),
    program: programNames.qio,
    onWarning: (w) => s.io.err(`${w}\n`),
    errorPrefix: req.filename === "" || req.imageOpts ? "can't open: " : `can't open device ${req.filename}: `,
  });
  const size = base.virtualSize - (base.virtualSize % 512);
  const format = base.format;
  await base.close();
  const dir = await mkdtemp(join(process.env.TMPDIR || "/var/tmp", "qio-snapshot-"));
  const overlay = join(dir, "overlay.qcow2");
  try {
    await createImage(overlay, { size, backingFile: /^[a-z][a-z0-9+.-]*:/i.test(req.filename) ? req.filename : resolvePath(req.filename), backingFormat: format });
    return await openCliImage(overlay, {
      readOnly: false,
      format: "qcow2",
      discard: req.discard,
      program: programNames.qio,
      onWarning: (w) => s.io.err(`${w}\n`),
      // The temporary overlay names the user's image by its absolute path: no warning about that.
      warnOutsideReferences: false,
      errorPrefix: `can't open device ${req.filename}: `,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

