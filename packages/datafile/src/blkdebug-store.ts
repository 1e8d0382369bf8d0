/**
 * QEMU's blkdebug driver as a ByteStore filter: error injection for tests. A format engine above it raises
 * QEMU's debug events (`debugEvent("l2_update")`, see ByteStore.debugEvent) at the points where QEMU's qcow2
 * driver raises them; the rules of the event then act:
 *
 * - an inject-error rule becomes active: the next requests of its I/O types (those touching its offset, when it
 *   has one) fail with its errno, once (the rule is then gone) or until another event activates other rules;
 * - a set-state rule moves the filter to its new state (rules with a state act only in that state; the filter
 *   starts in state 1).
 *
 * Rules of the event "none" act as the filter opens. The request limits (align, max-transfer, ...) are
 * checked as QEMU checks them and recorded; requests pass through unsplit (the bytes are the same).
 */
import { Qcow2Error, errnoText, type ByteStore, type StorePreallocation } from "@qcowkit/spec";

export type BlkdebugIoType = "read" | "write" | "write-zeroes" | "discard" | "flush" | "block-status";

export interface BlkdebugInjectError {
  /** The event that activates the rule ("none": active from the start). */
  event: string;
  /** Only in this state (any state when absent or 0). */
  state?: number;
  /** The I/O type the rule applies to; all but block-status when absent. */
  iotype?: BlkdebugIoType;
  /** errno number (default 5, EIO). */
  errno?: number;
  /** Only requests touching this byte offset (sector * 512); all requests when absent. */
  offset?: number;
  /** Removed once it fired. */
  once?: boolean;
  /** QEMU fails the request without first yielding; the same here (no effect on the result). */
  immediately?: boolean;
}

export interface BlkdebugSetState {
  event: string;
  /** Only in this state (any state when absent or 0). */
  state?: number;
  /** The state after the event (default 0). */
  newState?: number;
}

/** QEMU's request limits of a blkdebug node (bytes; 0 or absent: none). */
export interface BlkdebugLimits {
  align?: number;
  maxTransfer?: number;
  optWriteZero?: number;
  maxWriteZero?: number;
  optDiscard?: number;
  maxDiscard?: number;
}

export interface BlkdebugConfig extends BlkdebugLimits {
  injectError?: readonly BlkdebugInjectError[];
  setState?: readonly BlkdebugSetState[];
  /**
   * QEMU's raw format driver sits on this node (`{"driver":"raw","file":{"driver":"blkdebug",...}}`): it raises
   * read_aio before each read and write_aio before each write it passes down.
   */
  rawAbove?: boolean;
}

export const BLKDEBUG_IO_TYPES: readonly BlkdebugIoType[] = ["read", "write", "write-zeroes", "discard", "flush", "block-status"];

/** QEMU 7.2's debug event names (BlkdebugEvent). */
export const BLKDEBUG_EVENTS: readonly string[] = [
  "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
  "l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
  "read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
  "vmstate_load", "vmstate_save", "cow_read", "cow_write",
  "reftable_load", "reftable_grow", "reftable_update",
  "refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc", "refblock_alloc_hookup",
  "refblock_alloc_write", "refblock_alloc_write_blocks", "refblock_alloc_write_table", "refblock_alloc_switch_table",
  "cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
  "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
  "pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
  "l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
];

/** Linux errno numbers QEMU's tests use, by the names Qcow2Error knows. */
const ERRNO_NAMES: Record<number, keyof typeof errnoText> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  11: "EAGAIN",
  13: "EACCES",
  17: "EEXIST",
  22: "EINVAL",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  34: "ERANGE",
  95: "ENOTSUP",
};

type Rule = { kind: "inject"; rule: BlkdebugInjectError } | { kind: "set-state"; rule: BlkdebugSetState };

const INT_MAX = 2 ** 31 - 1;

