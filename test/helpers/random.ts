import { randomInt } from "node:crypto";

// A seeded random source for tests that pick random moments: the seed is
// printed, and passing it back (VMROUTED_SEED) replays the same choices.

export function randomSource(seedText?: string): { seed: number; next: () => number } {
  const seed = seedText ? Number(seedText) : randomInt(1, 2 ** 31);
  if (!Number.isInteger(seed)) throw new Error(`VMROUTED_SEED must be an integer, not '${seedText}'`);
  let a = seed >>> 0;
  // mulberry32
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { seed, next };
}
