// The claim of a node id in the coordinator, taken with compare-and-swap so that two running
// instances never both take part in the cluster as the same node, and given back on a clean stop.

import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Coordinator } from '../drivers.js'
import { GalleonError } from '../errors.js'

/** Coordinator keys claiming node ids (value: the claiming instance). */
const CLAIM_PREFIX = 'node-claims/'

/** A claim's value: the claiming instance and when it claimed (ms). Anything unreadable is an old claim. */
function parseClaim (value: string): { instance: string, at: number } {
  try {
    const parsed = JSON.parse(value) as { instance?: unknown, at?: unknown }
    if (typeof parsed.instance === 'string' && typeof parsed.at === 'number') return { instance: parsed.instance, at: parsed.at }
  } catch {}
  return { instance: '', at: 0 }
}

/** One instance's claim of its node id (ClusterManager holds one). */
export class NodeIdClaim {
  readonly #coordinator: Coordinator
  readonly #nodeId: string
  /** The node's lease (ClusterOptions.leaseTtlMs): how long a claim of a node that just died stands. */
  readonly #ttlMs: number
  /** Tells this instance's claim of the node id from another's. */
  readonly #instance = randomUUID()

  constructor (coordinator: Coordinator, nodeId: string, ttlMs: number) {
    this.#coordinator = coordinator
    this.#nodeId = nodeId
    this.#ttlMs = ttlMs
  }

  /**
   * Claims the node id in the coordinator with compare-and-swap, so that two instances can never
   * both hold it: a claim by another instance stands while that node is healthy (waiting up to a
   * lease for a node that just died, as after a crash and a quick restart); otherwise it is taken over.
   */
  async take (): Promise<void> {
    const coordinator = this.#coordinator
    const key = `${CLAIM_PREFIX}${this.#nodeId}`
    // Waits on the monotonic clock; the claim's own time is another process's (maybe another
    // machine's) wall clock, trusted only while it is not in the future.
    const deadline = performance.now() + this.#ttlMs * 2
    const mine = (): string => JSON.stringify({ instance: this.#instance, at: Date.now() })
    /** The claim this call waits on (its revision) and when it first read it (performance.now()). */
    let watched: { revision: number, since: number } | undefined
    for (;;) {
      const current = await coordinator.get(key)
      if (current === undefined) {
        if (await coordinator.put(key, mine(), { expectRevision: 0 }) !== undefined) return
        continue
      }
      const claim = parseClaim(current.value)
      if (claim.instance === this.#instance) return
      const holder = (await coordinator.members()).find((m) => m.id === this.#nodeId)
      // Another instance's claim stands while its node is healthy, and for a lease after it was
      // made (that instance may be joining right now); after that, it is taken over.
      if (watched?.revision !== current.revision) watched = { revision: current.revision, since: performance.now() }
      // A claim dated in the future (a wall clock stepped back here, or set ahead there) is judged
      // by how long this call has seen it unchanged, not taken as fresh for the length of the step.
      const age = Date.now() - claim.at
      const fresh = performance.now() - watched.since < this.#ttlMs * 1.5 && (age < 0 || age < this.#ttlMs * 1.5)
      if (holder?.healthy !== true && !fresh) {
        if (await coordinator.put(key, mine(), { expectRevision: current.revision }) !== undefined) return
        continue
      }
      if (performance.now() >= deadline) {
        throw new GalleonError('BUSY', `node id ${this.#nodeId} is in use by another running instance${holder === undefined ? ' (joining now)' : ` (at ${holder.address})`}; give this node another id, or stop that one first`)
      }
      await sleep(Math.min(500, this.#ttlMs / 4))
    }
  }

  /** Gives the node id back if this instance still holds it (a restart need not wait for the lease to end). */
  async release (): Promise<void> {
    const key = `${CLAIM_PREFIX}${this.#nodeId}`
    const current = await this.#coordinator.get(key)
    if (current !== undefined && parseClaim(current.value).instance === this.#instance) await this.#coordinator.delete(key, { expectRevision: current.revision })
  }
}
