/** A small seeded PRNG (mulberry32) so random round trips are reproducible. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random integer in [0, bound) for bound up to 2^53. */
export function randomBelow(rand: () => number, bound: number): number {
  if (bound <= 2 ** 32) return Math.floor(rand() * bound);
  const hi = Math.floor(rand() * Math.ceil(bound / 2 ** 32));
  const v = hi * 2 ** 32 + Math.floor(rand() * 2 ** 32);
  return v % bound;
}
