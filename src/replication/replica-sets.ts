// Changes to the replica sets of this node's volumes: creating and deleting them, handing the
// copies off before the node leaves, moving one copy, and reshaping a set for a new storage class.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import type { Coordinator } from '../drivers.js'
import { placeVolume, type PlacementRequest } from '../cluster/placement.js'
import { incompatibility } from '../cluster/protocol.js'
import { settleLostPut, type SettledPut } from '../cluster/lost-write.js'
import { deletedKey, givingUp, parseDeleted, parseRecord, recordKey, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { APPLY_TIMEOUT_MS, type LocalSet, type ManagerCore } from './common.js'
import type { CopyLayout } from './host.js'

/** Coordinator keys of nodes that are leaving (`replication/leaving/<nodeId>`). */
const LEAVING_PREFIX = 'replication/leaving/'
/** How long createVolume waits for new copies to be in sync before it returns a degraded volume. */
const CREATE_SYNC_WAIT_MS = 15_000

/** Nodes handing their copies off before they leave (not eligible for new copies). */
export async function leavingNodes (coordinator: Coordinator): Promise<Set<string>> {
  return new Set((await coordinator.list(LEAVING_PREFIX)).map((entry) => entry.key.slice(LEAVING_PREFIX.length)))
}

/**
 * Takes `gone` (nodes whose copy of a deleted volume is deleted) off the volume's deletion mark
 * (see deletedKey), by compare-and-swap; the mark goes once it lists no node.
 */
export async function clearDeletionMark (coordinator: Coordinator, volumeId: string, gone: readonly string[]): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await coordinator.get(deletedKey(volumeId))
    if (entry === undefined) return
    const left = (parseDeleted(entry.value) ?? []).filter((node) => !gone.includes(node))
    const done = left.length === 0
      ? await coordinator.delete(deletedKey(volumeId), { expectRevision: entry.revision })
      : await coordinator.put(deletedKey(volumeId), JSON.stringify({ nodes: left }), { expectRevision: entry.revision }) !== undefined
    if (done) return
  }
}

/**
 * Adds `nodes` to the volume's deletion mark (see deletedKey), making it if there is none, by
 * compare-and-swap: the nodes an earlier mark names stay on it. Throws when it could not.
 */
async function addToDeletionMark (coordinator: Coordinator, volumeId: string, nodes: readonly string[]): Promise<void> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const entry = await coordinator.get(deletedKey(volumeId))
    const named = entry === undefined ? [] : parseDeleted(entry.value) ?? []
    const value = JSON.stringify({ nodes: [...new Set([...named, ...nodes])] })
    if (await coordinator.put(deletedKey(volumeId), value, { expectRevision: entry?.revision ?? 0 }) !== undefined) return
  }
  throw new GalleonError('BUSY', `the deletion mark of volume ${volumeId} kept changing`)
}

/**
 * A record whose create's answer was lost and that is not settled yet (see #sweepLostCreate): what
 * the create wrote, and the tail of the passes made at it, one at a time (the sweep's, and those of
 * a later register of the volume).
 */
interface LostCreate {
  readonly value: string
  readonly expectRevision: number
  turns: Promise<unknown>
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
  /** Records whose create's answer was lost, by volume id, until settled (see #sweepLostCreate). */
  readonly #lostCreates = new Map<string, LostCreate>()

