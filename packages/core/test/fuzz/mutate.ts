/**
 * Seeded mutations of qcow2 images: header fields set to interesting values (near 2^31, 2^32, 2^63, the file
 * size, unaligned, over the header), bit flips, L1/L2/refcount table entries pointing at other metadata,
 * themselves, past the end of the file or unaligned, refcount blocks that count themselves wrongly, header
 * extensions with bad lengths, huge backing file names, backing files that loop back, snapshot tables of up to
 * 2^32 - 1 entries, truncation and random overwrites.
 */
import { deflateZeros, deflateZerosFitting, zstdRleFrame } from "../../../../scripts/attack/images.mjs";
import { HEADER_LAYOUT } from "@qcowkit/spec";
import { rng } from "../helpers";

/** A header field: offset and width in bytes. */
const FIELDS: Record<string, readonly [number, number]> = HEADER_LAYOUT;

class Image {
  bytes: Uint8Array;
  view: DataView;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  get(offset: number, width: number): bigint {
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(offset + i < this.bytes.byteLength ? this.bytes[offset + i]! : 0);
    return v;
  }
  set(offset: number, width: number, value: bigint): void {
    // Writes far past the end are dropped (the image stays small); near the end they extend it.
    if (offset + width > this.bytes.byteLength + 1024 * 1024) return;
    if (offset + width > this.bytes.byteLength) this.grow(offset + width);
    let v = BigInt.asUintN(width * 8, value);
    for (let i = width - 1; i >= 0; i--) {
      this.bytes[offset + i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }
  grow(length: number): void {
    const b = new Uint8Array(length);
    b.set(this.bytes.subarray(0, Math.min(length, this.bytes.byteLength)));
    this.bytes = b;
    this.view = new DataView(b.buffer);
  }
  field(name: string): bigint {
    const [o, w] = FIELDS[name]!;
    return this.get(o, w);
  }
  get clusterSize(): number {
    const bits = Number(this.field("clusterBits"));
    return bits >= 9 && bits <= 21 ? 2 ** bits : 65536;
  }
  /** Offsets of the L2 tables the active L1 table names. */
  l2Tables(): number[] {
    const out: number[] = [];
    const l1 = Number(this.field("l1TableOffset"));
    const n = Math.min(Number(this.field("l1Size")), 4096);
    for (let i = 0; i < n; i++) {
      const e = this.get(l1 + i * 8, 8) & 0x00fffffffffffe00n;
      if (e !== 0n && e < BigInt(this.bytes.byteLength)) out.push(Number(e));
    }
    return out;
  }
  /** Compressed clusters the L2 tables name: where the entry is, where the payload is and its length. */
  compressedEntries(): Array<{ at: number; host: number; length: number }> {
    const bits = Math.log2(this.clusterSize);
    const offsetBits = BigInt(62 - (bits - 8));
    const ext = (this.field("incompatibleFeatures") & 16n) !== 0n;
    const out: Array<{ at: number; host: number; length: number }> = [];
    for (const t of this.l2Tables()) {
      for (let i = 0; i < Math.min(this.clusterSize / (ext ? 16 : 8), 4096); i++) {
        const at = t + i * (ext ? 16 : 8);
        const e = this.get(at, 8);
        if (((e >> 62n) & 1n) === 0n) continue;
        const host = Number(e & ((1n << offsetBits) - 1n));
        const sectors = Number((e >> offsetBits) & ((1n << BigInt(bits - 8)) - 1n)) + 1;
        const length = sectors * 512 - (host % 512);
        if (host + length <= this.bytes.byteLength) out.push({ at, host, length });
      }
    }
    return out;
  }
  /** Point the compressed L2 entry at `at` to `payload`, appended to the file (cut to what a descriptor holds). */
  appendCompressed(at: number, payload: Uint8Array): number {
    const bits = Math.log2(this.clusterSize);
    const end = Math.ceil(this.bytes.byteLength / 512) * 512;
    const bytes = payload.subarray(0, Math.min(payload.byteLength, 2 ** (bits - 8) * 512));
    const sectors = Math.ceil(bytes.byteLength / 512);
    this.grow(end + sectors * 512);
    this.bytes.set(bytes, end);
    this.set(at, 8, (1n << 62n) | (BigInt(sectors - 1) << BigInt(62 - (bits - 8))) | BigInt(end));
    return bytes.byteLength;
  }
  refblocks(): number[] {
    const out: number[] = [];
    const rt = Number(this.field("refcountTableOffset"));
    const n = Math.min(Number(this.field("refcountTableClusters")) * (this.clusterSize / 8), 4096);
    for (let i = 0; i < n; i++) {
      const e = this.get(rt + i * 8, 8) & ~0x1ffn;
      if (e !== 0n && e < BigInt(this.bytes.byteLength)) out.push(Number(e));
    }
    return out;
  }
}

export interface Mutation {
  bytes: Uint8Array;
  /** What was done, for reports. */
  description: string[];
  /** The backing file name was set to the image's own name (a loop). */
  selfReference: boolean;
}

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)]!;

