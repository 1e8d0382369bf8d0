import { closeSync, fstatSync, openSync, readSync, writeSync } from "node:fs";

/**
 * A small, independent reader of qcow2 structures for case steps (the role qcow2.py plays in qemu-iotests).
 * It reads the spec's layout directly so the suite never depends on the implementation it judges. It can also
 * patch single fields and table entries to build damaged images.
 */

export class ProbeError extends Error {}

function assertPosition(pos: number): void {
  if (!Number.isSafeInteger(pos) || pos < 0) throw new ProbeError(`bad file position ${pos}`);
}

export function readBytes(path: string, offset: number, length: number): Uint8Array {
  assertPosition(offset);
  const fd = openSync(path, "r");
  try {
    const buf = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return buf.subarray(0, done);
  } finally {
    closeSync(fd);
  }
}

export function writeBytes(path: string, offset: number, bytes: Uint8Array): void {
  assertPosition(offset);
  const fd = openSync(path, "r+");
  try {
    let done = 0;
    while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, offset + done);
  } finally {
    closeSync(fd);
  }
}

export function fileSize(path: string): number {
  const fd = openSync(path, "r");
  try {
    return fstatSync(fd).size;
  } finally {
    closeSync(fd);
  }
}

export function readBigEndian(path: string, offset: number, width: number): bigint {
  const b = readBytes(path, offset, width);
  if (b.length < width) throw new ProbeError(`cannot read ${width} bytes at ${offset}: end of file`);
  let v = 0n;
  for (const x of b) v = (v << 8n) | BigInt(x);
  return v;
}

