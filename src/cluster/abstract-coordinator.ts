// AbstractCoordinator: the Coordinator contract (argument checks, state, membership, elections,
// watches, rejoining after a lost lease) written once over a small etcd-shaped store that each
// backend implements through protected hooks (_range, _txn, _watch, _grantLease, ...). The
// list-then-watch loop behind watchMembers() and watch() is in watches.ts.

import { setTimeout as sleep } from 'node:timers/promises'
import type { ClusterMember, ClusterNode, Coordinator, CoordinatorEntry, CoordinatorEvent, Leadership } from '../drivers.js'
import { GalleonError } from '../errors.js'
import { SerialQueue } from '../serial-queue.js'
import {
  assertElection, assertExpectRevision, assertKey, assertNode, assertPrefix, assertTtl, assertValue, DEFAULT_TTL_MS, layout,
  type StoreCondition, type StoredEntry, type StoreEvent, type StoreLease, type StoreOp, type StoreTxnResult
} from './coordinator-store.js'
import { campaign, currentLeader, type ElectionStore, type HeldLeadership } from './election.js'
import { followKeys, followMembers, membersOf, RETRY_MAX_MS, RETRY_MIN_MS, type FollowStore } from './watches.js'

/** Options every coordinator backend accepts. */
export interface AbstractCoordinatorOptions {
  /** Lease TTL of join() when the call names none (default 10 s). */
  readonly ttlMs?: number
}

/** The leases of one membership: `liveness` (health, elections) and `record` (the record outlives health). */
interface Session {
  readonly nodeId: string
  readonly lease: StoreLease
  readonly recordLease: StoreLease
  readonly controller: AbortController
  readonly ended: AbortSignal
}

/** What join() asked for, kept so a lost lease can be replaced by a new membership. */
interface Membership {
  readonly node: ClusterNode
  readonly ttlMs: number
  readonly joinedAt: string
}

function assertListener (listener: unknown): asserts listener is (...args: never[]) => void {
  if (typeof listener !== 'function') throw new GalleonError('INVALID_ARGUMENT', `listener must be a function, got ${listener === null ? 'null' : typeof listener}`)
}

function assertOptions (options: unknown): asserts options is Record<string, unknown> | undefined {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new GalleonError('INVALID_ARGUMENT', `options must be an object when given, got ${options === null ? 'null' : typeof options}`)
  }
}

/**
 * Base class of coordinator backends. The public methods validate arguments, track the handle's
 * state and implement membership, elections and watches; a backend provides only the store hooks.
 *
 * Membership uses two leases: a member is healthy while its `liveness` lease (the join TTL) lives,
 * and its record stays listed, unhealthy, until its `record` lease (twice the TTL) ends as well. If
 * the handle's lease is lost while the process lives (keepalives failed for a TTL), every leadership
 * of the handle is lost and the handle joins again with new leases.
 */
