// Changes to the replica sets of this node's volumes: creating and deleting them (done in
// set-lifecycle.ts), handing the copies off before the node leaves, moving one copy, and reshaping
// a set for a new storage class.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import type { Coordinator } from '../drivers.js'
import { placeVolume, type PlacementRequest } from '../cluster/placement.js'
import { incompatibility } from '../cluster/protocol.js'
import { closedTarget } from '../cluster/closed-nodes.js'
import { RECORD_PREFIX, copiesPerNode, givingUp, parseRecord, recordKey, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { APPLY_TIMEOUT_MS, type LocalSet, type ManagerCore } from './common.js'
import type { CopyLayout } from './host.js'
import { ReplicaSetLifecycle } from './set-lifecycle.js'

export { clearDeletionMark } from './cleanup.js'

/** Coordinator keys of nodes that are leaving (`replication/leaving/<nodeId>`). */
const LEAVING_PREFIX = 'replication/leaving/'

/** Nodes handing their copies off before they leave (not eligible for new copies). */
export async function leavingNodes (coordinator: Coordinator): Promise<Set<string>> {
  return new Set((await coordinator.list(LEAVING_PREFIX)).map((entry) => entry.key.slice(LEAVING_PREFIX.length)))
}

/**
 * Nodes no new copy is placed on: those leaving (their copies would go with them) and those that
 * closed cleanly (listed healthy until their lease lapses, they would never fill one; see closed-nodes.ts).
 */
export async function takingNoCopies (core: ManagerCore): Promise<Set<string>> {
  const [leaving, closed] = await Promise.all([leavingNodes(core.coordinator), core.cluster.closedMembers()])
  return new Set([...leaving, ...closed])
}

/** The replica-set changes a ReplicationManager makes (see its register, handOff, moveCopy, reshape...). */
export class ReplicaSetChanges {
  readonly #core: ManagerCore
  /** While this node hands its copies off (leave), it deletes them itself. */
  #handingOff = false
  /** Set by cancelHandOff: the hand-off under way stops at its next step with this error. */
  #handOffCancelled: Error | undefined
  /** Volumes whose copy on this node is moving to another node (it deletes the copy itself). */
  readonly #moving = new Set<string>()
  /** Creating and deleting replica sets (register, unregister, dissolve). */
  readonly #lifecycle: ReplicaSetLifecycle

  constructor (core: ManagerCore) {
    this.#core = core
    this.#lifecycle = new ReplicaSetLifecycle(core)
  }

  /** This node is handing its copies off (it deletes them itself). */
  get handingOff (): boolean { return this.#handingOff }

  /**
   * Stops a hand-off under way (the instance is closing): it rejects with `err` at its next step
   * instead of waiting, up to its deadline, for copies that the closing instance no longer fills.
   * A copy it added stays placed (a later leave finds it as a surplus copy).
   */
  cancelHandOff (err: Error): void {
    if (this.#handingOff) this.#handOffCancelled = err
  }

  /** The copy of this volume on this node is moving to another node (it deletes the copy itself). */
  isMoving (volumeId: string): boolean { return this.#moving.has(volumeId) }

  /**
   * Makes a freshly created local volume replicated: places its copies, records the replica set
   * (this node primary, epoch 1) and creates the other copies. Waits a while for them to be in
   * sync; returns the record (fewer in-sync copies than wanted: the volume is degraded).
   */
  register (spec: VolumeSpec, options: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'> = {}, wait = true): Promise<ReplicaSetRecord> {
    return this.#lifecycle.register(spec, options, wait)
  }

  /**
   * Deletes a replicated volume everywhere (called on the primary, before the local copy goes; the
   * caller takes this node off the deletion mark once that copy is gone, see copyGone). Once it
   * resolves the deletion is decided: the record is gone and its mark lists every node the record
   * placed a copy on. When it throws, the volume is kept whole: the record stays, and this node
   * takes the primary role up again.
   */
  unregister (volumeId: string): Promise<void> {
    return this.#lifecycle.unregister(volumeId)
  }

  /**
   * Makes a replicated volume whose only copy is this node's (and which wants one) a local volume
   * again: its primary stops, the caller clears the local record's replication (`local`), the
   * nodes that held copies of it (`formerNodes`: a move that was given up) are told to delete
   * theirs, and once all did, the cluster's record goes. Returns false, changing nothing, when the record keeps
   * other copies or another primary.
   */
  dissolve (volumeId: string, formerNodes: readonly string[], local: () => Promise<void>): Promise<boolean> {
    return this.#lifecycle.dissolve(volumeId, formerNodes, local)
  }

  /**
   * Before this node leaves the cluster: every copy it holds is handed off. Where its copy is in
   * sync, a copy on another node is added first and waited for (the volume keeps the redundancy it
   * had); where it is the primary, the role goes to an in-sync copy; then it leaves the replica set
   * and the local copy is deleted. BUSY (nothing more is done) when a volume cannot be handed off.
   * The node's leaving mark stays once the hand-off is done, until `releaseLeavingMark()`: the node
   * is still a member until it leaves, and no copy may be placed on it meanwhile (by the leader, or
   * by another node leaving at the same time).
   */
  async handOff (options: { timeoutMs?: number } = {}): Promise<void> {
    // Marked as leaving first: no copy is placed on this node meanwhile (by the leader or another leaver).
    const mark = `${LEAVING_PREFIX}${this.#core.nodeId}`
    this.#handingOff = true
    this.#handOffCancelled = undefined
    try {
      await this.#core.coordinator.put(mark, JSON.stringify({ at: Date.now() }))
    } catch (err) {
      this.#handingOff = false
      throw err
    }
    try {
      for (const set of [...this.#core.sets.values()]) {
        if (this.#handOffCancelled !== undefined) throw this.#handOffCancelled
        await this.#handOffOne(set, performance.now() + (options.timeoutMs ?? 30 * 60_000))
      }
    } catch (err) {
      await this.releaseLeavingMark()
      throw err
    } finally {
      this.#handOffCancelled = undefined
    }
  }

  /**
   * Ends what handOff began: the node has left the membership (its mark has nothing left to keep
   * off), or its leave failed (it stays a member, and copies may be placed on it again). Best
   * effort: a mark left behind is deleted by clearStaleMark.
   */
  async releaseLeavingMark (): Promise<void> {
    this.#handingOff = false
    await this.#core.coordinator.delete(`${LEAVING_PREFIX}${this.#core.nodeId}`).catch(() => {})
  }

  /**
   * Deletes this node's leaving mark when it is not leaving: a mark whose put answered with an
   * error but landed (even later), or whose delete was lost, would otherwise keep copies off this
   * node for good. Called now and then (see the manager's timer).
   */
  async clearStaleMark (): Promise<void> {
    if (this.#handingOff) return
    const mark = `${LEAVING_PREFIX}${this.#core.nodeId}`
    const entry = await this.#core.coordinator.get(mark)
    // (A leave that began meanwhile writes its mark again after this delete only if its own put
    // comes later; one whose put came first made #handingOff true before it.)
    if (entry === undefined || this.#handingOff) return
    await this.#core.coordinator.delete(mark, { expectRevision: entry.revision })
  }

  /**
   * Moves this node's copy of a volume to node `to`: a copy there first, in sync, then the primary
   * role (if this node has it), then this node's copy goes. Resolves once it is gone.
   */
  async moveCopy (volumeId: string, to: string, options: { timeoutMs?: number, signal?: AbortSignal } = {}): Promise<void> {
    const set = this.#core.sets.get(volumeId)
    if (set === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `node ${this.#core.nodeId} holds no copy of volume ${volumeId}`)
    if (to === this.#core.nodeId) throw new GalleonError('INVALID_ARGUMENT', `the volume's copy is on ${to} already: nothing to move`)
    const member = (await this.#core.coordinator.members()).find((m) => m.id === to)
    if (member === undefined || !member.healthy) throw new GalleonError('INVALID_ARGUMENT', `node ${to} is ${member === undefined ? 'not a member of the cluster' : 'not healthy'}; clusterStatus() lists the nodes`)
    // Closed, it is listed healthy until its lease lapses, but would never fill the copy.
    if ((await this.#core.cluster.closedMembers()).has(to)) throw closedTarget(to)
    // A node this one cannot talk to could never be sent the copy (see protocol.ts): refused now, not at the move's deadline.
    const why = incompatibility(member)
    if (why !== undefined) throw new GalleonError('IO_ERROR', `node ${to} cannot take a copy of volume ${volumeId}: ${why}`)
    if ((await leavingNodes(this.#core.coordinator)).has(to)) throw new GalleonError('BUSY', `node ${to} is leaving the cluster; pick another node`)
    const record = set.record ?? parseRecord((await this.#core.coordinator.get(recordKey(volumeId)))?.value ?? '')
    // A copy there beyond the wanted number (left by a move that was interrupted) is the one the
    // move fills and hands over to.
    // (Not one another node's hand-off is still filling: that one is not in sync yet.)
    if (record?.nodes.includes(to) === true && (record.nodes.length <= record.spec.replicas || (record.spec.replicas > 1 && !record.inSync.includes(to)))) throw new GalleonError('INVALID_ARGUMENT', `node ${to} holds a copy of volume ${record.spec.name} already; move to a node without one`)
    if (this.#moving.has(volumeId)) throw new GalleonError('BUSY', `volume ${record?.spec.name ?? volumeId} is moving already; wait for that move`)
    this.#moving.add(volumeId)
    try {
      await this.#handOffOne(set, performance.now() + (options.timeoutMs ?? 30 * 60_000), to, options.signal)
    } finally {
      this.#moving.delete(volumeId)
    }
  }

  /**
   * Changes the storage class of a replicated volume in its record: every copy converts itself to
   * the class (ReplicationHost.applySpec), and the number of copies follows the class's replicas:
   * more are placed now (filled by resyncs), fewer drop the copies that are not the primary's,
   * out-of-sync ones first (their nodes delete them). Returns the record as it was before.
   */
  async reshape (volumeId: string, change: { storageClass: string, replicas: number, pool?: string, encrypted?: boolean, keep?: string }, placement: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'>): Promise<ReplicaSetRecord> {
    let before: ReplicaSetRecord | undefined
    const members = this.#core.cluster.members.filter((m) => m.healthy)
    // Not a node that is leaving or closed (see takingNoCopies).
    const excluded = await takingNoCopies(this.#core)
    const load = change.replicas > 1 ? copiesPerNode(await this.#core.coordinator.list(RECORD_PREFIX)) : {}
    const written = await this.#core.update(volumeId, (r) => {
      before = r
      let nodes = [...r.nodes]
      if (change.replicas < nodes.length) {
        const rest = nodes.filter((n) => n !== r.primary)
        // Kept first: the in-sync copies, and among them the one of the node that asked.
        const rank = (n: string): number => (r.inSync.includes(n) ? 2 : 0) + (n === change.keep ? 1 : 0)
        rest.sort((a, b) => rank(b) - rank(a))
        nodes = [r.primary, ...rest].slice(0, Math.max(1, change.replicas))
      } else if (change.replicas > nodes.length) {
        try {
          const chosen = placeVolume(members.filter((m) => !excluded.has(m.id)), { ...placement, replicas: change.replicas, current: nodes, preferredPrimary: r.primary, load }).nodes
          nodes.push(...chosen.filter((n) => !nodes.includes(n)).slice(0, change.replicas - nodes.length))
        } catch (err) {
          // Fewer eligible nodes than copies: the volume is degraded until nodes join.
          if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
        }
      }
      const { pool: _pool, ...spec } = r.spec
      const hasPlacement = placement.strategy !== undefined || placement.zones !== undefined || placement.affinity !== undefined || placement.antiAffinity !== undefined || placement.nodes !== undefined
      const { placement: _placement, ...rest } = r
      // Copies given up here are listed until their nodes have deleted them (see droppedNodes):
      // one whose node is away meanwhile is named by a deletion of the volume too.
      return { ...rest, spec: { ...spec, storageClass: change.storageClass, replicas: change.replicas, ...(change.encrypted === undefined ? {} : { encrypted: change.encrypted }), ...(change.pool === undefined ? {} : { pool: change.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(hasPlacement ? { placement } : {}), ...givingUp(r, r.nodes.filter((n) => !nodes.includes(n))) }
    })
    if (written === undefined || before === undefined) throw new GalleonError('VOLUME_NOT_FOUND', `the cluster has no record of volume ${volumeId}`)
    const added = written.record.nodes.filter((n) => !before?.nodes.includes(n))
    if (added.length > 0) this.#core.host.emit('replication:replica-added', { volumeId, nodes: added })
    const removed = before.nodes.filter((n) => !written.record.nodes.includes(n))
    if (removed.length > 0) this.#core.host.emit('replication:replica-removed', { volumeId, nodes: removed, reason: `storage class ${change.storageClass} keeps ${change.replicas} cop${change.replicas === 1 ? 'y' : 'ies'}` })
    return before
  }

  /**
   * Puts a volume's record back as `reshape` found it (the class, copies, pool and placement; not
   * the nodes that were dropped), unless another change than `change` was made to it since.
   */
  async unshape (volumeId: string, before: ReplicaSetRecord, change: { storageClass: string, replicas: number, pool?: string }): Promise<void> {
    await this.#core.update(volumeId, (r) => {
      if (r.spec.storageClass !== change.storageClass || r.spec.replicas !== change.replicas || r.spec.pool !== change.pool) return undefined
      const { placement: _placement, ...rest } = r
      const { pool: _pool, encrypted: _encrypted, ...spec } = r.spec
      const nodes = r.nodes.filter((n) => n === r.primary || before.nodes.includes(n))
      return { ...rest, spec: { ...spec, storageClass: before.spec.storageClass, replicas: before.spec.replicas, ...(before.spec.encrypted === undefined ? {} : { encrypted: before.spec.encrypted }), ...(before.spec.pool === undefined ? {} : { pool: before.spec.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(before.placement === undefined ? {} : { placement: before.placement }) }
    })
  }

  /** How each copy of a volume stands against the class of its record (asks the other nodes). */
  async copyLayouts (volumeId: string, retry = false): Promise<{ record: ReplicaSetRecord, layouts: Array<CopyLayout & { node: string, unreachable?: string }> } | undefined> {
    const entry = await this.#core.coordinator.get(recordKey(volumeId))
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record === undefined) return undefined
    const layouts = await Promise.all(record.nodes.map(async (node) => {
      if (node === this.#core.nodeId) return { node, ...this.#core.host.copyLayout(volumeId, retry) }
      try {
        const reply = await this.#core.cluster.request(node, { kind: 'repl:layout', header: { volumeId, retry } }, { timeoutMs: APPLY_TIMEOUT_MS })
        return { node, ...(reply.header as unknown as CopyLayout) }
      } catch (err) {
        // Not an answer about the copy: asked again on the next poll.
        return { node, busy: true, converged: false, unreachable: `node ${node} did not answer: ${(err as Error)?.message ?? String(err)}` }
      }
    }))
    return { record, layouts }
  }

  /**
   * A copy a leaving node's hand-off can wait for instead of adding one: when the nodes that stay
   * hold as many copies as the volume wants (one was added by an earlier hand-off whose answer was
   * lost, or by an interrupted move), the one still filling (on a healthy node), else an in-sync one.
   */
  #surplusCopy (record: ReplicaSetRecord, others: readonly string[], leaving: ReadonlySet<string>, healthy: readonly string[]): string | undefined {
    const staying = others.filter((n) => !leaving.has(n))
    if (staying.length < record.spec.replicas) return undefined
    return staying.find((n) => !record.inSync.includes(n) && healthy.includes(n)) ?? staying.find((n) => record.inSync.includes(n))
  }

  async #handOffOne (set: LocalSet, deadline: number, to?: string, signal?: AbortSignal, copiesHad?: number): Promise<void> {
    const self = this.#core.nodeId
    const current = async (): Promise<ReplicaSetRecord | undefined> => {
      const entry = await this.#core.coordinator.get(recordKey(set.volumeId))
      return entry === undefined ? undefined : parseRecord(entry.value)
    }
    const waitFor = async (what: string, check: (record: ReplicaSetRecord) => boolean, gone?: () => Promise<GalleonError | undefined>): Promise<void> => {
      for (;;) {
        const record = await current()
        if (record === undefined || check(record)) return
        // (A move has its own signal; a leave is stopped by cancelHandOff.)
        if (to === undefined && this.#handOffCancelled !== undefined) throw this.#handOffCancelled
        const lost = await gone?.()
        if (lost !== undefined) throw lost
        if (performance.now() > deadline) throw new GalleonError('BUSY', to === undefined ? `leaving: timed out waiting until ${what}; the node is still a member, try again` : `moving the copy to ${to}: timed out waiting until ${what}; try again`)
        await sleep(100)
      }
    }
    let record = await current()
    if (record === undefined || !record.nodes.includes(self)) {
      this.#core.forget(set.volumeId)
      return
    }
    const name = record.spec.name
    // How many copies the volume had (up to its replicas) when this node's in-sync copy began to go.
    const had = copiesHad ?? (record.inSync.includes(self) ? Math.min(record.nodes.length, record.spec.replicas) : 0)
    if (to !== undefined && !record.inSync.includes(self)) throw new GalleonError('BUSY', `the copy of volume ${name} on ${self} is not in sync; move the copy of an in-sync node (${record.inSync.join(', ')})`)
    if (record.inSync.includes(self)) {
      const others = record.nodes.filter((n) => n !== self)
      const leaving = await leavingNodes(this.#core.coordinator)
      // Not a node that closed (listed healthy until its lease lapses): it would never fill the copy.
      const excluded = await takingNoCopies(this.#core)
      const members = (await this.#core.coordinator.members()).filter((m) => m.healthy && m.id !== self && !excluded.has(m.id))
      const place = async (): Promise<string | undefined> => {
        const load = copiesPerNode(await this.#core.coordinator.list(RECORD_PREFIX))
        return placeVolume(members, { ...(record?.placement ?? {}), replicas: record?.nodes.length ?? 1, current: others, load, ...(others[0] === undefined ? {} : { preferredPrimary: others[0] }) }).nodes.find((n) => !record?.nodes.includes(n))
      }
      const added = to ?? this.#surplusCopy(record, others, leaving, members.map((m) => m.id)) ?? await place()
      if (added === undefined) {
        throw new GalleonError('BUSY', `volume ${name} would lose its in-sync copy on ${self}: no other healthy node can take a copy (copies on ${record.nodes.join(', ')}); add a node first, or leave with force`)
      }
      // A move that is cancelled or fails before the primary role moved gives the new copy up
      // (its node deletes it), and everything stays as it was. So does a leave whose new copy's
      // node went away (`always`); otherwise a leave keeps it, to find it as a surplus copy when
      // called again.
      const giveUp = async (always = false): Promise<void> => {
        if (to === undefined && !always) return
        // (A leave's copy that came in sync meanwhile is kept: the volume wants it.)
        await this.#core.update(set.volumeId, (r) => !r.nodes.includes(added) || r.primary === added || (to === undefined && r.inSync.includes(added)) ? undefined : { ...r, nodes: r.nodes.filter((n) => n !== added), inSync: r.inSync.filter((n) => n !== added) }).catch(() => undefined)
      }
      let listed: unknown
      try {
        listed = await this.#core.update(set.volumeId, (r) => r.nodes.includes(added) ? undefined : { ...r, nodes: [...r.nodes, added] })
      } catch (err) {
        // Perhaps written with the answer lost: a move takes it back; a leave finds it as a surplus copy when called again.
        await giveUp()
        throw err
      }
      if (listed !== undefined) this.#core.host.emit('replication:replica-added', { volumeId: set.volumeId, nodes: [added] })
      let targetLost = false
      try {
        // The node of the new copy (a move's target, or the one a leave placed) that left the
        // cluster, whose lease ran out, or that closed, will not fill its copy: the move or leave
        // ends now rather than at its deadline (30 minutes by default).
        // (The closed marks are read once a second at most: the wait polls ten times as often.)
        let closedRead = -Infinity
        let closedNow = false
        const targetGone = async (): Promise<GalleonError | undefined> => {
          const member = this.#core.cluster.members.find((m) => m.id === added)
          if (member?.healthy === true && performance.now() - closedRead >= 1000) {
            closedRead = performance.now()
            closedNow = (await this.#core.cluster.closedMembers().catch(() => new Set<string>())).has(added)
          }
          const closed = member?.healthy === true && closedNow
          if (member !== undefined && member.healthy && !closed) return undefined
          targetLost = true
          const why = `node ${added} ${member === undefined ? 'left the cluster' : closed ? 'was closed' : 'stopped renewing its lease (it is down or cut off)'} before its copy was in sync`
          if (to !== undefined) return new GalleonError('BACKEND_UNAVAILABLE', `moving volume ${name} to ${added} stopped: ${why}; the volume stays on ${self} (move it again once ${added} is back, or to another node)`)
          return new GalleonError('BACKEND_UNAVAILABLE', `leaving: the new copy of volume ${name} on ${added} was given up: ${why}; node ${self} is still a member and keeps its copies (leave again: another node is chosen, or add one first)`)
        }
        await waitFor(`the new copy of ${name} on ${added} is in sync`, (r) => r.inSync.includes(added) || signal?.aborted === true, targetGone)
      } catch (err) {
        await giveUp(targetLost)
        throw err
      }
      if (signal?.aborted === true) {
        await giveUp()
        throw new GalleonError('CANCELLED', `moving volume ${name} to ${added} was cancelled; its copy there is being removed, the volume stays on ${self}`)
      }
    }
    if (set.primary !== undefined) await set.primary.handOver()
    await waitFor(`${self} is no longer the primary of ${name}`, (r) => r.primary !== self)
    // Two nodes leaving at once may both have counted the same new copy as theirs (the second
    // found it listed already): the one going last would leave the volume a copy short. It does
    // not go; it hands off again, placing a copy of its own or refusing with BUSY.
    let short = false
    await this.#core.update(set.volumeId, (r) => {
      short = false
      if (!r.nodes.includes(self)) return undefined
      const rest = r.nodes.filter((n) => n !== self)
      if (to === undefined && rest.length < Math.min(had, r.spec.replicas)) {
        short = true
        return undefined
      }
      return { ...r, nodes: rest, inSync: r.inSync.filter((n) => n !== self) }
    })
    if (short) {
      // (Its copy may be catching up with a primary that just took over: in sync first, as a hand-off begins.)
      await waitFor(`the copy of ${name} on ${self} is in sync again`, (r) => r.inSync.includes(self) || !r.nodes.includes(self))
      await this.#handOffOne(set, deadline, undefined, undefined, had)
      return
    }
    await this.#core.dropCopy(set.volumeId)
  }
}
