import { describe, expect, it } from "vitest";
import {
  Qcow2Error,
  SNAPSHOT_HEADER_BYTES,
  decodeSnapshotEntry,
  decodeSnapshotTable,
  encodeSnapshotTable,
  snapshotEntryBytes,
  type SnapshotEntry,
} from "../src/index";
import { hex } from "./helpers/fixtures";

function entry(overrides: Partial<SnapshotEntry> = {}): SnapshotEntry {
  return {
    l1TableOffset: 0x70000,
    l1Size: 2,
    id: "1",
    name: "snap",
    dateSeconds: 1700000000,
    dateNanoseconds: 123456789,
    vmClockNanoseconds: 2 ** 40 + 5,
    vmStateSize: 0,
    diskSize: 1024 * 1024,
    icount: -1n,
    unknownExtraData: new Uint8Array(0),
    ...overrides,
  };
}

/** A raw entry with arbitrary extra data (as an older or newer writer would lay it out). */
function rawEntry(extra: Uint8Array, id: string, name: string, vmState32 = 0): Uint8Array {
  const te = new TextEncoder();
  const idB = te.encode(id);
  const nameB = te.encode(name);
  const len = (SNAPSHOT_HEADER_BYTES + extra.byteLength + idB.byteLength + nameB.byteLength + 7) & ~7;
  const out = new Uint8Array(len);
  const v = new DataView(out.buffer);
  v.setBigUint64(0, 0x50000n);
  v.setUint32(8, 1);
  v.setUint16(12, idB.byteLength);
  v.setUint16(14, nameB.byteLength);
  v.setUint32(16, 11);
  v.setUint32(20, 22);
  v.setBigUint64(24, 33n);
  v.setUint32(32, vmState32);
  v.setUint32(36, extra.byteLength);
  out.set(extra, 40);
  out.set(idB, 40 + extra.byteLength);
  out.set(nameB, 40 + extra.byteLength + idB.byteLength);
  return out;
}

