// Helpers of the forwarded-call tests (h72, h90, review r81): blocks that say who wrote them, and a
// memory-network filter that loses a primary's answer to a forwarded call.

import type { MemoryNetwork, MemoryMessageInfo } from '../../backends/memory/index.js'
import { BS } from './disk-cluster.js'

/** A block whose bytes say which writer wrote it, with which of its writes. */
export function stamped (writer: string, seq: number): Uint8Array {
  const out = new Uint8Array(BS)
  out.set(new TextEncoder().encode(`${writer}#${seq};`.repeat(BS / 8).slice(0, BS)))
  return out
}

/** Whose write a block read back holds ("n2#1"), or "zeros". */
export function stampOf (bytes: Uint8Array): string {
  if (bytes.every((b) => b === 0)) return 'zeros'
  return new TextDecoder().decode(bytes.subarray(0, 16)).split(';')[0] as string
}

/** What loseAnswer did so far, and the switch that lets the caller's repeats through. */
export interface LostAnswer {
  lost: () => number
  repeats: () => number
  release: () => void
  /** The same decision as a filter, for a test that adds its own drops (see loseAnswer's `install`). */
  drops: (m: MemoryMessageInfo) => boolean
}

/**
 * The first answer a primary sends `caller` to a forwarded call is lost (as a connection reset:
 * the caller sees BACKEND_UNAVAILABLE at once); with `hold`, the caller's forwarded calls after it
 * (its repeats) are lost on the way too until `release()`. `install: false` leaves the filter to the
 * test (it calls `drops` from its own network.drop).
 */
export function loseAnswer (network: MemoryNetwork, caller: string, hold = false, install = true): LostAnswer {
  let lost = 0
  let repeats = 0
  let holding = hold
  const drops = (m: MemoryMessageInfo): boolean => {
    if (m.kind !== 'repl:io') return false
    if (m.type === 'reply' && m.to === caller && lost === 0) { lost++; return true }
    if (m.type === 'request' && m.from === caller && lost > 0) { repeats++; return holding }
    return false
  }
  if (install) network.drop(drops)
  return { lost: () => lost, repeats: () => repeats, release: () => { holding = false }, drops }
}
