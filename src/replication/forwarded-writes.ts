// Forwarded writes, each once: a write (or trim) a node forwards to a replicated volume's primary
// carries an identity (WriterId), the same in every attempt of it. The primary records it with the
// change, and the stream carries it to every copy, so the primary that gets a repeat (the answer to
// an earlier attempt was lost), the same one or the next after a failover, knows whether it holds
// the write already. Written again, it would overwrite a later write to its blocks that had
// resolved meanwhile: an acknowledged write lost, and the first one taking effect twice.

import { randomUUID } from 'node:crypto'
import { GalleonError, describe } from '../errors.js'
import type { WriterId } from '../engine/replicator.js'

export type { WriterId }

/** Writers (node starts) whose writes a copy's ledger keeps, the most recently heard from. */
const ORIGINS_KEPT = 256

/** The writes this node forwards: numbers them, and knows the lowest one not answered yet. */
export class OutgoingWrites {
  /** This node's writer: its id and a part new at each start, so numbers never repeat under one. */
  readonly origin: string
  #next = 1
  /** Numbers of the writes under way (in order: each new number is the highest). */
  readonly #open = new Set<number>()

  constructor (nodeId: string) {
    this.origin = `${nodeId}/${randomUUID().slice(0, 8)}`
  }

  /**
   * A new write's identity, for every attempt of it; end() once its caller has its answer (or was
   * given up on). Its `low` is the lowest number under way now: it only rises, so an older one
   * sent later says less, never something false.
   */
  begin (): WriterId {
    const n = this.#next++
    this.#open.add(n)
    return { origin: this.origin, n, low: this.#open.values().next().value as number }
  }

  end (writer: WriterId): void {
    this.#open.delete(writer.n)
  }
}

/** The writer identity a forwarded request carries, checked (undefined: a node of an earlier version sent none). */
export function writerOf (value: unknown): WriterId | undefined {
  if (value === undefined) return undefined
  const w = value as Partial<WriterId> | null
  if (w === null || typeof w !== 'object' || typeof w.origin !== 'string' || w.origin === '' || !Number.isSafeInteger(w.n) || !Number.isSafeInteger(w.low) || (w.n as number) < 1 || (w.low as number) < 1) {
    throw new GalleonError('INVALID_ARGUMENT', `a forwarded write's writer must be { origin, n, low } with a non-empty origin and positive integers, got ${describe(value)}`)
  }
  return { origin: w.origin, n: w.n as number, low: w.low as number }
}

/** A ledger's writes of one writer as a resync sends them (see WriteLedger.entries). */
export interface LedgerEntry {
  readonly origin: string
  readonly low: number
  readonly held: readonly number[]
}

/**
 * The forwarded writes one copy of a volume holds (recorded as its primary, or applied from the
 * stream), by writer: the numbers at or above the lowest that writer still has under way. Below
 * it, the writer has every answer (or gave up), so it sends none of them again.
 */
export class WriteLedger {
  readonly #origins = new Map<string, { low: number, held: Set<number>, pruneAt: number }>()

  /** The change of `writer`'s write is in this copy's history (recorded or applied, in order). */
  note (writer: WriterId): void {
    const entry = this.#entry(writer)
    if (writer.n >= entry.low) entry.held.add(writer.n)
  }

  /** This copy holds the write (a repeat of it must not write again). */
  holds (writer: WriterId): boolean {
    return this.#entry(writer).held.has(writer.n)
  }

  /**
   * The write's node had given up on it before this attempt came (a later one said so): its caller
   * was told it failed, so it must not take effect now.
   */
  stale (writer: WriterId): boolean {
    return writer.n < this.#entry(writer).low
  }

  /**
   * What this ledger holds, for a resync to hand to the copy it rebuilds (see replace): the copy
   * gets the changes up to the cut as blocks, which carry no identities.
   */
  entries (): LedgerEntry[] {
    return [...this.#origins].map(([origin, entry]) => ({ origin, low: entry.low, held: [...entry.held].filter((n) => n >= entry.low) }))
  }

  /**
   * Holds exactly `entries` (a primary's at a resync's cut), checked: a copy rebuilt by a resync
   * holds the primary's history up to the cut, and no longer any write of its own that the resync
   * undid (a repeat of one must be written). Malformed entries (a peer's bug) are left out.
   */
  replace (entries: unknown): void {
    this.#origins.clear()
    if (!Array.isArray(entries)) return
    for (const item of entries.slice(-ORIGINS_KEPT)) {
      const e = item as Partial<LedgerEntry> | null
      if (e === null || typeof e !== 'object' || typeof e.origin !== 'string' || e.origin === '' || !Number.isSafeInteger(e.low) || (e.low as number) < 0 || !Array.isArray(e.held)) continue
      const low = e.low as number
      const held = new Set(e.held.filter((n): n is number => Number.isSafeInteger(n) && n >= Math.max(1, low)))
      this.#origins.delete(e.origin)
      this.#origins.set(e.origin, { low, held, pruneAt: Math.max(64, held.size * 2) })
    }
  }

  /** Follows `writer`'s lowest write under way, and forgets the writes below it. */
  #entry (writer: WriterId): { low: number, held: Set<number>, pruneAt: number } {
    let entry = this.#origins.get(writer.origin)
    if (entry === undefined) {
      entry = { low: 0, held: new Set(), pruneAt: 64 }
      if (this.#origins.size >= ORIGINS_KEPT) this.#origins.delete(this.#origins.keys().next().value as string)
    } else {
      // Most recently heard from last: the writer left out first is the longest silent (a node long restarted).
      this.#origins.delete(writer.origin)
    }
    this.#origins.set(writer.origin, entry)
    if (writer.low > entry.low) {
      entry.low = writer.low
      // Forgotten in passes, not one by one: a pass once the set doubled since the last one.
      if (entry.held.size >= entry.pruneAt) {
        for (const n of entry.held) if (n < entry.low) entry.held.delete(n)
        entry.pruneAt = Math.max(64, entry.held.size * 2)
      }
    }
    return entry
  }
}