describe("snapshot table entries", () => {
  it("the fixed part is 40 bytes", () => {
    expect(SNAPSHOT_HEADER_BYTES).toBe(40);
  });

  it("encodes QEMU's layout: 40 + 24 extra + id + name, padded to 8", () => {
    const bytes = encodeSnapshotTable([entry()]);
    expect(bytes.byteLength).toBe(72); // 40 + 24 + 1 + 4 = 69 -> 72
    expect(snapshotEntryBytes(entry())).toBe(72);
    expect(hex(bytes)).toBe(
      "0000000000070000" + // l1_table_offset
        "00000002" + // l1_size
        "0001" + "0004" + // id, name sizes
        "6553f100" + // date_sec 1700000000
        "075bcd15" + // date_nsec
        "0000010000000005" + // vm_clock_nsec
        "00000000" + // vm_state_size (32)
        "00000018" + // extra_data_size 24
        "0000000000000000" + // vm_state_size_large
        "0000000000100000" + // disk_size
        "ffffffffffffffff" + // icount -1
        "31" + "736e6170" + "000000", // "1" "snap" padding
    );
  });

  it("round trips several entries (UTF-8 names, large VM state)", () => {
    const list = [
      entry(),
      entry({ id: "22", name: "s\u00e9cond", vmStateSize: 2 ** 33, icount: 12345n, l1TableOffset: 2 ** 41 }),
      entry({ id: "3", name: "", diskSize: 2 ** 45 }),
    ];
    const bytes = encodeSnapshotTable(list);
    expect(bytes.byteLength).toBe(list.reduce((n, e) => n + snapshotEntryBytes(e), 0));
    expect(decodeSnapshotTable(bytes, 3)).toEqual(list);
  });

  it("a VM state over 4 GiB leaves the 32-bit field 0 (QEMU: older readers see a disk-only snapshot)", () => {
    const bytes = encodeSnapshotTable([entry({ vmStateSize: 2 ** 32 })]);
    expect(new DataView(bytes.buffer).getUint32(32)).toBe(0);
    const small = encodeSnapshotTable([entry({ vmStateSize: 0xffffffff })]);
    expect(new DataView(small.buffer).getUint32(32)).toBe(0xffffffff);
  });

  it("unknown extra data after the 24 known bytes is kept byte for byte and re-encoded", () => {
    const extra = new Uint8Array(40);
    const v = new DataView(extra.buffer);
    v.setBigUint64(0, 777n);
    v.setBigUint64(8, 4096n);
    v.setBigInt64(16, 99n);
    extra.set(Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i), 24);
    const raw = rawEntry(extra, "7", "future", 777); // QEMU mirrors a VM state below 4 GiB in the 32-bit field
    const { entry: e, next } = decodeSnapshotEntry(raw, 0);
    expect(next).toBe(raw.byteLength);
    expect(e.vmStateSize).toBe(777);
    expect(e.diskSize).toBe(4096);
    expect(e.icount).toBe(99n);
    expect(Array.from(e.unknownExtraData)).toEqual(Array.from(extra.subarray(24)));
    expect(hex(encodeSnapshotTable([e]))).toBe(hex(raw));
  });

  it("v2-era entries without extra data: 32-bit VM state, no disk size, no icount", () => {
    const raw = rawEntry(new Uint8Array(0), "1", "old", 4321);
    const { entry: e, next } = decodeSnapshotEntry(raw, 0);
    expect(next).toBe(48); // 40 + 1 + 3 = 44 -> 48
    expect(e).toMatchObject({ id: "1", name: "old", vmStateSize: 4321, dateSeconds: 11, dateNanoseconds: 22, vmClockNanoseconds: 33 });
    expect(e.diskSize).toBeUndefined();
    expect(e.icount).toBeUndefined();
    // QEMU rewrites it with the 24 bytes of extra data
    expect(snapshotEntryBytes(e)).toBe(72);
  });

  it("extra data of 8 and 16 bytes: the 64-bit VM state, then the disk size", () => {
    const e8 = new Uint8Array(8);
    new DataView(e8.buffer).setBigUint64(0, 2n ** 34n);
    const d8 = decodeSnapshotEntry(rawEntry(e8, "1", "a", 5), 0).entry;
    expect(d8.vmStateSize).toBe(2 ** 34);
    expect(d8.diskSize).toBeUndefined();
    const e16 = new Uint8Array(16);
    new DataView(e16.buffer).setBigUint64(8, 65536n);
    const d = decodeSnapshotEntry(rawEntry(e16, "1", "a", 5), 0).entry;
    expect(d.vmStateSize).toBe(0);
    expect(d.diskSize).toBe(65536);
    expect(d.icount).toBeUndefined();
  });

  it("decodes entries at their padded offsets one after the other", () => {
    const a = rawEntry(new Uint8Array(0), "1", "x");
    const b = rawEntry(new Uint8Array(24), "2", "yy");
    const table = new Uint8Array(a.byteLength + b.byteLength);
    table.set(a);
    table.set(b, a.byteLength);
    expect(decodeSnapshotTable(table, 2).map((e) => e.name)).toEqual(["x", "yy"]);
  });

  it("refuses more than 1024 bytes of extra data with QEMU's message and the entry number", () => {
    const a = rawEntry(new Uint8Array(0), "1", "x");
    const b = rawEntry(new Uint8Array(1025), "2", "y");
    const table = new Uint8Array(a.byteLength + b.byteLength);
    table.set(a);
    table.set(b, a.byteLength);
    try {
      decodeSnapshotTable(table, 2);
      throw new Error("accepted");
    } catch (e) {
      expect(e).toBeInstanceOf(Qcow2Error);
      expect((e as Qcow2Error).message).toBe("Too much extra metadata in snapshot table entry 1");
      expect((e as Qcow2Error).errno).toBe("EFBIG");
    }
    expect(decodeSnapshotEntry(rawEntry(new Uint8Array(1024), "1", "z"), 0).entry.unknownExtraData.byteLength).toBe(1000);
  });

  it("refuses a table shorter than its entries claim", () => {
    const raw = rawEntry(new Uint8Array(24), "1", "name");
    expect(() => decodeSnapshotTable(raw.subarray(0, 39), 1)).toThrow("Snapshot table is truncated");
    expect(() => decodeSnapshotTable(raw.subarray(0, 40 + 24 + 4), 1)).toThrow("Snapshot table is truncated");
    expect(() => decodeSnapshotTable(raw, 2)).toThrow("Snapshot table is truncated");
  });
});
