// The write journal: orders every mutation with a log sequence number (LSN) and group-commits them
// into the block store, whose log is the physical write-ahead journal (segment log for `file`,
// LevelDB's log for `level`). Concurrent durable writes share one sync.

import type { BlockOp, BlockStore } from '../drivers.js'
import type { WriteConcern } from '../types.js'

/** One appended group of operations, as replication will receive it. */
export interface JournalEntry {
  /** LSN of this entry (monotonic per instance). */
  readonly lsn: number
  readonly ops: readonly BlockOp[]
  /** True when the caller asked for durability. */
  readonly durable: boolean
}

/**
 * Called after an entry is in the local journal and before the write resolves; replication plugs in
 * here (ship the entry to replicas and wait for their acknowledgement according to the write
 * concern). With no hook, replicated concerns are refused before anything is written.
 */
export interface ReplicationHook {
  /**
   * Ships `entry` and resolves once `concern` is met, or rejects with WRITE_CONCERN_UNSATISFIED.
   * The entry is already durable locally when this is called.
   */
  afterAppend (entry: JournalEntry, concern: WriteConcern.WriteReplicated | WriteConcern.WriteDistributed): Promise<void>
}

interface Pending {
  ops: readonly BlockOp[]
  durable: boolean
  lsn: number
  resolve: (lsn: number) => void
  reject: (err: unknown) => void
}

/**
 * Groups handed to the store at once. The store applies batches in call order (a `BlockStore`
 * contract), so several may be in flight: while one is being written or synced, the next ones are
 * already queued in the store, which merges them into its own next write and sync.
 */
const DEFAULT_MAX_IN_FLIGHT = 4

const SYNC = { sync: true } as const
const NO_SYNC = { sync: false } as const

/** Sequences and group-commits block-store batches. */
export class WriteJournal {
  readonly #store: BlockStore
  readonly #maxInFlight: number
  #queue: Pending[] = []
  #deferred: BlockOp[] = []
  #inFlight = 0
  #issueScheduled = false
  #lastLsn = 0
  #committedLsn = 0
  #groups = 0
  #syncs = 0

  constructor (store: BlockStore, options: { maxInFlight?: number } = {}) {
    this.#store = store
    this.#maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT
  }

  /** Highest LSN handed out. */
  get lastLsn (): number { return this.#lastLsn }
  /** Highest LSN applied to the store. */
  get committedLsn (): number { return this.#committedLsn }
  /** Store batches issued, and how many of them asked for a sync (group-commit effectiveness). */
  get stats (): { groups: number, syncs: number } { return { groups: this.#groups, syncs: this.#syncs } }

  /**
   * Appends ops as one atomic entry; resolves with its LSN once applied (and synced when `durable`).
   * Entries are applied in append order.
   */
  append (ops: readonly BlockOp[], durable: boolean): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const lsn = ++this.#lastLsn
      this.#queue.push({ ops, durable, lsn, resolve, reject })
      if (this.#inFlight < this.#maxInFlight && !this.#issueScheduled) {
        // Issued from a microtask, so every entry appended by the callers that the same store batch
        // just woke up (they run in one microtask round) goes to the store as one batch and, when
        // durable, shares one sync: issuing the first entry at once would leave it a batch (and a
        // sync) of its own, and the others queued behind it.
        this.#issueScheduled = true
        queueMicrotask(this.#issueScheduledEntries)
      }
    })
  }

  readonly #issueScheduledEntries = (): void => {
    this.#issueScheduled = false
    if (this.#queue.length > 0 && this.#inFlight < this.#maxInFlight) this.#issue()
  }

  /**
   * Queues ops with no waiter (garbage deletes of superseded block versions): they ride along with
   * the next group, costing no I/O of their own.
   */
  defer (ops: readonly BlockOp[]): void {
    for (const op of ops) this.#deferred.push(op)
  }

  /** Resolves once everything appended so far (and deferred) is applied; syncs when `durable`. */
  async flush (durable: boolean): Promise<void> {
    // An empty entry resolves after every entry before it (stores apply batches in call order).
    await this.append([], durable)
  }

  /** Hands everything queued to the store as one batch. */
  #issue (): void {
    const group = this.#queue
    this.#queue = []
    let ops: readonly BlockOp[]
    let durable = false
    if (group.length === 1 && this.#deferred.length === 0) {
      const only = group[0] as Pending
      ops = only.ops
      durable = only.durable
    } else {
      // Deferred deletes go first: they supersede nothing in this group (they delete versions
      // replaced by writes that were applied earlier), and an empty flush() append carries them.
      const merged: BlockOp[] = this.#deferred
      this.#deferred = []
      for (const pending of group) {
        for (const op of pending.ops) merged.push(op)
        if (pending.durable) durable = true
      }
      ops = merged
    }
    this.#groups++
    if (durable) this.#syncs++
    this.#inFlight++
    const last = (group[group.length - 1] as Pending).lsn
    let applied: Promise<void>
    try {
      applied = this.#store.batch(ops, durable ? SYNC : NO_SYNC)
    } catch (err) {
      // A store that throws instead of rejecting: #issue runs from a microtask, where a throw
      // would be uncaught and leave the group waiting forever.
      applied = Promise.reject(err)
    }
    void applied.then(() => {
      if (last > this.#committedLsn) this.#committedLsn = last
      for (const pending of group) pending.resolve(pending.lsn)
      this.#issued()
    }, (err: unknown) => {
      for (const pending of group) pending.reject(err)
      this.#issued()
    })
  }

  /** One store batch has settled: issue what queued up meanwhile. */
  #issued (): void {
    this.#inFlight--
    if (this.#queue.length > 0 && this.#inFlight < this.#maxInFlight) this.#issue()
  }
}