/** QEMU's checks of the limits, in its words ("Cannot meet constraints with align 3"). */
export function checkBlkdebugLimits(l: BlkdebugLimits): void {
  const fail = (name: string, v: number): never => {
    throw new Qcow2Error("INVALID_ARGUMENT", `Cannot meet constraints with ${name} ${v}`);
  };
  const align = l.align ?? 0;
  if (align && (align >= INT_MAX || (align & (align - 1)) !== 0)) fail("align", align);
  const base = Math.max(align, 1);
  const aligned = (v: number, a: number) => v % a === 0;
  const check = (name: string, v: number | undefined, a: number) => {
    if (v && (v >= INT_MAX || !aligned(v, a))) fail(name, v);
  };
  check("max-transfer", l.maxTransfer, base);
  check("opt-write-zero", l.optWriteZero, base);
  check("max-write-zero", l.maxWriteZero, Math.max(l.optWriteZero ?? 0, base));
  check("opt-discard", l.optDiscard, base);
  check("max-discard", l.maxDiscard, Math.max(l.optDiscard ?? 0, base));
}

export class BlkdebugStore implements ByteStore {
  readonly name: string;
  readonly limits: BlkdebugLimits;
  private readonly rules = new Map<string, Rule[]>();
  private active: BlkdebugInjectError[] = [];
  private state = 1;
  private readonly rawAbove: boolean;
  /** QEMU's write generation: a flush with no write since the last successful one does not reach the node. */
  private writeGen = 0;
  private flushedGen = 0;
  /** Breakpoints (`break EVENT TAG`), newest first: each suspends one request, then is gone. */
  private breakpoints: Array<{ event: string; tag: string }> = [];
  /** Suspended requests, oldest first. */
  private suspended: Array<{ tag: string; resume: () => void }> = [];
  /** What the request that raised a breakpoint's event waits for before its next I/O. */
  private gate: Promise<void> | undefined;
  private suspendWaiters: Array<() => void> = [];
  /** Where QEMU's "blkdebug: Suspended request 'A'" lines go (QEMU prints them on standard output). */
  report?: (line: string) => void;

  constructor(
    private readonly inner: ByteStore,
    config: BlkdebugConfig,
  ) {
    this.name = inner.name;
    checkBlkdebugLimits(config);
    const { injectError: _i, setState: _s, rawAbove, ...limits } = config;
    this.limits = limits;
    this.rawAbove = rawAbove ?? false;
    // QEMU adds each rule at the head of its event's list: the inject-error rules first, then the set-state ones.
    for (const rule of config.injectError ?? []) {
      checkEvent(rule.event);
      if (rule.errno !== undefined && ERRNO_NAMES[rule.errno] === undefined) {
        throw new Qcow2Error("INVALID_ARGUMENT", `blkdebug: errno ${rule.errno} is not supported`);
      }
      this.add({ kind: "inject", rule });
    }
    for (const rule of config.setState ?? []) {
      checkEvent(rule.event);
      this.add({ kind: "set-state", rule });
    }
    this.debugEvent("none");
  }

