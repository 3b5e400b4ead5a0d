// Settling a compare-and-swap write to the coordinator whose call failed in a way that may only
// mean its answer was lost: the write may have been applied, or may still be (it is in flight).

import type { Coordinator, CoordinatorEntry } from '../drivers.js'

/** How often the key is read again (and fenced) before the outcome is given up as unknown. */
const MAX_LOOKS = 3

/** What a compare-and-swap put whose answer was lost came to; either way it can no longer apply. */
export type SettledPut =
  /** The key holds the value written (by the lost write, or alike by its fence or another client). */
  | { readonly written: true, readonly entry: CoordinatorEntry }
  /** The write did not apply: the key as it is now (undefined: absent). */
  | { readonly written: false, readonly entry: CoordinatorEntry | undefined }

/**
 * After `coordinator.put(key, value, { expectRevision })` failed with `err`: reads the key, and
 * while it is still at `expectRevision` (where the lost write, if in flight, could still apply
 * after this read) fences it with a compare-and-swap of its own at that revision, which rewrites
 * the value read (a no-op). Once the key's revision has moved, the lost write can never apply,
 * so what the key holds says whether it did. A key that had to be absent and still is can only be
 * fenced by creating it: the fence then writes `value` itself (the write, made now).
 * Throws `err` when the key cannot be read, or the fence's own answers keep being lost: the write
 * may still apply later, and the caller must not act as if it had not.
 */
export async function settleLostPut (coordinator: Coordinator, key: string, value: string, expectRevision: number, err: unknown): Promise<SettledPut> {
  for (let look = 1; look <= MAX_LOOKS; look++) {
    let entry: CoordinatorEntry | undefined
    try {
      entry = await coordinator.get(key)
    } catch {
      throw err
    }
    if ((entry?.revision ?? 0) !== expectRevision) {
      return entry !== undefined && entry.value === value ? { written: true, entry } : { written: false, entry }
    }
    const fence = entry?.value ?? value
    try {
      const fenced = await coordinator.put(key, fence, { expectRevision })
      if (fenced !== undefined) return fence === value ? { written: true, entry: fenced } : { written: false, entry: fenced }
      // Changed between the read and the fence (the lost write among the candidates): read again.
    } catch {
      // The fence's answer was lost too: it expected the same revision, so reading again tells.
    }
  }
  throw err
}
