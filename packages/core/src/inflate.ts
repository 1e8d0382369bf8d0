/**
 * A bounded raw-deflate decoder (RFC 1951) for compressed qcow2 clusters. It writes into a buffer of exactly
 * one cluster and stops when that buffer is full, so a stream that would inflate far past the cluster (a
 * "deflate bomb") costs no more than one cluster of output and allocates nothing beyond its small tables.
 *
 * The verdict is QEMU's (one zlib `inflate(Z_FINISH)` call into the cluster buffer): the cluster is good when
 * the buffer gets filled, whatever follows; it is bad when the stream ends, runs out of input or is corrupt
 * before that. Like zlib, after the last byte is written the decoder still reads ahead to the next literal or
 * match (decoding block headers and tables on the way), so corruption met there fails the cluster too, while
 * running out of input there does not.
 */

/** Result of `inflateRawInto`: the buffer was filled, the stream ended early, or the data is corrupt. */
export type InflateResult = "full" | "short" | "corrupt";

const LENGTH_BASE = new Uint16Array([
  3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258,
]);
const LENGTH_EXTRA = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]);
const DIST_BASE = new Uint16Array([
  1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
  8193, 12289, 16385, 24577,
]);
const DIST_EXTRA = new Uint8Array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]);
/** Order in which the code length code's lengths are stored. */
const CLEN_ORDER = new Uint8Array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]);

/**
 * A decoding table indexed by the next `bits` input bits (least significant first). Entry: symbol << 5 |
 * invalid << 4 | code length. Bit patterns that are no code, and symbols the format does not allow, are
 * entries with the invalid flag (zlib's "invalid code").
 */
interface Table {
  entries: Uint16Array;
  bits: number;
  mask: number;
}

const INVALID = 16;
const TABLE_BAD = -1;

/**
 * Build the table for canonical code lengths `lens`. `kind` follows zlib's rules: an over-subscribed set is
 * refused; an incomplete set only when it is the code length code or has codes longer than 1 bit; symbols at
 * or above `valid` decode as invalid. With no codes at all, the code length code reads one bit as symbol 0
 * (zlib's behaviour) and the other codes decode nothing valid.
 */
function buildTable(lens: Uint8Array, kind: "codes" | "lens" | "dists", valid: number): Table | typeof TABLE_BAD {
  const count = new Uint16Array(16);
  for (let i = 0; i < lens.length; i++) count[lens[i]!]!++;
  let max = 15;
  while (max >= 1 && count[max] === 0) max--;
  if (max === 0) return { entries: new Uint16Array(2).fill(kind === "codes" ? 1 : INVALID | 1), bits: 1, mask: 1 };
  let left = 1;
  for (let len = 1; len <= 15; len++) {
    left = left * 2 - count[len]!;
    if (left < 0) return TABLE_BAD;
  }
  if (left > 0 && (kind === "codes" || max !== 1)) return TABLE_BAD;
  // First canonical code of each length.
  const next = new Uint16Array(16);
  for (let len = 2, code = 0; len <= 15; len++) {
    code = (code + count[len - 1]!) << 1;
    next[len] = code;
  }
  const size = 1 << max;
  const entries = new Uint16Array(size).fill(INVALID | 1);
  for (let sym = 0; sym < lens.length; sym++) {
    const len = lens[sym]!;
    if (len === 0) continue;
    const code = next[len]!++;
    let rev = 0;
    for (let i = 0, c = code; i < len; i++, c >>>= 1) rev = (rev << 1) | (c & 1);
    const entry = (sym << 5) | (sym >= valid ? INVALID : 0) | len;
    for (let i = rev; i < size; i += 1 << len) entries[i] = entry;
  }
  return { entries, bits: max, mask: size - 1 };
}

let fixed: [Table, Table] | undefined;
/** The fixed codes; literal/length symbols 286-287 and distance symbols 30-31 exist but are invalid. */
function fixedTables(): [Table, Table] {
  if (!fixed) {
    const l = new Uint8Array(288);
    l.fill(8, 0, 144).fill(9, 144, 256).fill(7, 256, 280).fill(8, 280, 288);
    fixed = [buildTable(l, "lens", 286) as Table, buildTable(new Uint8Array(32).fill(5), "dists", 30) as Table];
  }
  return fixed;
}

/** Thrown inside the decoder when input runs out; caught by `inflateRawInto`. */
const OUT_OF_INPUT = Symbol("out of input");
/** Thrown inside the decoder on corrupt data. */
const CORRUPT = Symbol("corrupt");

/** The input and its bit buffer (least significant bit first); header reads throw at the end of the input. */
class BitReader {
  ip = 0;
  /** Bits not consumed yet, in the low `have` bits. */
  hold = 0;
  have = 0;
  /** Why `inflateCodes` stopped before the end of its block. */
  stop: "full" | "corrupt" | "input" | undefined;
  constructor(readonly src: Uint8Array) {}

  take(n: number): number {
    while (this.have < n) {
      if (this.ip >= this.src.length) throw OUT_OF_INPUT;
      this.hold |= this.src[this.ip++]! << this.have;
      this.have += 8;
    }
    const v = this.hold & ((1 << n) - 1);
    this.hold >>>= n;
    this.have -= n;
    return v;
  }

  /** A code is taken once its length is within the loaded bits; bits above those read as zero meanwhile. */
  decode(t: Table): number {
    for (;;) {
      const entry = t.entries[this.hold & t.mask]!;
      const len = entry & 15;
      if (len <= this.have) {
        this.hold >>>= len;
        this.have -= len;
        if (entry & INVALID) throw CORRUPT;
        return entry >> 5;
      }
      if (this.ip >= this.src.length) throw OUT_OF_INPUT;
      this.hold |= this.src[this.ip++]! << this.have;
      this.have += 8;
    }
  }
}

