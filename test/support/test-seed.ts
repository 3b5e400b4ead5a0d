// The seed of a randomized test. `npm test` (and so CI) runs fixed seeds, the same cases every time,
// so that a run's outcome depends on the code alone; `npm run test:explore` (GALLEON_EXPLORE=1)
// runs the seeded tests with new random seeds to look for cases no fixed seed reaches; a variable
// naming a seed replays one (a failure prints its seed).

/** True when the seeded tests should pick random seeds (GALLEON_EXPLORE=1). */
export const EXPLORE = process.env.GALLEON_EXPLORE === '1'

/**
 * The seed to run: the value of `variable` when it is set (to replay a failure), a random one when
 * exploring, else `fixed`.
 */
export function testSeed (variable: string, fixed: number): number {
  const given = process.env[variable]
  if (given !== undefined && given !== '') {
    const seed = Number(given)
    if (!Number.isSafeInteger(seed)) throw new Error(`${variable} must be an integer seed, got ${given}`)
    return seed
  }
  return EXPLORE ? randomSeed() : fixed
}

/** A random seed (31 bits). */
export function randomSeed (): number {
  return Math.floor(Math.random() * 2 ** 31)
}
