/** Numbers in case steps: decimal or 0x-hex, with an optional k/M/G/T (binary) suffix on decimals. */

export class NumberSyntaxError extends Error {}

const SUFFIX: Record<string, bigint> = { k: 1n << 10n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n };

export function parseBigNumber(text: string): bigint {
  const hexMatch = /^0x([0-9a-fA-F]+)$/.exec(text);
  if (hexMatch) return BigInt(`0x${hexMatch[1]}`);
  const dec = /^(\d+)([kKMGT]?)$/.exec(text);
  if (!dec) throw new NumberSyntaxError(`not a number: "${text}"`);
  const [, digits = "", suffix = ""] = dec;
  return BigInt(digits) * (SUFFIX[suffix] ?? 1n);
}

/** A number that must be a safe integer (offsets and lengths). */
export function parseNumber(text: string): number {
  const v = parseBigNumber(text);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NumberSyntaxError(`number too large: "${text}"`);
  return Number(v);
}
