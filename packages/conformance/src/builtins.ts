import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { relative, resolve } from "node:path";
import { parseBigNumber, parseNumber } from "./numbers";
import {
  dumpHeader,
  fileSize,
  getL1Entry,
  getL2Entry,
  classifyL2Entry,
  getRefcount,
  readBigEndian,
  readHeader,
  readBytes,
  setL1Entry,
  setL2Entry,
  setRefcount,
  writeBigEndian,
  writeBytes,
} from "./qcow2-probe";

/**
 * Built-in step commands: file helpers and the qcow2 probe. They never call the implementation under test.
 * Each returns its output; a thrown BuiltinError becomes "NAME: message" with exit status 1.
 */

export class BuiltinError extends Error {}

export interface BuiltinContext {
  /** Directory for relative paths; `cd` changes it (never outside the case directory). */
  cwd: string;
  readonly testDir: string;
}

type Builtin = (args: string[], ctx: BuiltinContext) => string;

const hex = (v: bigint | number): string => `0x${v.toString(16)}`;

/** A word list known to hold at least N words. */
type AtLeast<N extends number, Known extends string[] = []> = Known["length"] extends N
  ? [...Known, ...string[]]
  : AtLeast<N, [...Known, string]>;

/** Checks the word count; afterwards the first `min` words are known to be there. */
function arity<N extends number>(args: string[], min: N, max: number, usage: string): asserts args is AtLeast<N> {
  if (args.length < min || args.length > max) throw new BuiltinError(`usage: ${usage}`);
}

const path = (ctx: BuiltinContext, p: string): string => resolve(ctx.cwd, p);

/** Opens a plain file for writing without truncating it, creating it if needed. */
function withWritableFile(file: string, use: (fd: number) => void): void {
  const fd = openSync(file, existsSync(file) ? "r+" : "w");
  try {
    use(fd);
  } finally {
    closeSync(fd);
  }
}

/** 1 MiB: iotests 243's line between "low" and "high" disk usage. */
const HIGH_USAGE_BYTES = 1 << 20;