export abstract class AbstractCoordinator implements Coordinator {
  /** Backend name, e.g. `memory`, `etcd`. */
  abstract readonly name: string
  readonly #defaultTtlMs: number
  #closed = false
  readonly #closing = new AbortController()
  /** Highest store revision this handle has observed: a new watch starts right after it. */
  #seenRevision = 0
  readonly #membershipQueue = new SerialQueue()
  #membership: Membership | undefined
  #session: Session | undefined
  /** The session whose leases the member record and alive key were last written with. */
  #registered: Session | undefined
  /** The revision of that write: leave() deletes the keys only as they were written then. */
  #registeredRevision = 0
  readonly #leaderships = new Map<string, HeldLeadership>()
  readonly #campaigning = new Set<string>()
  /** Campaigns waiting for the session that replaces a lost one. */
  readonly #sessionWaiters = new Set<() => void>()
  /** Told when the session's lease is lost, and when a new one replaces it (see onLeaseChange). */
  readonly #leaseListeners = new Set<(held: boolean) => void>()
  /** A lost lease was reported and its replacement not yet. */
  #leaseLost = false
  readonly #watchStops = new Set<() => void>()
  readonly #electionStore: ElectionStore = {
    range: async (key, prefix) => await this.#range(key, prefix),
    txn: async (conditions, ops) => await this.#txn(conditions, ops),
    watch: (key, options, onEvents, onError) => this.#watchOnce(key, options, onEvents, onError)
  }
  /** The handle as watches.ts sees it; `range` returns #range's own promise (no extra await hop). */
  readonly #followStore: FollowStore = {
    isClosed: () => this.#closed,
    closing: this.#closing.signal,
    range: (key, prefix) => this.#range(key, prefix),
    watch: (key, options, onEvents, onError) => this.#watchOnce(key, options, onEvents, onError)
  }

  constructor (options: AbstractCoordinatorOptions = {}) {
    assertOptions(options)
    const ttlMs = options.ttlMs ?? DEFAULT_TTL_MS
    assertTtl(ttlMs)
    this.#defaultTtlMs = ttlMs
  }

  /** Entries of `key` (or of every key starting with it when `prefix`), and the store's revision. */
  protected abstract _range (key: string, prefix: boolean): Promise<{ entries: StoredEntry[], revision: number }>
  /** If every condition holds, applies every op atomically. */
  protected abstract _txn (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): Promise<StoreTxnResult>
  /**
   * Reports the changes of `key` (or under it when `prefix`) from `fromRevision` on, in revision
   * order, one call per revision; `onError` when the watch cannot go on. Returns a function that stops it.
   */
  protected abstract _watch (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void): () => void
  /** Grants a lease of at least `ttlMs` and keeps it alive; `onLost` when it ends other than by revoke or release. */
  protected abstract _grantLease (ttlMs: number, onLost: () => void): Promise<StoreLease>
  /** Ends the lease now: its keys are deleted. */
  protected abstract _revokeLease (lease: StoreLease): Promise<void>
  /** Stops keeping the lease alive without revoking it (it expires after its TTL). */
  protected abstract _releaseLease (lease: StoreLease): void
  /** Releases the backend's resources (connections, timers); leases are already released. */
  protected abstract _close (): Promise<void>

  /** Records a store revision the backend observed outside the hooks (e.g. when connecting). */
  protected noteRevision (revision: number): void {
    if (revision > this.#seenRevision) this.#seenRevision = revision
  }

  /** True once close() was called. */
  get closed (): boolean {
    return this.#closed
  }

  async join (node: ClusterNode, options?: { ttlMs?: number }): Promise<void> {
    this.#assertOpen()
    assertNode(node)
    assertOptions(options)
    if (options?.ttlMs !== undefined) assertTtl(options.ttlMs)
    const copy: ClusterNode = Object.freeze({
      id: node.id, address: node.address, zone: node.zone, labels: Object.freeze({ ...node.labels }), capacityBytes: node.capacityBytes, freeBytes: node.freeBytes,
      ...(node.protocol === undefined ? {} : { protocol: Object.freeze({ version: node.protocol.version, oldest: node.protocol.oldest }) })
    })
    await this.#membershipQueue.run(async () => {
      this.#assertOpen()
      const previous = this.#membership
      if (previous !== undefined && previous.node.id !== copy.id) {
        throw new GalleonError('INVALID_ARGUMENT', `this coordinator handle is node '${previous.node.id}'; a handle is one node: leave() before joining as '${copy.id}', or open another handle`)
      }
      const ttlMs = options?.ttlMs ?? previous?.ttlMs ?? this.#defaultTtlMs
      if (previous !== undefined && ttlMs !== previous.ttlMs) {
        throw new GalleonError('INVALID_ARGUMENT', `node '${copy.id}' joined with ttlMs ${previous.ttlMs}; leave() first to change its TTL to ${ttlMs}`)
      }
      const membership: Membership = { node: copy, ttlMs, joinedAt: previous?.joinedAt ?? new Date().toISOString() }
      await this.#register(membership)
      this.#membership = membership
    })
  }

  async leave (): Promise<void> {
    this.#assertOpen()
    await this.#membershipQueue.run(async () => {
      const session = this.#session
      if (session === undefined) {
        // Not joined, or its lease was lost and not replaced yet: its keys end with that lease, and
        // clearing the membership stops the rejoin.
        this.#membership = undefined
        this.#sessionChanged()
        return
      }
      // The keys go first: if that fails (etcd out of reach), the node is still a member, its leases
      // kept alive and its leaderships held, and leave() can be called again. Dropping the session
      // before would leave a node that neither takes part nor knows it does not.
      try {
        await this.#deleteMemberKeys(session.nodeId)
      } catch (err) {
        // A delete that failed may still be applied (etcd can get a request after its deadline
        // passed here), which would leave a member without its keys. They are written again: a
        // late delete applied before that is undone, and one applied after finds them changed.
        const membership = this.#membership
        if (membership !== undefined && this.#registered === session) {
          this.#registered = undefined
          void this.#rejoin(membership)
        }
        throw err
      }
      this.#membership = undefined
      this.#session = undefined
      this.#sessionChanged()
      session.controller.abort(new GalleonError('NOT_LEADER', `node '${session.nodeId}' left the cluster`))
      // The node has left once its keys are gone. A revoke that fails is not the leave failing:
      // the keepalives stop, so the leases (and any candidate keys on them) expire within their TTL.
      for (const lease of [session.lease, session.recordLease]) {
        await this._revokeLease(lease).catch(() => {})
        this._releaseLease(lease)
      }
    })
  }

  async members (): Promise<ClusterMember[]> {
    this.#assertOpen()
    const { entries } = await this.#range(layout.nodes, true)
    return membersOf(new Map(entries.map((entry) => [entry.key, entry.value])))
  }

  watchMembers (listener: (members: ClusterMember[]) => void): () => void {
    this.#assertOpen()
    assertListener(listener)
    return followMembers(this.#followStore, listener)
  }

  async campaign (election: string, options?: { signal?: AbortSignal }): Promise<Leadership> {
    this.#assertOpen()
    assertElection(election)
    assertOptions(options)
    const signal = options?.signal
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new GalleonError('INVALID_ARGUMENT', 'options.signal must be an AbortSignal')
    const nodeId = this.#session?.nodeId ?? this.#membership?.node.id
    if (nodeId === undefined) {
      throw new GalleonError('NOT_OPEN', `join() the cluster before campaigning in election '${election}': leadership is tied to the node's lease`)
    }
    if (this.#campaigning.has(election) || this.#leaderships.has(election)) {
      throw new GalleonError('BUSY', `node '${nodeId}' already campaigns in or leads election '${election}'; await that campaign or resign() first`)
    }
    const cancelled = (): GalleonError => new GalleonError('CANCELLED', `the campaign of node '${nodeId}' in election '${election}' was aborted`)
    if (signal?.aborted === true) throw cancelled()
    const abort = new AbortController()
    const onAbort = (): void => abort.abort(cancelled())
    signal?.addEventListener('abort', onAbort, { once: true })
    this.#campaigning.add(election)
    try {
      // A node whose lease was lost is still a member: it is joining again in the background, and
      // its campaign waits for the new lease instead of failing (a caller that took NOT_OPEN as
      // final would never campaign again, leaving the election without a candidate).
      const session = await this.#currentSession(election, abort.signal)
      const held = await campaign(this.#electionStore, election, { nodeId: session.nodeId, lease: session.lease, ended: session.ended }, abort.signal, (ended) => {
        if (this.#leaderships.get(election) === ended) this.#leaderships.delete(election)
      })
      this.#leaderships.set(election, held)
      if (session.ended.aborted) held.end()
      return Object.freeze({ election: held.election, nodeId: held.nodeId, epoch: held.epoch, lost: held.lost, resign: held.resign })
    } finally {
      signal?.removeEventListener('abort', onAbort)
      this.#campaigning.delete(election)
    }
  }

  /**
   * The session to campaign with: the current one, or, while a lost lease is being replaced (the
   * membership stands, the session does not), the next one. NOT_OPEN once the node left or the
   * handle closed; the signal's reason when it aborts first.
   */
  async #currentSession (election: string, signal: AbortSignal): Promise<Session> {
    for (;;) {
      this.#assertOpen()
      const session = this.#session
      if (session !== undefined) return session
      if (this.#membership === undefined) {
        throw new GalleonError('NOT_OPEN', `join() the cluster before campaigning in election '${election}': leadership is tied to the node's lease (this node left while its campaign waited for a new lease)`)
      }
      if (signal.aborted) throw signal.reason
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.#sessionWaiters.delete(done)
          signal.removeEventListener('abort', done)
          resolve()
        }
        this.#sessionWaiters.add(done)
        signal.addEventListener('abort', done, { once: true })
      })
    }
  }

  /** See Coordinator.onLeaseChange; a listener added while the lease is lost is told so at once. */
  onLeaseChange (listener: (held: boolean) => void): () => void {
    this.#leaseListeners.add(listener)
    if (this.#leaseLost) {
      try { listener(false) } catch {}
    }
    return () => { this.#leaseListeners.delete(listener) }
  }

  #tellLease (held: boolean): void {
    if (this.#leaseLost === !held) return
    this.#leaseLost = !held
    for (const listener of [...this.#leaseListeners]) {
      try { listener(held) } catch {}
    }
  }

  /** The session or the membership changed: campaigns waiting for a session look again. */
  #sessionChanged (): void {
    for (const waiter of [...this.#sessionWaiters]) waiter()
  }

  async leader (election: string): Promise<{ nodeId: string, epoch: number } | undefined> {
    this.#assertOpen()
    assertElection(election)
    return await currentLeader(this.#electionStore, election)
  }

  async get (key: string): Promise<CoordinatorEntry | undefined> {
    this.#assertOpen()
    assertKey(key)
    const { entries } = await this.#range(layout.kv + key, false)
    const entry = entries[0]
    return entry === undefined ? undefined : { key, value: entry.value, revision: entry.modRevision }
  }

  async put (key: string, value: string, options?: { expectRevision?: number }): Promise<CoordinatorEntry | undefined> {
    this.#assertOpen()
    assertKey(key)
    assertValue(value)
    assertOptions(options)
    assertExpectRevision(options?.expectRevision)
    const conditions: StoreCondition[] = options?.expectRevision === undefined ? [] : [{ key: layout.kv + key, target: 'mod', revision: options.expectRevision }]
    const result = await this.#txn(conditions, [{ type: 'put', key: layout.kv + key, value }])
    return result.succeeded ? { key, value, revision: result.revision } : undefined
  }

  async delete (key: string, options?: { expectRevision?: number }): Promise<boolean> {
    this.#assertOpen()
    assertKey(key)
    assertOptions(options)
    assertExpectRevision(options?.expectRevision)
    const conditions: StoreCondition[] = options?.expectRevision === undefined ? [] : [{ key: layout.kv + key, target: 'mod', revision: options.expectRevision }]
    const result = await this.#txn(conditions, [{ type: 'delete', key: layout.kv + key }])
    return result.succeeded && result.deleted > 0
  }

  async list (prefix: string): Promise<CoordinatorEntry[]> {
    this.#assertOpen()
    assertPrefix(prefix)
    const { entries } = await this.#range(layout.kv + prefix, true)
    return entries
      .map((entry) => ({ key: entry.key.slice(layout.kv.length), value: entry.value, revision: entry.modRevision }))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  }

  watch (prefix: string, listener: (event: CoordinatorEvent) => void): () => void {
    this.#assertOpen()
    assertPrefix(prefix)
    assertListener(listener)
    return followKeys(this.#followStore, prefix, this.#seenRevision + 1, listener)
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#membership = undefined
    this.#closing.abort()
    const session = this.#session
    this.#session = undefined
    if (session !== undefined) {
      // As after a crash: the leases are not revoked, they expire; this handle's leaderships end now.
      this._releaseLease(session.lease)
      this._releaseLease(session.recordLease)
      session.controller.abort(new GalleonError('NOT_OPEN', `the coordinator handle of node '${session.nodeId}' was closed`))
    }
    this.#sessionChanged()
    for (const stop of [...this.#watchStops]) stop()
    await this._close()
  }

  #assertOpen (): void {
    if (this.#closed) throw new GalleonError('NOT_OPEN', `this ${this.name} coordinator handle is closed; create a new one`)
  }

  async #range (key: string, prefix: boolean): Promise<{ entries: StoredEntry[], revision: number }> {
    const result = await this._range(key, prefix)
    this.noteRevision(result.revision)
    return result
  }

  async #txn (conditions: readonly StoreCondition[], ops: readonly StoreOp[]): Promise<StoreTxnResult> {
    const result = await this._txn(conditions, ops)
    this.noteRevision(result.revision)
    return result
  }

  /** A store watch that ends with the handle. */
  #watchOnce (key: string, options: { prefix: boolean, fromRevision: number }, onEvents: (events: StoreEvent[]) => void, onError: (err: GalleonError) => void): () => void {
    if (this.#closed) {
      queueMicrotask(() => onError(new GalleonError('NOT_OPEN', `this ${this.name} coordinator handle is closed`)))
      return () => {}
    }
    let stopped = false
    const stopStore = this._watch(key, options, (events) => {
      if (stopped) return
      const last = events[events.length - 1]
      if (last !== undefined) this.noteRevision(last.entry.modRevision)
      onEvents(events)
    }, (err) => {
      if (!stopped) { stop(); onError(err) }
    })
    const stop = (): void => {
      if (stopped) return
      stopped = true
      this.#watchStops.delete(stop)
      stopStore()
    }
    this.#watchStops.add(stop)
    return stop
  }

  /**
   * Deletes the member record and alive key if they are as this handle last wrote them. When they
   * are not (a write or delete of them failed here and was applied by the store all the same), it
   * reads them and deletes them as they are now.
   */
  async #deleteMemberKeys (nodeId: string): Promise<void> {
    const keys = [layout.nodeKey(nodeId, 'record'), layout.nodeKey(nodeId, 'alive')]
    let revisions = keys.map(() => this.#registeredRevision)
    for (let attempt = 1; ; attempt++) {
      const result = await this.#txn(keys.map((key, i) => ({ key, target: 'mod', revision: revisions[i]! })), keys.map((key) => ({ type: 'delete', key })))
      if (result.succeeded) return
      if (attempt === 3) {
        throw new GalleonError('BUSY', `the keys of node '${nodeId}' changed at every attempt to delete them; another coordinator handle may be joined as '${nodeId}': close it, then leave() again`)
      }
      const { entries } = await this.#range(keys[0]!.slice(0, -'record'.length), true)
      revisions = keys.map((key) => entries.find((entry) => entry.key === key)?.modRevision ?? 0)
    }
  }

  /** Grants the session's leases if needed and writes the member record and alive key (serialized). */
  async #register (membership: Membership): Promise<void> {
    let session = this.#session
    if (session === undefined) {
      session = await this.#startSession(membership.node.id, membership.ttlMs)
    }
    const { node, joinedAt } = membership
    const { revision } = await this.#txn([], [
      { type: 'put', key: layout.nodeKey(node.id, 'record'), value: JSON.stringify({ ...node, joinedAt }), lease: session.recordLease.id },
      { type: 'put', key: layout.nodeKey(node.id, 'alive'), value: '', lease: session.lease.id }
    ])
    this.#registered = session
    this.#registeredRevision = revision
    this.#tellLease(true)
  }

  async #startSession (nodeId: string, ttlMs: number): Promise<Session> {
    let session: Session | undefined
    const onLost = (): void => { if (session !== undefined) this.#sessionLost(session) }
    const lease = await this._grantLease(ttlMs, onLost)
    let recordLease: StoreLease
    try {
      recordLease = await this._grantLease(lease.ttlMs * 2, onLost)
    } catch (err) {
      await this._revokeLease(lease).catch(() => {})
      this._releaseLease(lease)
      throw err
    }
    const controller = new AbortController()
    session = { nodeId, lease, recordLease, controller, ended: controller.signal }
    if (this.#closed) {
      this._releaseLease(lease)
      this._releaseLease(recordLease)
      throw new GalleonError('NOT_OPEN', `this ${this.name} coordinator handle was closed while node '${nodeId}' joined`)
    }
    this.#session = session
    this.#sessionChanged()
    return session
  }

  /** A lease of the session ended without leave(): leaderships are lost, and the node joins again. */
  #sessionLost (session: Session): void {
    if (this.#session !== session) return
    this.#session = undefined
    this._releaseLease(session.lease)
    this._releaseLease(session.recordLease)
    session.controller.abort(new GalleonError('BACKEND_UNAVAILABLE', `the lease of node '${session.nodeId}' ended (its keepalives did not reach the coordinator in time); its leaderships are lost, campaign again`))
    this.#tellLease(false)
    const membership = this.#membership
    if (membership !== undefined) void this.#rejoin(membership, session)
  }

  /**
   * Writes the member's keys again until that succeeds or the membership ends: with new leases after
   * `lost` ended (then revoked), or with the current ones after a failed leave().
   */
  async #rejoin (membership: Membership, lost?: Session): Promise<void> {
    let delayMs = RETRY_MIN_MS
    while (this.#membership === membership && !this.#closed) {
      try {
        await this.#membershipQueue.run(async () => {
          // Also when a new session exists but writing the keys with it failed: they are gone with
          // the lost lease, and nothing else would write them again.
          if (this.#membership === membership && (this.#session === undefined || this.#registered !== this.#session) && !this.#closed) await this.#register(membership)
        })
        // The record and alive keys are on the new leases now; the old ones can go (best effort).
        if (lost !== undefined) {
          await this._revokeLease(lost.lease).catch(() => {})
          await this._revokeLease(lost.recordLease).catch(() => {})
        }
        return
      } catch {
        await sleep(delayMs, undefined, { signal: this.#closing.signal }).catch(() => {})
        delayMs = Math.min(delayMs * 2, membership.ttlMs, RETRY_MAX_MS)
      }
    }
  }
}