  private add(r: Rule): void {
    const list = this.rules.get(r.rule.event) ?? [];
    list.unshift(r);
    this.rules.set(r.rule.event, list);
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** The current state (1 when opened). */
  get currentState(): number {
    return this.state;
  }

  /** An event raised by the format above: its rules for the current state act (see the module comment). */
  debugEvent(name: string): void {
    const list = this.rules.get(name);
    if (!list) {
      this.checkBreakpoints(name);
      return;
    }
    let newState = this.state;
    let injected = 0;
    for (const r of list) {
      if (r.rule.state && r.rule.state !== this.state) continue;
      if (r.kind === "inject") {
        // The first inject-error rule of an event replaces the rules active before it.
        if (injected++ === 0) this.active = [];
        this.active.unshift(r.rule);
      } else {
        newState = r.rule.newState ?? 0;
      }
    }
    this.state = newState;
    this.checkBreakpoints(name);
  }

  /**
   * Suspend the next request that raises `event` (qemu-io's `break`): the request stops before its next I/O
   * until `resume(tag)`. Unknown events fail with ENOENT.
   */
  setBreakpoint(event: string, tag: string): void {
    if (!BLKDEBUG_EVENTS.includes(event)) throw new Qcow2Error("NOT_FOUND", errnoText.ENOENT, { errno: "ENOENT" });
    this.breakpoints.unshift({ event, tag });
  }

  /** Remove the breakpoints of `tag` and resume its suspended requests; ENOENT when no breakpoint was set. */
  removeBreakpoint(tag: string): void {
    const before = this.breakpoints.length;
    this.breakpoints = this.breakpoints.filter((b) => b.tag !== tag);
    const tagged = this.suspended.filter((r) => r.tag === tag).length;
    for (let i = 0; i < tagged; i++) this.resume(tag);
    // Only a breakpoint that was still set counts as found (QEMU's answer, resumed requests or not).
    if (this.breakpoints.length === before) throw new Qcow2Error("NOT_FOUND", errnoText.ENOENT, { errno: "ENOENT" });
  }

  /** Resume the oldest request suspended under `tag`; ENOENT when there is none. */
  resume(tag: string): void {
    const i = this.suspended.findIndex((r) => r.tag === tag);
    if (i < 0) throw new Qcow2Error("NOT_FOUND", errnoText.ENOENT, { errno: "ENOENT" });
    const [r] = this.suspended.splice(i, 1);
    this.report?.(`blkdebug: Resuming request '${tag}'\n`);
    r!.resume();
  }

  /** Whether a breakpoint is set or a request suspended. */
  get armed(): boolean {
    return this.breakpoints.length > 0 || this.suspended.length > 0;
  }

  /** Whether a request is suspended under `tag` (any tag when absent). */
  isSuspended(tag?: string): boolean {
    return this.suspended.some((r) => tag === undefined || r.tag === tag);
  }

  /** Resolves when a request is suspended (at once when one is). */
  whenSuspended(): Promise<void> {
    if (this.suspended.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.suspendWaiters.push(resolve));
  }

  private checkBreakpoints(event: string): void {
    const hits = this.breakpoints.filter((b) => b.event === event);
    if (hits.length === 0) return;
    this.breakpoints = this.breakpoints.filter((b) => b.event !== event);
    const waits: Promise<void>[] = [];
    for (const b of hits) {
      waits.push(new Promise<void>((resume) => this.suspended.push({ tag: b.tag, resume })));
      this.report?.(`blkdebug: Suspended request '${b.tag}'\n`);
    }
    const before = this.gate;
    this.gate = Promise.all([before, ...waits]).then(() => undefined);
    for (const w of this.suspendWaiters.splice(0)) w();
  }

  /** The request that raised a breakpoint's event stops here, before its next I/O, until resumed. */
  private async passGate(): Promise<void> {
    const gate = this.gate;
    if (!gate) return;
    this.gate = undefined;
    await gate;
  }

  private check(iotype: BlkdebugIoType, offset: number, length: number): void {
    const rule = this.active.find(
      (r) =>
        (r.iotype === undefined ? iotype !== "block-status" : r.iotype === iotype) &&
        (r.offset === undefined || (length > 0 && r.offset >= offset && r.offset < offset + length)),
    );
    if (!rule) return;
    const errnoNumber = rule.errno ?? 5;
    if (errnoNumber === 0) return;
    if (rule.once) {
      this.active = this.active.filter((r) => r !== rule);
      const list = this.rules.get(rule.event);
      if (list) this.rules.set(rule.event, list.filter((r) => r.rule !== rule));
    }
    const errno = ERRNO_NAMES[errnoNumber]!;
    throw new Qcow2Error("IO_ERROR", errnoText[errno], { errno });
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    if (this.rawAbove) this.debugEvent("read_aio");
    if (this.gate) await this.passGate();
    this.check("read", offset, into.byteLength);
    await this.inner.read(offset, into);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.rawAbove) this.debugEvent("write_aio");
    if (this.gate) await this.passGate();
    this.writeGen++;
    this.check("write", offset, data.byteLength);
    await this.inner.write(offset, data);
  }

