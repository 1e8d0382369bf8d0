import { describe, expect, it } from "vitest";
import { MemoryStore, QuorumStore } from "../src/index";
import { describeByteStoreContract } from "./contract";

describeByteStoreContract("QuorumStore of two MemoryStores", async ({ bytes, readOnly }) => {
  const children = [0, 1].map(() => new MemoryStore({ ...(bytes ? { bytes: bytes.slice() } : {}), readOnly }));
  return new QuorumStore(children, 2, "quorum");
});

describe("QuorumStore votes", () => {
  const three = (second: number) =>
    [1, second, 1].map((v) => new MemoryStore({ bytes: new Uint8Array(512).fill(v) }));

  it("answers with the version enough children return, and fails when none has the votes", async () => {
    const out = new Uint8Array(512);
    await new QuorumStore(three(7), 2, "q").read(0, out);
    expect(out.every((b) => b === 1)).toBe(true);
    await expect(new QuorumStore(three(7), 3, "q").read(0, out)).rejects.toMatchObject({ errno: "EIO" });
    await new QuorumStore(three(1), 3, "q").read(0, out);
    expect(out[0]).toBe(1);
  });

  it("writes to every child, and refuses thresholds QEMU refuses", async () => {
    const children = three(7);
    const q = new QuorumStore(children, 3, "q");
    await q.write(100, new Uint8Array([9, 9]));
    for (const c of children) {
      const b = new Uint8Array(2);
      await c.read(100, b);
      expect([...b]).toEqual([9, 9]);
    }
    expect(() => new QuorumStore(three(1), 4, "q")).toThrow("threshold may not exceed children count");
    expect(() => new QuorumStore(three(1), 0, "q")).toThrow("greater or equal to 1");
  });
});
