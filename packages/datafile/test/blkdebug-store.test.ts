/**
 * BlkdebugStore's rules as QEMU's blkdebug applies them: events activate inject-error rules, set-state rules
 * move the state, once-rules vanish after firing, a flush after no write does not reach the node; and the
 * config file parser.
 */
import { describe, expect, it } from "vitest";
import { BlkdebugStore, MemoryStore, parseBlkdebugConfig } from "../src/index";

const store = () => new MemoryStore();
const errnoOf = async (p: Promise<unknown>): Promise<string | undefined> => {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as { errno?: string }).errno;
  }
};

describe("BlkdebugStore", () => {
  it("an event activates its rule for the next request; once removes it after it fired", async () => {
    const s = new BlkdebugStore(store(), { injectError: [{ event: "l2_update", errno: 28, once: true }] });
    await s.write(0, new Uint8Array(512));
    s.debugEvent("l2_update");
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBe("ENOSPC");
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBeUndefined();
    s.debugEvent("l2_update");
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBeUndefined();
  });

  it("without once the rule stays active for every request of its types, flushes included", async () => {
    const s = new BlkdebugStore(store(), { injectError: [{ event: "read_aio" }] });
    s.debugEvent("read_aio");
    expect(await errnoOf(s.read(0, new Uint8Array(512)))).toBe("EIO");
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBe("EIO");
    expect(await errnoOf(s.flush())).toBe("EIO");
  });

  it("iotype and sector narrow a rule; block-status is not in the default types", async () => {
    const s = new BlkdebugStore(store(), { injectError: [{ event: "none", iotype: "write", offset: 4096 }] });
    expect(await errnoOf(s.write(0, new Uint8Array(4096)))).toBeUndefined();
    expect(await errnoOf(s.read(4096, new Uint8Array(512)))).toBeUndefined();
    expect(await errnoOf(s.write(3584, new Uint8Array(1024)))).toBe("EIO");
  });

  it("set-state rules move the state; rules with a state act only in it", async () => {
    const s = new BlkdebugStore(store(), {
      setState: [{ event: "write_aio", newState: 2 }],
      injectError: [{ event: "write_aio", state: 2 }],
    });
    expect(s.currentState).toBe(1);
    s.debugEvent("write_aio");
    expect(s.currentState).toBe(2);
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBeUndefined();
    s.debugEvent("write_aio");
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBe("EIO");
  });

  it("a flush with no write since the last successful one does not reach the rules", async () => {
    const s = new BlkdebugStore(store(), { injectError: [{ event: "none", iotype: "flush" }] });
    expect(await errnoOf(s.flush())).toBeUndefined();
    await s.write(0, new Uint8Array(512));
    expect(await errnoOf(s.flush())).toBe("EIO");
    expect(await errnoOf(s.flush())).toBe("EIO");
  });

  it("a raw node above raises read_aio and write_aio itself", async () => {
    const s = new BlkdebugStore(store(), { injectError: [{ event: "write_aio", once: true }], rawAbove: true });
    expect(await errnoOf(s.read(0, new Uint8Array(512)))).toBeUndefined();
    expect(await errnoOf(s.write(0, new Uint8Array(512)))).toBe("EIO");
  });

  it("unknown events and limits QEMU cannot meet are refused", () => {
    expect(() => new BlkdebugStore(store(), { injectError: [{ event: "nope" }] })).toThrow("invalid parameter value: nope");
    expect(() => new BlkdebugStore(store(), { align: 3 })).toThrow("Cannot meet constraints with align 3");
    expect(() => new BlkdebugStore(store(), { align: 4096, maxTransfer: 6144 })).toThrow("Cannot meet constraints with max-transfer 6144");
  });
});

describe("parseBlkdebugConfig", () => {
  it("reads QEMU's INI dialect", () => {
    const c = parseBlkdebugConfig(
      '# comment\n[inject-error]\nevent = "l1_update"\nerrno = "28"\nimmediately = "off"\nonce ="on"\nsector = "8"\n\n[set-state]\nevent = "l2_load"\nstate = "1"\nnew_state = "3"\n',
    );
    expect(c.injectError).toEqual([{ event: "l1_update", errno: 28, immediately: false, once: true, offset: 4096 }]);
    expect(c.setState).toEqual([{ event: "l2_load", state: 1, newState: 3 }]);
  });

  it("refuses what QEMU refuses", () => {
    expect(() => parseBlkdebugConfig("[other]\nevent = \"x\"\n")).toThrow("There is no option group 'other'");
    expect(() => parseBlkdebugConfig('[inject-error]\nbogus = "1"\n')).toThrow("Invalid parameter 'bogus'");
    expect(() => parseBlkdebugConfig('event = "x"\n')).toThrow("parse error");
    expect(() => parseBlkdebugConfig('[inject-error]\nerrno = "5"\n')).toThrow("Missing event name for rule");
  });
});
