// In-process coordinator: MemoryCoordinatorCluster is a tiny etcd (revisioned keys, leases, watches)
// shared by the MemoryCoordinator handles made from it. For tests and single-process use only.

import { AbstractCoordinator, type AbstractCoordinatorOptions } from '../../src/cluster/abstract-coordinator.js'
import type { StoreCondition, StoredEntry, StoreEvent, StoreLease, StoreOp, StoreTxnResult } from '../../src/cluster/coordinator-store.js'
import { GalleonError } from '../../src/errors.js'

/** Time as the memory coordinator sees it: injectable so tests can expire leases without waiting. */
export interface CoordinatorClock {
  now: () => number
  setTimeout: (callback: () => void, ms: number) => unknown
  clearTimeout: (handle: unknown) => void
}

/**
 * The real clock. Its timers keep the process alive like a real client's connection would: close
 * every handle (keepalives stop), and leases left by crashed handles end after their TTL.
 */
export const systemClock: CoordinatorClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout)
}

/** A clock that moves only when `advance()` is called, firing due timers in time order. */
export class ManualClock implements CoordinatorClock {
  #now: number
  #nextId = 1
  readonly #timers = new Map<number, { at: number, callback: () => void }>()

  constructor (start = 0) {
    this.#now = start
  }

  now (): number {
    return this.#now
  }

  setTimeout (callback: () => void, ms: number): unknown {
    const id = this.#nextId++
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), callback })
    return id
  }

  clearTimeout (handle: unknown): void {
    this.#timers.delete(handle as number)
  }

  /** Moves time forward by `ms`, running every timer that falls due (including ones they set). */
  advance (ms: number): void {
    const target = this.#now + ms
    for (;;) {
      let due: [number, { at: number, callback: () => void }] | undefined
      for (const timer of this.#timers) if (timer[1].at <= target && (due === undefined || timer[1].at < due[1].at)) due = timer
      if (due === undefined) break
      this.#timers.delete(due[0])
      this.#now = due[1].at
      due[1].callback()
    }
    this.#now = target
  }
}

/** Options of a MemoryCoordinatorCluster. */
export interface MemoryCoordinatorClusterOptions {
  /** Clock of lease expiry and keepalives (default: the system clock). */
  readonly clock?: CoordinatorClock
  /** Events kept for watches that start in the past (default 10 000); older ones are compacted. */
  readonly historyLimit?: number
}

interface StoredKey { value: string, createRevision: number, modRevision: number, lease: string | undefined }
interface Lease { ttlMs: number, timer: unknown, keys: Set<string> }
interface Watcher { key: string, prefix: boolean, queue: StoreEvent[], scheduled: boolean, deliver: (events: StoreEvent[]) => void }

function matches (watcher: { key: string, prefix: boolean }, key: string): boolean {
  return watcher.prefix ? key.startsWith(watcher.key) : key === watcher.key
}

/**
 * The shared state of an in-process cluster: a linearizable key-value store with a global revision
 * counter (like etcd's), leases that expire on the cluster's clock, and watches. Every handle from
 * `coordinator()` sees the same state. It cannot coordinate separate processes: use the etcd
 * backend for that.
 */
export class MemoryCoordinatorCluster {
  /** The cluster's clock. */
  readonly clock: CoordinatorClock
  readonly #historyLimit: number
  #revision = 0
  /** Events up to this revision were dropped from the history. */
  #compacted = 0
  #nextLeaseId = 1
  readonly #keys = new Map<string, StoredKey>()
  readonly #leases = new Map<string, Lease>()
  readonly #history: StoreEvent[] = []
  readonly #watchers = new Set<Watcher>()

  constructor (options: MemoryCoordinatorClusterOptions = {}) {
    this.clock = options.clock ?? systemClock
    this.#historyLimit = options.historyLimit ?? 10_000
  }

  /** A new handle (one per node) on this cluster. */
  coordinator (options: AbstractCoordinatorOptions = {}): MemoryCoordinator {
    return new MemoryCoordinator(this, options)
  }

  /** The current revision (0 before the first write). */
  get revision (): number {
    return this.#revision
  }

  /** Number of live leases (for tests: a handle that left or expired holds none). */
  get leaseCount (): number {
    return this.#leases.size
  }