const BUILTINS: Record<string, Builtin> = {
  echo: (args) => `${args.join(" ")}\n`,

  /** poke FILE OFFSET HEX... : write raw bytes (hex digits, spaces between words allowed). */
  poke(args, ctx) {
    arity(args, 3, Infinity, "poke FILE OFFSET HEXBYTES...");
    const digits = args.slice(2).join("");
    if (!/^([0-9a-fA-F]{2})+$/.test(digits)) throw new BuiltinError(`bad hex bytes "${digits}"`);
    const bytes = new Uint8Array(digits.length / 2);
    for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(digits.slice(i * 2, i * 2 + 2), 16);
    writeBytes(path(ctx, args[0]), parseNumber(args[1]), bytes);
    return "";
  },

  /** poke_be FILE OFFSET WIDTH VALUE : write a big-endian integer of 1, 2, 4 or 8 bytes. */
  poke_be(args, ctx) {
    arity(args, 4, 4, "poke_be FILE OFFSET WIDTH VALUE");
    writeBigEndian(path(ctx, args[0]), parseNumber(args[1]), parseNumber(args[2]), parseBigNumber(args[3]));
    return "";
  },

  /** peek_be FILE OFFSET WIDTH : print a big-endian integer. */
  peek_be(args, ctx) {
    arity(args, 3, 3, "peek_be FILE OFFSET WIDTH");
    const width = parseNumber(args[2]);
    if (![1, 2, 4, 8].includes(width)) throw new BuiltinError("width must be 1, 2, 4 or 8");
    return `${hex(readBigEndian(path(ctx, args[0]), parseNumber(args[1]), width))}\n`;
  },

  dump_header(args, ctx) {
    arity(args, 1, 1, "dump_header FILE");
    return dumpHeader(path(ctx, args[0]));
  },

  l1_entry(args, ctx) {
    arity(args, 2, 2, "l1_entry FILE INDEX");
    return `L1[${parseNumber(args[1])}] = ${hex(getL1Entry(path(ctx, args[0]), parseNumber(args[1])))}\n`;
  },

  set_l1_entry(args, ctx) {
    arity(args, 3, 3, "set_l1_entry FILE INDEX VALUE");
    setL1Entry(path(ctx, args[0]), parseNumber(args[1]), parseBigNumber(args[2]));
    return "";
  },

  /** l2_entry FILE GUEST_OFFSET : the L2 entry (and subcluster bitmap) mapping a guest offset. */
  l2_entry(args, ctx) {
    arity(args, 2, 2, "l2_entry FILE GUEST_OFFSET");
    const { entry, bitmap } = getL2Entry(path(ctx, args[0]), parseNumber(args[1]));
    const guest = hex(parseNumber(args[1]));
    return `L2 entry for ${guest}: ${hex(entry)}${bitmap === undefined ? "" : ` bitmap ${hex(bitmap)}`}\n`;
  },

  /**
   * l2_type FILE GUEST_OFFSET : how the spec classifies the cluster (standard L2 entries), without the
   * compressed descriptor's size and offset, which depend on the compressor.
   */
  l2_type(args, ctx) {
    arity(args, 2, 2, "l2_type FILE GUEST_OFFSET");
    const file = path(ctx, args[0]);
    const { entry, bitmap } = getL2Entry(file, parseNumber(args[1]));
    const guest = hex(parseNumber(args[1]));
    if (bitmap !== undefined) throw new BuiltinError("extended L2 entries: use l2_entry");
    return `L2 entry for ${guest}: ${classifyL2Entry(entry, readHeader(file).incompatibleFeatures)}\n`;
  },

  set_l2_entry(args, ctx) {
    arity(args, 3, 4, "set_l2_entry FILE GUEST_OFFSET VALUE [BITMAP]");
    const bitmap = args[3] === undefined ? undefined : parseBigNumber(args[3]);
    setL2Entry(path(ctx, args[0]), parseNumber(args[1]), parseBigNumber(args[2]), bitmap);
    return "";
  },

  /** refcount FILE HOST_OFFSET : the refcount of the host cluster containing HOST_OFFSET. */
  refcount(args, ctx) {
    arity(args, 2, 2, "refcount FILE HOST_OFFSET");
    const host = parseNumber(args[1]);
    return `refcount of ${hex(host)}: ${getRefcount(path(ctx, args[0]), host)}\n`;
  },

  set_refcount(args, ctx) {
    arity(args, 3, 3, "set_refcount FILE HOST_OFFSET VALUE");
    setRefcount(path(ctx, args[0]), parseNumber(args[1]), parseBigNumber(args[2]));
    return "";
  },

  /** size FILE : the file's length in bytes. */
  size(args, ctx) {
    arity(args, 1, Infinity, "size FILE...");
    return args.map((f) => `${f}: ${fileSize(path(ctx, f))} bytes\n`).join("");
  },

  /** disk_usage FILE : "low" below 1 MiB allocated on disk, "high" otherwise. */
  disk_usage(args, ctx) {
    arity(args, 1, Infinity, "disk_usage FILE...");
    return args
      .map((f) => `${f}: ${statSync(path(ctx, f)).blocks * 512 < HIGH_USAGE_BYTES ? "low" : "high"}\n`)
      .join("");
  },

  /** truncate FILE SIZE : create or resize a plain file. */
  truncate(args, ctx) {
    arity(args, 2, 2, "truncate FILE SIZE");
    withWritableFile(path(ctx, args[0]), (fd) => ftruncateSync(fd, parseNumber(args[1])));
    return "";
  },

  /** fill FILE OFFSET LENGTH BYTE : write LENGTH copies of BYTE (creating the file if needed). */
  fill(args, ctx) {
    arity(args, 4, 4, "fill FILE OFFSET LENGTH BYTE");
    const offset = parseNumber(args[1]);
    const length = parseNumber(args[2]);
    const byte = parseNumber(args[3]);
    if (byte > 255) throw new BuiltinError("BYTE must be 0..255");
    withWritableFile(path(ctx, args[0]), (fd) => {
      const chunk = new Uint8Array(Math.min(length, 1 << 20)).fill(byte);
      for (let done = 0; done < length; ) {
        const n = Math.min(chunk.length, length - done);
        done += writeSync(fd, chunk, 0, n, offset + done);
      }
    });
    return "";
  },

  /** pattern FILE OFFSET LENGTH BYTE : does the plain file hold BYTE over the whole range? */
  pattern(args, ctx) {
    arity(args, 4, 4, "pattern FILE OFFSET LENGTH BYTE");
    const offset = parseNumber(args[1]);
    const length = parseNumber(args[2]);
    const byte = parseNumber(args[3]);
    for (let done = 0; done < length; ) {
      const n = Math.min(1 << 20, length - done);
      const b = readBytes(path(ctx, args[0]), offset + done, n);
      for (let i = 0; i < n; i++) {
        const found = b[i];
        if (found === undefined) return `${args[0]}: end of file at ${offset + done + i}\n`;
        if (found !== byte) return `${args[0]}: mismatch at ${offset + done + i}: ${hex(found)} is not ${hex(byte)}\n`;
      }
      done += n;
    }
    return `${args[0]}: ${length} bytes at ${offset} are ${hex(byte)}\n`;
  },

  /** hexdump FILE OFFSET LENGTH : 16 bytes a line; runs of identical lines print as "*". */
  hexdump(args, ctx) {
    arity(args, 3, 3, "hexdump FILE OFFSET LENGTH");
    const offset = parseNumber(args[1]);
    const b = readBytes(path(ctx, args[0]), offset, parseNumber(args[2]));
    const out: string[] = [];
    let last = "";
    let starred = false;
    for (let o = 0; o < b.length; o += 16) {
      const body = [...b.subarray(o, o + 16)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
      if (body === last && o + 16 < b.length) {
        if (!starred) out.push("*");
        starred = true;
        continue;
      }
      starred = false;
      last = body;
      out.push(`${(offset + o).toString(16).padStart(8, "0")}  ${body}`);
    }
    return out.length ? `${out.join("\n")}\n` : "";
  },

  rm(args, ctx) {
    arity(args, 1, Infinity, "rm FILE...");
    for (const f of args) rmSync(path(ctx, f), { force: true });
    return "";
  },

  mv(args, ctx) {
    arity(args, 2, 2, "mv FROM TO");
    renameSync(path(ctx, args[0]), path(ctx, args[1]));
    return "";
  },

  cp(args, ctx) {
    arity(args, 2, 2, "cp FROM TO");
    copyFileSync(path(ctx, args[0]), path(ctx, args[1]));
    return "";
  },

  mkdir(args, ctx) {
    arity(args, 1, 1, "mkdir DIR");
    mkdirSync(path(ctx, args[0]), { recursive: true });
    return "";
  },

  /** exists FILE : prints "FILE exists" or "FILE is missing". */
  exists(args, ctx) {
    arity(args, 1, Infinity, "exists FILE...");
    return args.map((f) => `${f} ${existsSync(path(ctx, f)) ? "exists" : "is missing"}\n`).join("");
  },

  cd(args, ctx) {
    arity(args, 1, 1, "cd DIR");
    const target = path(ctx, args[0]);
    if (relative(ctx.testDir, target).startsWith("..")) throw new BuiltinError("cd must stay inside TEST_DIR");
    if (!existsSync(target)) throw new BuiltinError(`${args[0]}: no such directory`);
    ctx.cwd = target;
    return "";
  },
};

export function isBuiltin(name: string): boolean {
  return Object.hasOwn(BUILTINS, name);
}

/** Runs a builtin; failures become output plus a non-zero status, like a failing command. */
export function runBuiltin(name: string, args: string[], ctx: BuiltinContext): { output: string; exitCode: number } {
  try {
    const builtin = BUILTINS[name];
    if (builtin === undefined) throw new BuiltinError("not a builtin");
    return { output: builtin(args, ctx), exitCode: 0 };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const message = err.code && err.syscall ? `${err.code} (${err.syscall})` : err.message;
    return { output: `${name}: ${message}\n`, exitCode: 1 };
  }
}

export const BUILTIN_NAMES: readonly string[] = Object.keys(BUILTINS);