/**
 * Decode the literal/length and distance codes of one block into `out` from `op` (the hot loop, on local
 * copies of the bit buffer). Returns the new output position; `r.stop` says why it stopped when that was not
 * the end of the block.
 */
function inflateCodes(r: BitReader, lit: Table, dist: Table, out: Uint8Array, op: number): number {
  const src = r.src;
  const srcEnd = src.length;
  const end = out.length;
  const le = lit.entries;
  const lm = lit.mask;
  const de = dist.entries;
  const dm = dist.mask;
  let ip = r.ip;
  let hold = r.hold;
  let have = r.have;
  let stop: BitReader["stop"];
  // One code per turn: a literal/length code, or (after a length) the distance code that completes the match.
  let length = 0;
  for (;;) {
    // Up to 32 bits: a code (15 bits at most) and its extra bits (13 at most) fit.
    while (have <= 24 && ip < srcEnd) {
      hold |= src[ip++]! << have;
      have += 8;
    }
    const entry = length === 0 ? le[hold & lm]! : de[hold & dm]!;
    const len = entry & 15;
    if (len > have) {
      stop = "input";
      break;
    }
    hold >>>= len;
    have -= len;
    if (entry & INVALID) {
      stop = "corrupt";
      break;
    }
    const sym = entry >> 5;
    if (length === 0 && sym < 256) {
      if (op === end) {
        stop = "full";
        break;
      }
      out[op++] = sym;
      continue;
    }
    if (length === 0 && sym === 256) break;
    const extra = length === 0 ? LENGTH_EXTRA[sym - 257]! : DIST_EXTRA[sym]!;
    if (extra > have) {
      stop = "input";
      break;
    }
    const value = (length === 0 ? LENGTH_BASE[sym - 257]! : DIST_BASE[sym]!) + (hold & ((1 << extra) - 1));
    hold >>>= extra;
    have -= extra;
    if (length === 0) {
      length = value;
      continue;
    }
    const distance = value;
    if (op === end) {
      stop = "full";
      break;
    }
    if (distance > op) {
      stop = "corrupt";
      break;
    }
    const last = Math.min(end, op + length);
    for (let from = op - distance; op < last; ) out[op++] = out[from++]!;
    length = 0;
  }
  r.ip = ip;
  r.hold = hold;
  r.have = have;
  r.stop = stop;
  return op;
}

/**
 * Inflate the raw deflate stream in `src` into `out`, stopping when `out` is full. Never writes past `out`,
 * never allocates more than its decoding tables.
 */
export function inflateRawInto(src: Uint8Array, out: Uint8Array): InflateResult {
  const end = out.length;
  const r = new BitReader(src);
  let op = 0;
  try {
    for (;;) {
      const final = r.take(1);
      const type = r.take(2);
      if (type === 0) {
        // Stored block: skip to a byte boundary, LEN and its complement.
        r.take(r.have & 7);
        const len = r.take(16);
        const nlen = r.take(16);
        if ((len ^ 0xffff) !== nlen) return "corrupt";
        if (len > 0) {
          if (op === end) return "full";
          // The bit buffer holds whole bytes now: give them back to the input and copy bytes.
          r.ip -= r.have >>> 3;
          r.hold = 0;
          r.have = 0;
          const n = Math.min(len, end - op, src.length - r.ip);
          out.set(src.subarray(r.ip, r.ip + n), op);
          op += n;
          r.ip += n;
          if (n < len) return op === end ? "full" : "short";
        }
      } else if (type === 3) {
        return "corrupt";
      } else {
        let lit: Table;
        let dist: Table;
        if (type === 1) {
          [lit, dist] = fixedTables();
        } else {
          const nlen = r.take(5) + 257;
          const ndist = r.take(5) + 1;
          const ncode = r.take(4) + 4;
          if (nlen > 286 || ndist > 30) return "corrupt";
          const clens = new Uint8Array(19);
          for (let i = 0; i < ncode; i++) clens[CLEN_ORDER[i]!] = r.take(3);
          const ct = buildTable(clens, "codes", 19);
          if (ct === TABLE_BAD) return "corrupt";
          const lens = new Uint8Array(nlen + ndist);
          for (let i = 0; i < nlen + ndist; ) {
            const sym = r.decode(ct);
            if (sym < 16) {
              lens[i++] = sym;
              continue;
            }
            let value = 0;
            let repeat: number;
            if (sym === 16) {
              if (i === 0) return "corrupt";
              value = lens[i - 1]!;
              repeat = 3 + r.take(2);
            } else if (sym === 17) {
              repeat = 3 + r.take(3);
            } else {
              repeat = 11 + r.take(7);
            }
            if (i + repeat > nlen + ndist) return "corrupt";
            lens.fill(value, i, i + repeat);
            i += repeat;
          }
          if (lens[256] === 0) return "corrupt";
          const lt = buildTable(lens.subarray(0, nlen), "lens", 286);
          if (lt === TABLE_BAD) return "corrupt";
          const dt = buildTable(lens.subarray(nlen), "dists", 30);
          if (dt === TABLE_BAD) return "corrupt";
          lit = lt;
          dist = dt;
        }
        op = inflateCodes(r, lit, dist, out, op);
        if (r.stop === "full" || r.stop === "corrupt") return r.stop;
        if (r.stop === "input") return op === end ? "full" : "short";
      }
      if (final) return op === end ? "full" : "short";
    }
  } catch (e) {
    if (e === OUT_OF_INPUT) return op === end ? "full" : "short";
    if (e === CORRUPT) return "corrupt";
    throw e;
  }
}