function interesting(r: () => number, img: Image, original: bigint, width: number): bigint {
  const cs = BigInt(img.clusterSize);
  const end = BigInt(img.bytes.byteLength);
  const candidates: bigint[] = [
    0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 16n, 20n, 21n, 22n, 31n, 32n, 63n, 64n, 65n, 72n, 104n, 112n, 255n, 511n, 512n, 513n,
    cs - 1n, cs, cs + 1n, 2n * cs, 0x10000n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x100000000n,
    (1n << 31n) / 8n, (1n << 31n) / 8n - 1n, (1n << 53n), (1n << 62n), (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n,
    end, end - cs, end + cs, end * 1024n, original + 1n, original - 1n, original + cs, original - cs, original * 2n,
    original / 2n, original ^ (1n << BigInt(Math.floor(r() * width * 8))), original + 0x200n,
  ];
  return BigInt.asUintN(width * 8, pick(r, candidates));
}

/** Pointers worth aiming table entries at. */
function targets(img: Image): bigint[] {
  const cs = BigInt(img.clusterSize);
  const end = BigInt(img.bytes.byteLength);
  const l1 = img.field("l1TableOffset");
  const rt = img.field("refcountTableOffset");
  const l2 = img.l2Tables().map(BigInt);
  const rb = img.refblocks().map(BigInt);
  return [0n, cs, l1, rt, ...l2, ...rb, end, end + cs, end - cs, 1n << 40n, 0x00fffffffffffe00n, l1 + 0x200n, 0x200n];
}

type Mutator = (r: () => number, img: Image, notes: string[], state: { self: boolean; selfName: string }) => void;

const MUTATORS: Array<[weight: number, mutate: Mutator]> = [
  [
    6,
    (r, img, notes) => {
      const name = pick(r, Object.keys(FIELDS));
      const [o, w] = FIELDS[name]!;
      const v = interesting(r, img, img.get(o, w), w);
      img.set(o, w, v);
      notes.push(`${name}=${v}`);
    },
  ],
  [
    2,
    (r, img, notes) => {
      const limit = Math.max(112, Math.min(img.bytes.byteLength, Number(img.field("headerLength")) + 64));
      const bit = Math.floor(r() * limit * 8);
      img.bytes[bit >> 3] = img.bytes[bit >> 3]! ^ (1 << (bit & 7));
      notes.push(`header bit ${bit}`);
    },
  ],
  [
    3,
    (r, img, notes) => {
      const l1 = Number(img.field("l1TableOffset"));
      const n = Math.max(1, Math.min(Number(img.field("l1Size")), 64));
      const i = Math.floor(r() * n);
      const t = pick(r, targets(img));
      const v = (r() < 0.7 ? 1n << 63n : 0n) | (r() < 0.1 ? 1n << 56n : 0n) | t;
      img.set(l1 + i * 8, 8, v);
      notes.push(`L1[${i}]=0x${v.toString(16)}`);
    },
  ],
  [
    4,
    (r, img, notes) => {
      const tables = img.l2Tables();
      if (tables.length === 0) return;
      const t = pick(r, tables);
      const ext = (img.field("incompatibleFeatures") & 16n) !== 0n;
      const entries = img.clusterSize / (ext ? 16 : 8);
      const i = Math.floor(r() * Math.min(entries, 64));
      const at = t + i * (ext ? 16 : 8);
      const kind = r();
      let v: bigint;
      if (kind < 0.2) v = (1n << 62n) | BigInt(Math.floor(r() * 2 ** 30)) * 0x10001n; // compressed, odd descriptor
      else if (kind < 0.3) v = 1n; // zero flag
      else v = (r() < 0.6 ? 1n << 63n : 0n) | pick(r, targets(img)) | (r() < 0.1 ? 1n : 0n);
      img.set(at, 8, v);
      if (ext && r() < 0.3) img.set(at + 8, 8, BigInt(Math.floor(r() * 2 ** 32)) * 0x100000001n);
      notes.push(`L2@0x${t.toString(16)}[${i}]=0x${v.toString(16)}`);
    },
  ],
  [
    3,
    (r, img, notes) => {
      const rt = Number(img.field("refcountTableOffset"));
      const i = Math.floor(r() * 4);
      const t = pick(r, [...targets(img), BigInt(rt), BigInt(rt) + 1n]);
      img.set(rt + i * 8, 8, t);
      notes.push(`reftable[${i}]=0x${t.toString(16)}`);
    },
  ],
  [
    3,
    (r, img, notes) => {
      const blocks = img.refblocks();
      if (blocks.length === 0) return;
      const b = pick(r, blocks);
      const order = Number(img.field("version")) >= 3 ? Number(img.field("refcountOrder")) & 7 : 4;
      const bits = 2 ** Math.min(order, 6);
      const clusters = Math.floor(img.bytes.byteLength / img.clusterSize);
      const c = Math.floor(r() * Math.max(1, clusters + 2));
      const v = pick(r, [0n, 1n, 2n, (1n << BigInt(bits)) - 1n]);
      if (bits >= 8) img.set(b + c * (bits / 8), bits / 8, v);
      else {
        const byte = b + Math.floor((c * bits) / 8);
        img.bytes[byte] = Number(v) << ((c * bits) % 8);
      }
      notes.push(`refcount[${c}]=${v} (block 0x${b.toString(16)})`);
    },
  ],
  [
    2,
    (r, img, notes) => {
      // Header extensions: a bad length, or a known type with odd contents.
      const start = Number(img.field("version")) >= 3 ? Math.min(Number(img.field("headerLength")), 4096) : 72;
      const type = pick(r, [0xe2792acan, 0x6803f857n, 0x23852875n, 0x0537be77n, 0x44415441n, 0n, 0x12345678n]);
      const len = pick(r, [0n, 1n, 8n, 16n, 24n, 1023n, 0xffffn, 0x7fffffffn, 0xffffffffn]);
      img.set(start, 4, type);
      img.set(start + 4, 4, len);
      notes.push(`extension 0x${type.toString(16)} length ${len}`);
    },
  ],
  [
    2,
    (r, img, notes, state) => {
      // The backing file name: huge, absolute, a protocol, or the image itself (a loop).
      const names = ["$SELF", "$SELF", "/etc/passwd", "json:{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}", "nbd://127.0.0.1:1/x", "x".repeat(1023), "y".repeat(1024), "../../../../etc/shadow", ""];
      let name = pick(r, names);
      if (name === "$SELF") {
        state.self = true;
        name = state.selfName;
      }
      const off = pick(r, [1024, 2048, img.clusterSize - 16, img.clusterSize - name.length]);
      const bytes = new TextEncoder().encode(name);
      for (let i = 0; i < bytes.byteLength && off + i < img.bytes.byteLength; i++) img.bytes[off + i] = bytes[i]!;
      img.set(8, 8, BigInt(Math.max(0, off)));
      img.set(16, 4, BigInt(pick(r, [bytes.byteLength, bytes.byteLength, 0xffff, 1024, 0xffffffff])));
      notes.push(`backing name ${name.length > 40 ? `${name.slice(0, 10)}...(${name.length})` : JSON.stringify(name)} at ${off}`);
    },
  ],
  [
    2,
    (r, img, notes) => {
      // Snapshot tables: huge counts, entries with huge sizes.
      const count = pick(r, [1n, 2n, 65536n, 65537n, 0x7fffffffn, 0xffffffffn]);
      img.set(60, 4, count);
      let off = img.field("snapshotsOffset");
      if (off === 0n || r() < 0.3) off = BigInt(pick(r, [img.clusterSize, img.bytes.byteLength, 2 * img.clusterSize]));
      img.set(64, 8, off);
      const at = Number(off);
      if (at + 40 <= img.bytes.byteLength && r() < 0.7) {
        img.set(at + 8, 4, pick(r, [0x7fffffffn, 0xffffffffn, 1n]));
        img.set(at + 12, 2, pick(r, [0xffffn, 1n]));
        img.set(at + 36, 4, pick(r, [1025n, 0xffffffffn, 16n]));
      }
      notes.push(`snapshots ${count} at 0x${off.toString(16)}`);
    },
  ],
  [
    2,
    (r, img, notes) => {
      const cut = Math.floor(r() * img.bytes.byteLength);
      if (r() < 0.6) {
        img.grow(Math.max(512, cut));
        notes.push(`truncated to ${Math.max(512, cut)}`);
      } else {
        img.grow(img.bytes.byteLength + img.clusterSize * (1 + Math.floor(r() * 4)));
        notes.push("extended");
      }
    },
  ],
  [
    2,
    (r, img, notes) => {
      const cluster = Math.floor(r() * Math.max(1, Math.min(8, img.bytes.byteLength / img.clusterSize)));
      const at = cluster * img.clusterSize + Math.floor(r() * img.clusterSize);
      const n = 1 + Math.floor(r() * 16);
      for (let i = 0; i < n && at + i < img.bytes.byteLength; i++) img.bytes[at + i] = Math.floor(r() * 256);
      notes.push(`random bytes at 0x${at.toString(16)}`);
    },
  ],
];

// Compressed payloads (images that have some get this first, most of the time): damaged in place (bit flips, a cut, a zstd frame's declared size) or replaced by a
// decompression bomb appended to the file.
const compressedPayload: Mutator = (r, img, notes) => {
    const entries = img.compressedEntries();
    if (entries.length === 0) return;
    const e = pick(r, entries);
    const zstd = Number(img.field("headerLength")) > 104 && img.field("compressionType") === 1n;
    const cs = img.clusterSize;
    const kind = Math.floor(r() * 6);
    const payload = img.bytes.subarray(e.host, e.host + e.length);
    if (kind === 0 || kind === 1) {
      // Bit flips anywhere, or in the first bytes (frame header, block headers, deflate code lengths).
      const n = 1 + Math.floor(r() * 4);
      for (let k = 0; k < n; k++) {
        const bit = Math.floor(r() * Math.min(kind === 0 ? e.length : 24, e.length) * 8);
        payload[bit >> 3] = payload[bit >> 3]! ^ (1 << (bit & 7));
      }
      notes.push(`compressed payload at 0x${e.host.toString(16)}: ${n} bit flips${kind === 1 ? " in its head" : ""}`);
    } else if (kind === 2) {
      const cut = Math.floor(r() * e.length);
      payload.fill(0, cut);
      notes.push(`compressed payload at 0x${e.host.toString(16)} cut at ${cut}`);
    } else if (kind === 3 && zstd && payload[0] === 0x28 && payload[1] === 0xb5) {
      // The frame's declared content size set to another value where the header has room for one.
      const fcsFlag = payload[4]! >> 6;
      const at = 5 + ((payload[4]! >> 5) & 1 ? 0 : 1) + [0, 1, 2, 4][payload[4]! & 3]!;
      const width = [(payload[4]! >> 5) & 1 ? 1 : 0, 2, 4, 8][fcsFlag]!;
      const v = pick(r, [0n, 1n, BigInt(cs - 1), BigInt(cs + 1), 1n << 30n, (1n << 32n) + BigInt(cs), (1n << 64n) - 1n]);
      for (let i = 0; i < width; i++) payload[at + i] = Number((v >> BigInt(8 * i)) & 0xffn);
      notes.push(`zstd frame at 0x${e.host.toString(16)} declares ${v} (${width} bytes)`);
    } else {
      // A bomb as large as the descriptor can hold.
      const room = 2 ** (Math.log2(cs) - 8) * 512;
      let bomb: Uint8Array;
      if (zstd) {
        const total = Math.max(1, Math.floor((room - 14) / 4)) * 128 * 1024;
        const declared = pick(r, [total, undefined, 2 ** 30, 2 ** 32 + cs, cs + 1]);
        bomb = zstdRleFrame(total, { declared });
        notes.push(`zstd bomb of ${total} bytes declaring ${declared ?? "nothing"}`);
      } else {
        bomb = deflateZeros(deflateZerosFitting(room));
        notes.push(`deflate bomb of ${deflateZerosFitting(room)} bytes`);
      }
      img.appendCompressed(e.at, bomb);
    }
};

const TOTAL_WEIGHT = MUTATORS.reduce((n, [w]) => n + w, 0);

/** Only the compressed payload mutation, 1 to 3 times (for `pnpm fuzz --compressed`); undefined without compressed clusters. */
export function mutateCompressed(bytes: Uint8Array, seed: number): Mutation | undefined {
  const r = rng(seed);
  const img = new Image(bytes.slice());
  if (img.compressedEntries().length === 0) return undefined;
  const notes: string[] = [];
  const state = { self: false, selfName: "" };
  for (let k = 1 + Math.floor(r() * 3); k > 0; k--) compressedPayload(r, img, notes, state);
  return { bytes: img.bytes, description: notes, selfReference: false };
}

/** Apply 1 to 3 mutations chosen by `seed` to a copy of `bytes`; `selfName` is the file name it is stored as. */
export function mutate(bytes: Uint8Array, seed: number, selfName: string): Mutation {
  const r = rng(seed);
  const img = new Image(bytes.slice());
  const notes: string[] = [];
  const state = { self: false, selfName };
  if (r() < 0.6) compressedPayload(r, img, notes, state);
  const count = (notes.length > 0 && r() < 0.5 ? 0 : 1) + Math.floor(r() * 3);
  for (let k = 0; k < count; k++) {
    let x = r() * TOTAL_WEIGHT;
    for (const [w, m] of MUTATORS) {
      x -= w;
      if (x < 0) {
        m(r, img, notes, state);
        break;
      }
    }
  }
  return { bytes: img.bytes, description: notes, selfReference: state.self };
}
