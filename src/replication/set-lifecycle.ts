// Creating and deleting replica sets: recording a new volume's set and placing its copies,
// deleting a volume everywhere, making a one-copy volume local again, and removing the record of
// a create whose answer was lost.

import { setTimeout as sleep } from 'node:timers/promises'
import { GalleonError } from '../errors.js'
import { placeVolume, type PlacementRequest } from '../cluster/placement.js'
import { takingNoCopies } from './replica-sets.js'
import { settleLostPut, type SettledPut } from '../cluster/lost-write.js'
import { RECORD_PREFIX, copiesPerNode, deletedKey, parseRecord, recordKey, type ReplicaSetRecord, type VolumeSpec } from './records.js'
import { APPLY_TIMEOUT_MS, type ManagerCore } from './common.js'
import { addToDeletionMark, clearDeletionMark } from './cleanup.js'

/** How long createVolume waits for new copies to be in sync before it returns a degraded volume. */
const CREATE_SYNC_WAIT_MS = 15_000

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

/** The creations and deletions of replica sets a ReplicaSetChanges makes (see its register, unregister, dissolve). */
export class ReplicaSetLifecycle {
  readonly #core: ManagerCore
  /** Records whose create's answer was lost, by volume id, until settled (see #sweepLostCreate). */
  readonly #lostCreates = new Map<string, LostCreate>()

  constructor (core: ManagerCore) {
    this.#core = core
  }

  /** See ReplicaSetChanges.register. */
  async register (spec: VolumeSpec, options: Omit<PlacementRequest, 'replicas' | 'preferredPrimary' | 'current'> = {}, wait = true): Promise<ReplicaSetRecord> {
    const members = this.#core.cluster.members.filter((m) => m.healthy)
    // The creating node holds the primary copy; the others are placed by the class's rules.
    let others: readonly string[] = []
    try {
      if (spec.replicas > 1) {
        const load = copiesPerNode(await this.#core.coordinator.list(RECORD_PREFIX))
        // Not on a node that is leaving (its copy would go with it, see ReplicaSetChanges.handOff)
        // or that closed (it would never fill the copy): see takingNoCopies.
        const excluded = await takingNoCopies(this.#core)
        others = placeVolume(members.filter((m) => m.id !== this.#core.nodeId && !excluded.has(m.id)), { ...options, replicas: spec.replicas - 1, load }).nodes
      }
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

  /** See ReplicaSetChanges.unregister. */
  async unregister (volumeId: string): Promise<void> {
    const set = this.#core.sets.get(volumeId)
    if (set === undefined) return
    const self = this.#core.nodeId
    const markKey = deletedKey(volumeId)
    const coordinator = this.#core.coordinator
    let nodes: string[] = []
    let marked = false
    let markedRevision = 0
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
      // The mark says which revision of the record it goes with: one left while the record is
      // there at another (this node killed before the delete below, the record changed since) is
      // stale, and goes (see dropStaleDeletionMarks); so each try that reads a new revision marks again.
      if (!marked || listed.join() !== nodes.join() || markedRevision !== entry.revision) {
        // (Perhaps written with the answer lost: keep removes it.)
        marked = true
        await coordinator.put(markKey, JSON.stringify({ nodes: listed, revision: entry.revision })).catch(keep)
        nodes = listed
        markedRevision = entry.revision
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

  /** See ReplicaSetChanges.dissolve. */
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
}