export function writeBigEndian(path: string, offset: number, width: number, value: bigint): void {
  if (![1, 2, 4, 8].includes(width)) throw new ProbeError(`width must be 1, 2, 4 or 8, not ${width}`);
  if (value < 0n || value >= 1n << BigInt(width * 8)) throw new ProbeError(`value does not fit in ${width} bytes`);
  const b = new Uint8Array(width);
  for (let i = width - 1; i >= 0; i--) {
    b[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  writeBytes(path, offset, b);
}

export interface Qcow2Header {
  magic: number;
  version: number;
  backingFileOffset: bigint;
  backingFileSize: number;
  clusterBits: number;
  size: bigint;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: bigint;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number | undefined;
}

const QCOW2_MAGIC = 0x514649fb;

export function readHeader(path: string): Qcow2Header {
  const b = readBytes(path, 0, 112);
  if (b.length < 72) throw new ProbeError("file too short for a qcow2 header");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u64 = (o: number): bigint => dv.getBigUint64(o);
  const version = dv.getUint32(4);
  const v3 = version >= 3 && b.length >= 104;
  const headerLength = v3 ? dv.getUint32(100) : 72;
  return {
    magic: dv.getUint32(0),
    version,
    backingFileOffset: u64(8),
    backingFileSize: dv.getUint32(16),
    clusterBits: dv.getUint32(20),
    size: u64(24),
    cryptMethod: dv.getUint32(32),
    l1Size: dv.getUint32(36),
    l1TableOffset: u64(40),
    refcountTableOffset: u64(48),
    refcountTableClusters: dv.getUint32(56),
    nbSnapshots: dv.getUint32(60),
    snapshotsOffset: u64(64),
    incompatibleFeatures: v3 ? u64(72) : 0n,
    compatibleFeatures: v3 ? u64(80) : 0n,
    autoclearFeatures: v3 ? u64(88) : 0n,
    refcountOrder: v3 ? dv.getUint32(96) : 4,
    headerLength,
    compressionType: v3 && headerLength > 104 && b.length > 104 ? b[104] : undefined,
  };
}

const bitList = (v: bigint): string => {
  const bits: number[] = [];
  for (let i = 0; i < 64; i++) if ((v >> BigInt(i)) & 1n) bits.push(i);
  return `[${bits.join(", ")}]`;
};
const hex = (v: bigint | number): string => `0x${v.toString(16)}`;
const row = (name: string, value: string): string => `${name.padEnd(26)}${value}`;

const EXTENSION_NAMES: Record<number, string> = {
  0xe2792aca: "backing format",
  0x6803f857: "feature table",
  0x23852875: "bitmaps",
  0x0537be77: "full disk encryption header pointer",
  0x44415441: "data file name",
};
const FEATURE_TYPES = ["incompatible", "compatible", "autoclear"];

const latin1 = (b: Uint8Array): string => String.fromCharCode(...b);

function describeExtension(type: number, data: Uint8Array): string[] {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if ((type === 0xe2792aca || type === 0x44415441) && data.length > 0) return [row("data", `'${latin1(data)}'`)];
  if (type === 0x6803f857) {
    const out: string[] = [];
    for (let o = 0; o + 48 <= data.length; o += 48) {
      const name = latin1(data.subarray(o + 2, o + 48)).replace(/\0+$/, "");
      const featureType = dv.getUint8(o);
      out.push(`  ${FEATURE_TYPES[featureType] ?? `type ${featureType}`} bit ${dv.getUint8(o + 1)}: ${name}`);
    }
    return out;
  }
  if (type === 0x0537be77 && data.length === 16) {
    return [row("offset", hex(dv.getBigUint64(0))), row("length", hex(dv.getBigUint64(8)))];
  }
  if (type === 0x23852875 && data.length === 24) {
    return [
      row("nb_bitmaps", String(dv.getUint32(0))),
      row("reserved", String(dv.getUint32(4))),
      row("bitmap_directory_size", hex(dv.getBigUint64(8))),
      row("bitmap_directory_offset", hex(dv.getBigUint64(16))),
    ];
  }
  const shown = [...data.subarray(0, 32)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
  return [row("data", shown + (data.length > 32 ? " ..." : ""))];
}

/** A readable dump of the header, its extensions and the backing file name. */
export function dumpHeader(path: string): string {
  const h = readHeader(path);
  const lines = [
    row("magic", hex(h.magic) + (h.magic === QCOW2_MAGIC ? "" : " (not qcow2)")),
    row("version", String(h.version)),
    row("backing_file_offset", hex(h.backingFileOffset)),
    row("backing_file_size", String(h.backingFileSize)),
    row("cluster_bits", String(h.clusterBits)),
    row("size", String(h.size)),
    row("crypt_method", String(h.cryptMethod)),
    row("l1_size", String(h.l1Size)),
    row("l1_table_offset", hex(h.l1TableOffset)),
    row("refcount_table_offset", hex(h.refcountTableOffset)),
    row("refcount_table_clusters", String(h.refcountTableClusters)),
    row("nb_snapshots", String(h.nbSnapshots)),
    row("snapshot_offset", hex(h.snapshotsOffset)),
  ];
  if (h.version >= 3) {
    lines.push(
      row("incompatible_features", bitList(h.incompatibleFeatures)),
      row("compatible_features", bitList(h.compatibleFeatures)),
      row("autoclear_features", bitList(h.autoclearFeatures)),
      row("refcount_order", String(h.refcountOrder)),
      row("header_length", String(h.headerLength)),
    );
    if (h.compressionType !== undefined) lines.push(row("compression_type", String(h.compressionType)));
  }
  const clusterSize = h.clusterBits >= 9 && h.clusterBits <= 21 ? 1 << h.clusterBits : 65536;
  const areaEnd =
    h.backingFileOffset > 0n && h.backingFileOffset < BigInt(clusterSize) ? Number(h.backingFileOffset) : clusterSize;
  const area = readBytes(path, 0, areaEnd);
  const dv = new DataView(area.buffer, area.byteOffset, area.byteLength);
  let o = h.headerLength;
  while (o + 8 <= area.length) {
    const type = dv.getUint32(o);
    const length = dv.getUint32(o + 4);
    if (type === 0) break;
    lines.push("", row("Header extension:", EXTENSION_NAMES[type] ?? "unknown"));
    lines.push(row("magic", `0x${type.toString(16).padStart(8, "0")}`), row("length", String(length)));
    if (o + 8 + length > area.length) {
      lines.push("  (runs past the end of the header area)");
      break;
    }
    lines.push(...describeExtension(type, area.subarray(o + 8, o + 8 + length)));
    o += 8 + Math.ceil(length / 8) * 8;
  }
  if (h.backingFileOffset > 0n && h.backingFileSize > 0) {
    const name = readBytes(path, Number(h.backingFileOffset), Math.min(h.backingFileSize, 4096));
    lines.push("", row("backing file name", `'${latin1(name)}'`));
  }
  return `${lines.join("\n")}\n`;
}

interface Geometry {
  header: Qcow2Header;
  clusterSize: number;
  l2EntryBytes: number;
  l2Entries: number;
}

function geometry(path: string): Geometry {
  const header = readHeader(path);
  if (header.magic !== QCOW2_MAGIC) throw new ProbeError("not a qcow2 image");
  if (header.clusterBits < 9 || header.clusterBits > 21) throw new ProbeError("unsupported cluster size");
  const clusterSize = 1 << header.clusterBits;
  const l2EntryBytes = header.incompatibleFeatures & 16n ? 16 : 8;
  return { header, clusterSize, l2EntryBytes, l2Entries: clusterSize / l2EntryBytes };
}

const OFFSET_MASK = 0x00fffffffffffe00n;

function l1EntryPosition(g: Geometry, index: number): number {
  if (!Number.isSafeInteger(index) || index < 0 || index >= g.header.l1Size) {
    throw new ProbeError(`L1 index ${index} is outside the L1 table (l1_size ${g.header.l1Size})`);
  }
  return Number(g.header.l1TableOffset) + index * 8;
}

export function getL1Entry(path: string, index: number): bigint {
  return readBigEndian(path, l1EntryPosition(geometry(path), index), 8);
}

export function setL1Entry(path: string, index: number, value: bigint): void {
  writeBigEndian(path, l1EntryPosition(geometry(path), index), 8, value);
}

/** File position of the L2 entry for a guest offset; throws if its L2 table is not allocated. */
function l2EntryPosition(path: string, guestOffset: number): { position: number; extended: boolean } {
  const g = geometry(path);
  const cluster = Math.floor(guestOffset / g.clusterSize);
  const l1Index = Math.floor(cluster / g.l2Entries);
  const l2Offset = readBigEndian(path, l1EntryPosition(g, l1Index), 8) & OFFSET_MASK;
  if (l2Offset === 0n) throw new ProbeError(`no L2 table for guest offset ${hex(guestOffset)}`);
  return { position: Number(l2Offset) + (cluster % g.l2Entries) * g.l2EntryBytes, extended: g.l2EntryBytes === 16 };
}

export function getL2Entry(path: string, guestOffset: number): { entry: bigint; bitmap?: bigint } {
  const { position, extended } = l2EntryPosition(path, guestOffset);
  const entry = readBigEndian(path, position, 8);
  return extended ? { entry, bitmap: readBigEndian(path, position + 8, 8) } : { entry };
}

export function setL2Entry(path: string, guestOffset: number, entry: bigint, bitmap?: bigint): void {
  const { position, extended } = l2EntryPosition(path, guestOffset);
  writeBigEndian(path, position, 8, entry);
  if (bitmap !== undefined) {
    if (!extended) throw new ProbeError("the image has no extended L2 entries");
    writeBigEndian(path, position + 8, 8, bitmap);
  }
}

/** The cluster type a standard L2 entry describes, as the spec defines it. */
export function classifyL2Entry(entry: bigint, incompatibleFeatures: bigint): string {
  const copied = entry >> 63n === 1n ? ", COPIED" : "";
  if ((entry >> 62n) & 1n) return "compressed";
  const offset = entry & OFFSET_MASK;
  const dataFile = (incompatibleFeatures & 4n) !== 0n;
  if (entry & 1n) return offset ? `zero, allocated at ${hex(offset)}${copied}` : `zero${copied}`;
  if (offset === 0n && !(dataFile && copied)) return "unallocated";
  return `normal at ${hex(offset)}${copied}`;
}

/** Where the refcount of the host cluster at hostOffset lives: byte position and bit shift inside it. */
function refcountPosition(path: string, hostOffset: number): { position: number; bits: number } {
  const g = geometry(path);
  const bits = 1 << g.header.refcountOrder;
  if (bits > 64) throw new ProbeError("refcount_order too large");
  const cluster = Math.floor(hostOffset / g.clusterSize);
  const perBlock = (g.clusterSize * 8) / bits;
  const tableIndex = Math.floor(cluster / perBlock);
  if (tableIndex >= (g.header.refcountTableClusters * g.clusterSize) / 8) {
    throw new ProbeError(`host offset ${hex(hostOffset)} is beyond the refcount table`);
  }
  const block = readBigEndian(path, Number(g.header.refcountTableOffset) + tableIndex * 8, 8) & ~0x1ffn;
  if (block === 0n) throw new ProbeError(`no refcount block for host offset ${hex(hostOffset)}`);
  const bitIndex = (cluster % perBlock) * bits;
  return { position: Number(block) + Math.floor(bitIndex / 8), bits };
}

export function getRefcount(path: string, hostOffset: number): bigint {
  const { position, bits } = refcountPosition(path, hostOffset);
  if (bits >= 8) return readBigEndian(path, position, bits / 8);
  const cluster = Math.floor(hostOffset / (1 << readHeader(path).clusterBits));
  const shift = (cluster * bits) % 8;
  return (readBigEndian(path, position, 1) >> BigInt(shift)) & ((1n << BigInt(bits)) - 1n);
}

export function setRefcount(path: string, hostOffset: number, value: bigint): void {
  const { position, bits } = refcountPosition(path, hostOffset);
  if (value < 0n || value >= 1n << BigInt(bits)) throw new ProbeError(`refcount ${value} does not fit in ${bits} bits`);
  if (bits >= 8) return writeBigEndian(path, position, bits / 8, value);
  const cluster = Math.floor(hostOffset / (1 << readHeader(path).clusterBits));
  const shift = BigInt((cluster * bits) % 8);
  const mask = ((1n << BigInt(bits)) - 1n) << shift;
  const old = readBigEndian(path, position, 1);
  writeBigEndian(path, position, 1, (old & ~mask) | (value << shift));
}