  constructor (core: ManagerCore) {
    this.#core = core
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
  async register (spec: VolumeSpec, options: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'> = {}, wait = true): Promise<ReplicaSetRecord> {
    const members = this.#core.cluster.members.filter((m) => m.healthy)
    // The creating node holds the primary copy; the others are placed by the class's rules.
    let others: readonly string[] = []
    try {
      if (spec.replicas > 1) others = placeVolume(members.filter((m) => m.id !== this.#core.nodeId), { ...options, replicas: spec.replicas - 1 }).nodes
    } catch (err) {
      // No other node is eligible now: the volume starts degraded, and gets copies as nodes join.
      if ((err as { code?: string })?.code !== 'NO_SPACE') throw err
    }
    const nodes = [this.#core.nodeId, ...others].slice(0, spec.replicas)
    // A record left by a volume that became local again (see dissolve) is replaced, one epoch on:
    // a copy left from that time (its position in an older epoch) is never taken for one in line
    // with the new history, but compared block by block.
    let epoch = 1
    let expectRevision = 0
    // Copies the old record lists as given up whose nodes have not deleted them yet stay listed.
    let droppedNodes: readonly string[] = []
    // A record an earlier register of this volume left with its answer lost (its sweep still
    // runs): removed first, as its sweep would, since this call makes the volume replicated anew.
    // (Left to the sweep alone, a pass of it made while this call holds the volume would find the
    // volume held here, and this call would find the record and fail with VOLUME_EXISTS.)
    const lost = this.#lostCreates.get(spec.id)
    if (lost !== undefined) await this.#sweepTurn(spec.id, lost, true)
    const existing = await this.#core.coordinator.get(recordKey(spec.id))
    if (existing !== undefined) {
      const old = parseRecord(existing.value)
      // This node's own record, with no other copy: a dissolve kept it (or was cut short).
      if (old === undefined || old.primary !== this.#core.nodeId || old.nodes.length !== 1 || old.nodes[0] !== this.#core.nodeId) {
        throw new GalleonError('VOLUME_EXISTS', `the cluster already has a replicated volume with id ${spec.id}`)
      }
      expectRevision = existing.revision
      epoch = Math.max(epoch, old.epoch + 1)
      droppedNodes = (old.droppedNodes ?? []).filter((n) => !nodes.includes(n))
    }
    const record: ReplicaSetRecord = { spec, primary: this.#core.nodeId, epoch, nodes, inSync: [this.#core.nodeId], ...(droppedNodes.length === 0 ? {} : { droppedNodes }), ...(options.strategy === undefined && options.zones === undefined && options.affinity === undefined && options.antiAffinity === undefined && options.nodes === undefined ? {} : { placement: options }) }
    const set = this.#core.setOf(spec.id)
    const value = JSON.stringify(record)
    let entry: { revision: number } | undefined
    try {
      entry = await this.#core.coordinator.put(recordKey(spec.id), value, { expectRevision })
    } catch (err) {
      // Perhaps written with the answer lost, or still in flight: settled (see settleLostPut), so
      // that a record naming this node as the primary of a volume it gave up cannot appear later.
      // A record still absent is written now (the only way to fence off a create that may land).
      let settled: SettledPut | undefined
      try {
        settled = await settleLostPut(this.#core.coordinator, recordKey(spec.id), value, expectRevision, err)
      } catch (unknown) {
        // Not even a read answered: the create may still land, once this call has failed and the
        // local volume is gone. Settled in the background, and a record that landed is removed.
        // (Its primary stops: the watch may have taken up a record that landed, and filled copies.)
        this.#core.retire(set, 'the create of its record failed')
        clearTimeout(set.saveTimer)
        this.#core.sets.delete(spec.id)
        void this.#sweepLostCreate(spec.id, value, expectRevision)
        throw unknown
      }
      // The volume's id is new (a UUID only this node writes): a record there, whatever it holds by
      // now (the leader may have placed a copy since), is the one this create made.
      const ours = settled.written || (expectRevision === 0 && settled.entry !== undefined)
      if (!ours) {
        this.#core.sets.delete(spec.id)
        throw err
      }
      const found = settled.entry
      entry = found
      const landed = found === undefined ? undefined : parseRecord(found.value)
      if (found !== undefined && landed !== undefined && set.revision < found.revision) {
        set.record = landed
        set.revision = found.revision
      }
    }
    if (entry === undefined) {
      this.#core.sets.delete(spec.id)
      throw new GalleonError('VOLUME_EXISTS', `the cluster already has a replicated volume with id ${spec.id}`)
    }
    // Written over the key by compare-and-swap: an earlier lost create can no longer land, and the
    // record there is this one (its sweep, if the pass above did not end it, stops).
    if (lost !== undefined && this.#lostCreates.get(spec.id) === lost) this.#lostCreates.delete(spec.id)
    if (set.revision < entry.revision) {
      set.record = record
      set.revision = entry.revision
    }
    set.knownEpoch = Math.max(set.knownEpoch, epoch)
    this.#core.becomePrimary(set, set.record ?? record)
    // The new copies' resyncs take their cuts through host.exclusive: a caller holding it passes wait = false.
    const deadline = wait ? performance.now() + CREATE_SYNC_WAIT_MS : 0
    while (performance.now() < deadline && !this.#core.closed) {
      const current = set.record
      if (current === undefined || set.primary === undefined) break
      if (current.inSync.length >= current.nodes.length) break
      if (set.primary.allLinksFailedOnce()) break
      await sleep(20)
    }
    return set.record ?? record
  }

  /**
   * Deletes a replicated volume everywhere (called on the primary, before the local copy goes; the
   * caller takes this node off the deletion mark once that copy is gone, see copyGone). Once it
   * resolves the deletion is decided: the record is gone and its mark lists every node the record
   * placed a copy on. When it throws, the volume is kept whole: the record stays, and this node
   * takes the primary role up again.
   */
  async unregister (volumeId: string): Promise<void> {
    const set = this.#core.sets.get(volumeId)
    if (set === undefined) return
    const self = this.#core.nodeId
    const markKey = deletedKey(volumeId)
    const coordinator = this.#core.coordinator
    let nodes: string[] = []
    let marked = false
    let retired = false
    const retire = (): void => {
      if (retired) return
      this.#core.retire(set, 'the volume is being deleted')
      this.#core.sets.delete(volumeId)
      clearTimeout(set.saveTimer)
      retired = true
    }
    // A deletion that did not happen (the record is still there): this node holds its copy again and
    // takes the primary role up under a new epoch, as after a restart, so that it serves I/O and a
    // deleteVolume called again deletes it everywhere; the mark goes (it would name the copies of a
    // volume that exists). With the record's fate unknown, the mark stays: should the record be gone
    // after all, the other copies still find it (and this one goes, see #recordGone).
    const keep = async (err: unknown): Promise<never> => {
      if (retired) {
        if (!this.#core.sets.has(volumeId)) this.#core.sets.set(volumeId, set)
        await this.#core.update(volumeId, (record) => record.primary !== self ? undefined : { ...record, epoch: record.epoch + 1, inSync: [self], handoff: undefined }).catch(() => undefined)
      }
      if (marked && await coordinator.get(recordKey(volumeId)).then((entry) => entry !== undefined, () => false)) await coordinator.delete(markKey).catch(() => false)
      throw err
    }
    for (let attempt = 0; ; attempt++) {
      if (attempt === 20) await keep(new GalleonError('BUSY', `the record of volume ${volumeId} kept changing while it was being deleted; nothing was deleted, try again`))
      const entry = await coordinator.get(recordKey(volumeId)).catch(keep)
      // Gone already: an earlier try of this deletion removed it with the answer lost (its mark
      // lists the nodes), or a coordinator lost it (no mark to go by: only this copy goes).
      if (entry === undefined) break
      // The nodes of the record as it is now (not as this node last saw it: the leader may have
      // placed a copy since), this node too: a crash before its copy is gone finds the mark at the
      // next start. Written before the record goes: a node that misses the repl:delete below (down,
      // cut off) deletes its copy when it comes back or sees the record go, rather than keep it as
      // a volume nobody else has.
      // Nodes whose copies were given up while they were away, and that have not deleted them yet,
      // too: one coming back after the deletion finds no record, and goes by the mark.
      const found = parseRecord(entry.value)
      const listed = [...new Set([...(found?.nodes ?? []), ...(found?.droppedNodes ?? []), self])]
      if (!marked || listed.join() !== nodes.join()) {
        // (Perhaps written with the answer lost: keep removes it.)
        marked = true
        await coordinator.put(markKey, JSON.stringify({ nodes: listed })).catch(keep)
        nodes = listed
      }
      retire()
      let deleted: boolean
      try {
        // At the revision read: a record changed meanwhile is read and marked again.
        deleted = await coordinator.delete(recordKey(volumeId), { expectRevision: entry.revision })
      } catch (err) {
        // Only the answer lost, the record gone: the deletion goes on.
        if (await coordinator.get(recordKey(volumeId)).then((found) => found !== undefined, () => true)) await keep(err)
        deleted = true
      }
      if (deleted) break
    }
    retire()
    const others = nodes.filter((n) => n !== self)
    const answered = await Promise.all(others.map(async (node) => {
      return await this.#core.cluster.request(node, { kind: 'repl:delete', header: { volumeId } }, { timeoutMs: APPLY_TIMEOUT_MS }).then(() => node, () => undefined)
    }))
    const gone = answered.filter((node): node is string => node !== undefined)
    if (gone.length > 0) await clearDeletionMark(coordinator, volumeId, gone).catch(() => {})
  }

  /**
   * Makes a replicated volume whose only copy is this node's (and which wants one) a local volume
   * again: its primary stops, the caller clears the local record's replication (`local`), the
   * nodes that held copies of it (`formerNodes`: a move that was given up) are told to delete
   * theirs, and once all did, the cluster's record goes. Returns false, changing nothing, when the record keeps
   * other copies or another primary.
   */
  async dissolve (volumeId: string, formerNodes: readonly string[], local: () => Promise<void>): Promise<boolean> {
    const entry = await this.#core.coordinator.get(recordKey(volumeId))
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (entry === undefined || record === undefined) return false
    if (record.primary !== this.#core.nodeId || record.spec.replicas !== 1 || record.nodes.length !== 1 || record.nodes[0] !== this.#core.nodeId) return false
    const set = this.#core.sets.get(volumeId)
    if (set !== undefined) {
      this.#core.retire(set, 'the volume is local again')
      this.#core.sets.delete(volumeId)
      clearTimeout(set.saveTimer)
    }
    // The local record first: a crash after it leaves at worst a record nobody uses in the
    // coordinator (register replaces it), never a local copy that waits for a record that is gone.
    await local()
    // The record goes only once every node that held a copy deleted it; otherwise it stays (this
    // node's alone), and a later register replaces it one epoch on (see there).
    const deleted = await Promise.all(formerNodes.filter((n) => n !== this.#core.nodeId).map(async (node) => {
      return await this.#core.cluster.request(node, { kind: 'repl:delete', header: { volumeId } }, { timeoutMs: APPLY_TIMEOUT_MS }).then(() => true, () => false)
    }))
    if (deleted.every(Boolean)) await this.#core.coordinator.delete(recordKey(volumeId), { expectRevision: entry.revision })
    return true
  }

  /**
   * Before this node leaves the cluster: every copy it holds is handed off. Where its copy is in
   * sync, a copy on another node is added first and waited for (the volume keeps the redundancy it
   * had); where it is the primary, the role goes to an in-sync copy; then it leaves the replica set
   * and the local copy is deleted. BUSY (nothing more is done) when a volume cannot be handed off.
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
    } finally {
      this.#handingOff = false
      this.#handOffCancelled = undefined
      await this.#core.coordinator.delete(mark).catch(() => {})
    }
  }

  /**
   * After register() failed with the outcome of its record's create unknown (the coordinator did
   * not answer even a read): settles it once the coordinator answers (see settleLostPut; an absent
   * record is fenced by writing it), and removes the record (this node holds no replicated copy
   * of the volume: the failed createVolume deleted it, or the failed conversion made it local
   * again). Gives up when the manager closes. A create still in flight after that (absent keys
   * cannot be fenced for good) would leave its record behind.
   * A register of the volume made meanwhile (migrateVolume again) removes the record itself first
   * (see register), so a pass that finds the volume held here (such a call in flight, or rolling
   * back) only looks again later: it never takes the volume for one that keeps the record.
   */
  async #sweepLostCreate (volumeId: string, value: string, expectRevision: number): Promise<void> {
    const lost: LostCreate = { value, expectRevision, turns: Promise.resolve() }
    this.#lostCreates.set(volumeId, lost)
    for (let pause = 100; !this.#core.closed && this.#lostCreates.get(volumeId) === lost; pause = Math.min(pause * 2, 5000)) {
      await sleep(pause)
      await this.#sweepTurn(volumeId, lost, false)
    }
    if (this.#lostCreates.get(volumeId) === lost) this.#lostCreates.delete(volumeId)
  }

  /** One pass of a lost create's sweep, after the passes before it (see #sweepPass). */
  async #sweepTurn (volumeId: string, lost: LostCreate, forRegister: boolean): Promise<void> {
    const pass = async (): Promise<void> => {
      if (this.#lostCreates.get(volumeId) !== lost) return
      if (await this.#sweepPass(volumeId, lost, forRegister).catch(() => false)) this.#lostCreates.delete(volumeId)
    }
    const turn = lost.turns.then(pass, pass)
    lost.turns = turn
    await turn
  }

  /**
   * Settles a lost create's record and removes it; true once done (or nothing is left to do).
   * `forRegister`: a register of the volume waits for it to go, and the volume held here is that
   * call's; otherwise a volume held here is left alone for now (false: looked at again later).
   */
  async #sweepPass (volumeId: string, lost: LostCreate, forRegister: boolean): Promise<boolean> {
    const key = recordKey(volumeId)
    let settled: SettledPut
    try {
      settled = await settleLostPut(this.#core.coordinator, key, lost.value, lost.expectRevision, new Error('unknown'))
    } catch {
      return false
    }
    const entry = settled.entry
    if (entry === undefined || (!settled.written && lost.expectRevision !== 0)) return true
    // A replicated copy here that is not a register's waiting for this pass: a call in flight, or
    // one rolling back (a failed migrateVolume to a replicated class or another node), which a
    // later pass finds done.
    if (!forRegister && (this.#core.sets.has(volumeId) || this.#core.host.localCopies().some((copy) => copy.id === volumeId))) return false
    // Copies the record placed on other nodes (made meanwhile, see register) go with it: a
    // deletion mark names their nodes, as a deletion's does (this node's volume is not one).
    const others = [...new Set([...(parseRecord(entry.value)?.nodes ?? []), ...(parseRecord(entry.value)?.droppedNodes ?? [])])].filter((n) => n !== this.#core.nodeId)
    if (others.length > 0 && !await addToDeletionMark(this.#core.coordinator, volumeId, others).then(() => true, () => false)) return false
    // Changed since it was read (false), or the answer lost: read again next time round.
    return await this.#core.coordinator.delete(key, { expectRevision: entry.revision }).catch(() => false)
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
  async reshape (volumeId: string, change: { storageClass: string, replicas: number, pool?: string, keep?: string }, placement: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'>): Promise<ReplicaSetRecord> {
    let before: ReplicaSetRecord | undefined
    const members = this.#core.cluster.members.filter((m) => m.healthy)
    const leaving = await leavingNodes(this.#core.coordinator)
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
          const chosen = placeVolume(members.filter((m) => !leaving.has(m.id)), { ...placement, replicas: change.replicas, current: nodes, preferredPrimary: r.primary }).nodes
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
      return { ...rest, spec: { ...spec, storageClass: change.storageClass, replicas: change.replicas, ...(change.pool === undefined ? {} : { pool: change.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(hasPlacement ? { placement } : {}), ...givingUp(r, r.nodes.filter((n) => !nodes.includes(n))) }
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
      const { pool: _pool, ...spec } = r.spec
      const nodes = r.nodes.filter((n) => n === r.primary || before.nodes.includes(n))
      return { ...rest, spec: { ...spec, storageClass: before.spec.storageClass, replicas: before.spec.replicas, ...(before.spec.pool === undefined ? {} : { pool: before.spec.pool }) }, nodes, inSync: r.inSync.filter((n) => nodes.includes(n)), ...(before.placement === undefined ? {} : { placement: before.placement }) }
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

  async #handOffOne (set: LocalSet, deadline: number, to?: string, signal?: AbortSignal): Promise<void> {
    const self = this.#core.nodeId
    const current = async (): Promise<ReplicaSetRecord | undefined> => {
      const entry = await this.#core.coordinator.get(recordKey(set.volumeId))
      return entry === undefined ? undefined : parseRecord(entry.value)
    }
    const waitFor = async (what: string, check: (record: ReplicaSetRecord) => boolean): Promise<void> => {
      for (;;) {
        const record = await current()
        if (record === undefined || check(record)) return
        // (A move has its own signal; a leave is stopped by cancelHandOff.)
        if (to === undefined && this.#handOffCancelled !== undefined) throw this.#handOffCancelled
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
    if (to !== undefined && !record.inSync.includes(self)) throw new GalleonError('BUSY', `the copy of volume ${name} on ${self} is not in sync; move the copy of an in-sync node (${record.inSync.join(', ')})`)
    if (record.inSync.includes(self)) {
      const others = record.nodes.filter((n) => n !== self)
      const leaving = await leavingNodes(this.#core.coordinator)
      const members = (await this.#core.coordinator.members()).filter((m) => m.healthy && m.id !== self && !leaving.has(m.id))
      const added = to ?? this.#surplusCopy(record, others, leaving, members.map((m) => m.id)) ?? placeVolume(members, { ...(record.placement ?? {}), replicas: record.nodes.length, current: others, ...(others[0] === undefined ? {} : { preferredPrimary: others[0] }) }).nodes.find((n) => !record?.nodes.includes(n))
      if (added === undefined) {
        throw new GalleonError('BUSY', `volume ${name} would lose its in-sync copy on ${self}: no other healthy node can take a copy (copies on ${record.nodes.join(', ')}); add a node first, or leave with force`)
      }
      // A move that is cancelled or fails before the primary role moved gives the new copy up
      // (its node deletes it), and everything stays as it was.
      const giveUp = async (): Promise<void> => {
        if (to === undefined) return
        await this.#core.update(set.volumeId, (r) => !r.nodes.includes(added) || r.primary === added ? undefined : { ...r, nodes: r.nodes.filter((n) => n !== added), inSync: r.inSync.filter((n) => n !== added) }).catch(() => undefined)
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
      try {
        await waitFor(`the new copy of ${name} on ${added} is in sync`, (r) => r.inSync.includes(added) || signal?.aborted === true)
      } catch (err) {
        await giveUp()
        throw err
      }
      if (signal?.aborted === true) {
        await giveUp()
        throw new GalleonError('CANCELLED', `moving volume ${name} to ${added} was cancelled; its copy there is being removed, the volume stays on ${self}`)
      }
    }
    if (set.primary !== undefined) await set.primary.handOver()
    await waitFor(`${self} is no longer the primary of ${name}`, (r) => r.primary !== self)
    await this.#core.update(set.volumeId, (r) => !r.nodes.includes(self) ? undefined : { ...r, nodes: r.nodes.filter((n) => n !== self), inSync: r.inSync.filter((n) => n !== self) })
    await this.#core.dropCopy(set.volumeId)
  }
}