  async flush(): Promise<void> {
    if (this.gate) await this.passGate();
    const gen = this.writeGen;
    if (gen !== this.flushedGen) this.check("flush", 0, 0);
    await this.inner.flush();
    this.flushedGen = gen;
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  resize(size: number, preallocation?: StorePreallocation): Promise<void> {
    this.writeGen++;
    return this.inner.resize(size, preallocation);
  }

  async discard(offset: number, length: number): Promise<void> {
    if (this.gate) await this.passGate();
    this.writeGen++;
    this.check("discard", offset, length);
    await this.inner.discard(offset, length);
  }

  async writeZeroes(offset: number, length: number, unmap?: boolean): Promise<void> {
    if (this.gate) await this.passGate();
    this.writeGen++;
    this.check("write-zeroes", offset, length);
    await this.inner.writeZeroes(offset, length, unmap);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

function checkEvent(name: string): void {
  if (!BLKDEBUG_EVENTS.includes(name)) throw new Qcow2Error("INVALID_ARGUMENT", `invalid parameter value: ${name}`);
}

/**
 * A blkdebug config file (QEMU's INI dialect: `[inject-error]` and `[set-state]` sections of `key = "value"`
 * lines, `#` comments) as rules. Other sections and keys are refused.
 */
export function parseBlkdebugConfig(text: string): { injectError: BlkdebugInjectError[]; setState: BlkdebugSetState[] } {
  const injectError: BlkdebugInjectError[] = [];
  const setState: BlkdebugSetState[] = [];
  let section: Record<string, string> | undefined;
  let kind = "";
  const sections: Array<[string, Record<string, string>]> = [];
  const lines = text.split("\n");
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    const head = /^\[([\w-]+)\]$/.exec(line);
    if (head) {
      kind = head[1]!;
      section = {};
      sections.push([kind, section]);
      continue;
    }
    const kv = /^([\w-]+)\s*=\s*"(.*)"$/.exec(line);
    if (!kv || !section) throw new Qcow2Error("INVALID_ARGUMENT", `Could not parse blkdebug config file: line ${n + 1}: parse error`);
    section[kv[1]!] = kv[2]!;
  }
  for (const [name, s] of sections) {
    const num = (key: string): number | undefined => {
      const v = s[key];
      if (v === undefined) return undefined;
      if (!/^\d+$/.test(v)) throw new Qcow2Error("INVALID_ARGUMENT", `Parameter '${key}' expects a number`);
      return Number(v);
    };
    const bool = (key: string): boolean | undefined => {
      const v = s[key];
      if (v === undefined) return undefined;
      if (v === "on" || v === "yes" || v === "true") return true;
      if (v === "off" || v === "no" || v === "false") return false;
      throw new Qcow2Error("INVALID_ARGUMENT", `Parameter '${key}' expects 'on' or 'off'`);
    };
    const allowed = name === "inject-error" ? ["event", "state", "errno", "sector", "once", "immediately", "iotype"] : ["event", "state", "new_state"];
    if (name !== "inject-error" && name !== "set-state") throw new Qcow2Error("INVALID_ARGUMENT", `There is no option group '${name}'`);
    for (const key of Object.keys(s)) if (!allowed.includes(key)) throw new Qcow2Error("INVALID_ARGUMENT", `Invalid parameter '${key}'`);
    const event = s["event"];
    if (event === undefined) throw new Qcow2Error("INVALID_ARGUMENT", "Missing event name for rule");
    const state = num("state");
    if (name === "inject-error") {
      const iotype = s["iotype"];
      if (iotype !== undefined && !(BLKDEBUG_IO_TYPES as readonly string[]).includes(iotype)) throw new Qcow2Error("INVALID_ARGUMENT", `Invalid parameter '${iotype}'`);
      const rule: BlkdebugInjectError = { event };
      const errno = num("errno");
      const sector = num("sector");
      const once = bool("once");
      const immediately = bool("immediately");
      if (state !== undefined) rule.state = state;
      if (iotype !== undefined) rule.iotype = iotype as BlkdebugIoType;
      if (errno !== undefined) rule.errno = errno;
      if (sector !== undefined) rule.offset = sector * 512;
      if (once !== undefined) rule.once = once;
      if (immediately !== undefined) rule.immediately = immediately;
      injectError.push(rule);
    } else {
      const rule: BlkdebugSetState = { event };
      const newState = num("new_state");
      if (state !== undefined) rule.state = state;
      if (newState !== undefined) rule.newState = newState;
      setState.push(rule);
    }
  }
  return { injectError, setState };
}