  /** @internal */
  range (key: string, prefix: boolean): { entries: StoredEntry[], revision: number } {
    const entries: StoredEntry[] = []
    if (prefix) {
      for (const [k, stored] of this.#keys) if (k.startsWith(key)) entries.push(this.#entry(k, stored))
      entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    } else {
      const stored = this.#keys.get(key)
      if (stored !== undefined) entries.push(this.#entry(key, stored))
    }
    return { entries, revision: this.#revision }
  }

  /** @internal */
  txn (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): StoreTxnResult {
    for (const condition of conditions) {
      const stored = this.#keys.get(condition.key)
      const actual = stored === undefined ? 0 : condition.target === 'mod' ? stored.modRevision : stored.createRevision
      if (actual !== condition.revision) return { succeeded: false, revision: this.#revision, deleted: 0 }
    }
    for (const op of ops) {
      if (op.type === 'put' && op.lease !== undefined && !this.#leases.has(op.lease)) {
        throw new GalleonError('BACKEND_UNAVAILABLE', `lease ${op.lease} has expired or was revoked; join again`)
      }
    }
    const writes = ops.filter((op) => op.type === 'put' || this.#keys.has(op.key))
    if (writes.length === 0) return { succeeded: true, revision: this.#revision, deleted: 0 }
    const revision = ++this.#revision
    const events: StoreEvent[] = []
    let deleted = 0
    for (const op of writes) {
      const previous = this.#keys.get(op.key)
      if (previous?.lease !== undefined) this.#leases.get(previous.lease)?.keys.delete(op.key)
      if (op.type === 'put') {
        const stored: StoredKey = { value: op.value, createRevision: previous?.createRevision ?? revision, modRevision: revision, lease: op.lease }
        this.#keys.set(op.key, stored)
        if (op.lease !== undefined) this.#leases.get(op.lease)?.keys.add(op.key)
        events.push({ type: 'put', entry: this.#entry(op.key, stored) })
      } else if (previous !== undefined) {
        this.#keys.delete(op.key)
        deleted++
        events.push({ type: 'delete', entry: { key: op.key, value: '', createRevision: previous.createRevision, modRevision: revision } })
      }
    }
    this.#publish(events)
    return { succeeded: true, revision, deleted }
  }

  /** @internal */
  watch (key: string, prefix: boolean, fromRevision: number, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void): () => void {
    if (fromRevision <= this.#compacted) {
      queueMicrotask(() => onError(new GalleonError('BACKEND_UNAVAILABLE', `watch from revision ${fromRevision} is older than the kept history (revisions after ${this.#compacted}); list again`)))
      return () => {}
    }
    const watcher: Watcher = {
      key,
      prefix,
      queue: this.#history.filter((event) => event.entry.modRevision >= fromRevision && matches({ key, prefix }, event.entry.key)),
      scheduled: false,
      deliver: onEvents
    }
    this.#watchers.add(watcher)
    if (watcher.queue.length > 0) this.#schedule(watcher)
    return () => { this.#watchers.delete(watcher) }
  }

  /** @internal */
  grant (ttlMs: number): string {
    const id = String(this.#nextLeaseId++)
    const lease: Lease = { ttlMs, timer: undefined, keys: new Set() }
    this.#leases.set(id, lease)
    this.#arm(id, lease)
    return id
  }

  /** @internal Renews the lease; false when it no longer exists. */
  keepAlive (id: string): boolean {
    const lease = this.#leases.get(id)
    if (lease === undefined) return false
    this.#arm(id, lease)
    return true
  }

  /**
   * Ends a lease now and deletes its keys (all in one revision), as etcd does on expiry or revoke.
   * Tests use it to make a lease expire without waiting for its TTL.
   */
  revoke (id: string): void {
    const lease = this.#leases.get(id)
    if (lease === undefined) return
    this.clock.clearTimeout(lease.timer)
    this.#leases.delete(id)
    if (lease.keys.size > 0) this.txn([], [...lease.keys].map((key) => ({ type: 'delete', key })))
  }

  #arm (id: string, lease: Lease): void {
    this.clock.clearTimeout(lease.timer)
    lease.timer = this.clock.setTimeout(() => this.revoke(id), lease.ttlMs)
  }

  #entry (key: string, stored: StoredKey): StoredEntry {
    return { key, value: stored.value, createRevision: stored.createRevision, modRevision: stored.modRevision }
  }

  #publish (events: StoreEvent[]): void {
    this.#history.push(...events)
    if (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.#historyLimit)
      this.#compacted = dropped[dropped.length - 1]!.entry.modRevision
      // Never keep half of a revision: a watch either gets all of its events or is refused.
      while (this.#history[0] !== undefined && this.#history[0].entry.modRevision <= this.#compacted) this.#history.shift()
    }
    for (const watcher of this.#watchers) {
      const relevant = events.filter((event) => matches(watcher, event.entry.key))
      if (relevant.length === 0) continue
      watcher.queue.push(...relevant)
      this.#schedule(watcher)
    }
  }

  /** Delivers a watcher's queued events after the current call returns, one call per revision. */
  #schedule (watcher: Watcher): void {
    if (watcher.scheduled) return
    watcher.scheduled = true
    queueMicrotask(() => {
      watcher.scheduled = false
      while (watcher.queue.length > 0 && this.#watchers.has(watcher)) {
        const revision = watcher.queue[0]!.entry.modRevision
        let count = 1
        while (count < watcher.queue.length && watcher.queue[count]!.entry.modRevision === revision) count++
        watcher.deliver(watcher.queue.splice(0, count))
      }
    })
  }
}

/**
 * One node's handle on a MemoryCoordinatorCluster. Leases are kept alive by timers on the
 * cluster's clock (every third of the TTL). `crash()` simulates the process dying.
 */
export class MemoryCoordinator extends AbstractCoordinator {
  readonly name = 'memory'
  readonly #cluster: MemoryCoordinatorCluster
  /** Keepalive timer and loss callback of every lease this handle keeps alive. */
  readonly #keepalives = new Map<string, { timer: unknown, onLost: () => void }>()
  #crashed = false

  constructor (cluster: MemoryCoordinatorCluster, options: AbstractCoordinatorOptions = {}) {
    super(options)
    this.#cluster = cluster
    this.noteRevision(cluster.revision)
  }

  /**
   * Simulates this node's process dying: keepalives and watches stop at once and the handle refuses
   * further calls; nothing is revoked or deleted, so its leases expire after their TTL and only then
   * do the other nodes see it unhealthy and its elections move on. (Locally it ends as close() does.)
   */
  async crash (): Promise<void> {
    this.#crashed = true
    for (const lease of [...this.#keepalives.keys()]) this._releaseLease({ id: lease, ttlMs: 0 })
    await this.close()
  }

  /**
   * Makes this handle's leases end now on the cluster, as if its keepalives had not arrived for a
   * TTL (a partition or a long pause). The handle notices at its next keepalive: its leaderships
   * are lost and it joins again with new leases.
   */
  expireLeases (): void {
    for (const id of this.#keepalives.keys()) this.#cluster.revoke(id)
  }

  protected async _range (key: string, prefix: boolean): Promise<{ entries: StoredEntry[], revision: number }> {
    this.#assertUsable()
    return this.#cluster.range(key, prefix)
  }

  protected async _txn (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): Promise<StoreTxnResult> {
    this.#assertUsable()
    return this.#cluster.txn(conditions, ops)
  }

  protected _watch (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void): () => void {
    return this.#cluster.watch(key, options.prefix, options.fromRevision, onEvents, onError)
  }

  protected async _grantLease (ttlMs: number, onLost: () => void): Promise<StoreLease> {
    this.#assertUsable()
    const { clock } = this.#cluster
    const id = this.#cluster.grant(ttlMs)
    const keepalive = { timer: undefined as unknown, onLost }
    const tick = (): void => {
      if (!this.#keepalives.has(id)) return
      if (this.#cluster.keepAlive(id)) {
        keepalive.timer = clock.setTimeout(tick, Math.max(1, Math.floor(ttlMs / 3)))
      } else {
        this.#keepalives.delete(id)
        onLost()
      }
    }
    keepalive.timer = clock.setTimeout(tick, Math.max(1, Math.floor(ttlMs / 3)))
    this.#keepalives.set(id, keepalive)
    return { id, ttlMs }
  }

  protected async _revokeLease (lease: StoreLease): Promise<void> {
    this._releaseLease(lease)
    if (this.#crashed) return
    this.#cluster.revoke(lease.id)
  }

  protected _releaseLease (lease: StoreLease): void {
    const keepalive = this.#keepalives.get(lease.id)
    if (keepalive === undefined) return
    this.#cluster.clock.clearTimeout(keepalive.timer)
    this.#keepalives.delete(lease.id)
  }

  protected async _close (): Promise<void> {
    for (const id of [...this.#keepalives.keys()]) this._releaseLease({ id, ttlMs: 0 })
  }

  #assertUsable (): void {
    if (this.#crashed) throw new GalleonError('NOT_OPEN', 'this memory coordinator handle crashed (crash() was called); create a new one')
  }
}
