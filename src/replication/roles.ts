// The role a volume's record gives this node, taken up: primary (under the record's epoch), replica,
// or none (the copy was replaced, or the volume deleted: the copy goes), and the steps between them.

import type { CoordinatorEvent } from '../drivers.js'
import { RECORD_PREFIX, deletedKey, offDropped, parseDeleted, parseRecord, recordKey, type ReplicaSetRecord } from './records.js'
import type { LocalSet, ManagerCore } from './common.js'
import { Primary } from './primary.js'
import type { ReplicationManager } from './manager.js'
import type { ReplicaSetChanges } from './replica-sets.js'
import { clearDeletionMark } from './cleanup.js'

/** The roles of this node's copies: what a ReplicationManager does when a record is read or watched. */
export class Roles {
  readonly #core: ManagerCore
  /** The manager the primaries started here belong to. */
  readonly #manager: ReplicationManager
  /** Whose hand-offs and moves delete their copies themselves. */
  readonly #changes: ReplicaSetChanges

  constructor (core: ManagerCore, manager: ReplicationManager, changes: ReplicaSetChanges) {
    this.#core = core
    this.#manager = manager
    this.#changes = changes
  }

  /** A watched record changed (see ReplicationManager.start): the role it gives, or its deletion, is taken up. */
  watched (event: CoordinatorEvent): void {
    const volumeId = event.key.slice(RECORD_PREFIX.length)
    const set = this.#core.sets.get(volumeId)
    if (set === undefined) return
    if (event.type === 'delete') { this.recordGone(set); return }
    const record = event.entry === undefined ? undefined : parseRecord(event.entry.value)
    if (record !== undefined && event.entry !== undefined) this.adopt(set, record, event.entry.revision)
  }

  /** At start: reads the record of a local copy and takes up the role it gives (see ReplicationManager.start). */
  async takeUpAtStart (set: LocalSet): Promise<void> {
    const entry = await this.#core.coordinator.get(recordKey(set.volumeId))
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record === undefined || entry === undefined) {
      // Deleted while this node was away (its deletion mark says so): the copy goes too.
      if (await this.dropIfDeleted(set)) return
      set.unrecorded = set.record === undefined
      this.#core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.#core.nodeId, code: 'VOLUME_NOT_FOUND', message: `the cluster has no record of this replicated volume, and no mark of its deletion that names node ${this.#core.nodeId}; the local copy is kept but serves no I/O (deleteVolume(${JSON.stringify(set.volumeId)}, { force: true }) on this node deletes it)` })
      return
    }
    // An expansion recorded in the cluster that this copy never got (the node stopped between
    // the two): it grows now, before it serves or receives anything.
    if (record.spec.sizeBytes > (this.#core.host.blocks(set.volumeId)?.sizeBytes ?? Infinity)) await this.#core.host.applyExpand(set.volumeId, record.spec.sizeBytes)
    if (record.primary === this.#core.nodeId) {
      // This node was primary before it stopped: it takes the role again under a new epoch, so
      // that anything its earlier incarnation sent is fenced off.
      await this.reclaim(set)
    } else if (!record.nodes.includes(this.#core.nodeId)) {
      // Replaced while this node was away: another node holds the copy now.
      await this.dropStale(set, record)
    } else {
      this.adopt(set, record, entry.revision)
    }
  }

  /** A record was read or watched: take up the role it gives this node. */
  adopt (set: LocalSet, record: ReplicaSetRecord, revision: number): void {
    if (revision < set.revision) return
    set.record = record
    set.revision = revision
    set.unrecorded = false
    if (!record.nodes.includes(this.#core.nodeId) && record.primary !== this.#core.nodeId && !this.#changes.handingOff && !this.#changes.isMoving(set.volumeId) && !this.#core.closed) {
      void this.dropStale(set, record)
      return
    }
    // Only a copy the record keeps takes up its settings (a dropped one would start converting).
    if (record.nodes.includes(this.#core.nodeId) || record.primary === this.#core.nodeId) this.#core.host.applySpec(set.volumeId, record.spec)
    if (record.epoch > set.knownEpoch) set.knownEpoch = record.epoch
    const mine = record.primary === this.#core.nodeId
    if (set.primary !== undefined) {
      if (!mine || record.epoch !== set.primary.epoch) {
        this.stepDown(set, `node ${record.primary} is primary now (epoch ${record.epoch})`)
        return
      }
      set.primary.recordChanged(record)
      return
    }
    if (mine && !this.#core.closed) {
      if (record.epoch < set.knownEpoch) return
      this.becomePrimary(set, record)
    }
  }

  /** Deletes the copy of a volume whose record no longer lists this node (it was replaced). */
  async dropStale (set: LocalSet, record: ReplicaSetRecord): Promise<void> {
    if (this.#core.sets.get(set.volumeId) !== set) return
    this.stepDown(set, 'its copy was replaced on another node')
    try {
      await this.#core.dropCopy(set.volumeId)
      this.#core.host.emit('replication:copy-dropped', { volumeId: set.volumeId, nodeId: this.#core.nodeId, nodes: [...record.nodes] })
    } catch (err) {
      this.#core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.#core.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `dropping the copy that was replaced on ${record.nodes.join(', ')}: ${(err as Error)?.message ?? String(err)}` })
      return
    }
    // The copy is gone: off the record's list of given-up copies (a deletion no longer needs to
    // name this node). Best effort: a deletion's mark naming it meanwhile costs only a key.
    try {
      await this.#core.update(set.volumeId, (current) => {
        if (current.nodes.includes(this.#core.nodeId) || current.droppedNodes?.includes(this.#core.nodeId) !== true) return undefined
        return offDropped(current, this.#core.nodeId)
      })
    } catch (err) {
      this.#core.host.emit('replication:error', { volumeId: set.volumeId, nodeId: this.#core.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `taking this node off the given-up copies of the volume's record (its copy is deleted): ${(err as Error)?.message ?? String(err)}` })
    }
  }

  /** The volume's record was deleted: the primary stops, and the copy goes if the deletion mark names this node. */
  recordGone (set: LocalSet): void {
    this.retire(set, 'the replica-set record was deleted')
    set.record = undefined
    // The volume was deleted while this copy was cut off from its primary (the repl:delete never
    // came): it goes now rather than stay a volume nobody else has.
    if (!this.#core.closed) void this.dropIfDeleted(set)
  }

  /**
   * Deletes the copy of a volume whose record is gone if the volume's deletion mark (see
   * deletedKey) names this node; true if it did. A record missing without such a mark is left
   * alone: a wiped or replaced coordinator must not make every node delete its data, and a mark
   * names exactly the nodes the record placed copies on when the volume was deleted.
   */
  async dropIfDeleted (set: LocalSet): Promise<boolean> {
    const volumeId = set.volumeId
    let mark: { value: string } | undefined
    try {
      mark = await this.#core.coordinator.get(deletedKey(volumeId))
    } catch (err) {
      this.#core.host.emit('replication:error', { volumeId, nodeId: this.#core.nodeId, code: (err as { code?: string })?.code ?? 'BACKEND_UNAVAILABLE', message: `the record of this replicated volume is gone, and its deletion mark could not be read (the copy is kept; the next start looks again): ${(err as Error)?.message ?? String(err)}` })
      return false
    }
    if (mark === undefined || !(parseDeleted(mark.value) ?? []).includes(this.#core.nodeId)) {
      // No deletion names this node: a copy the cluster has no record of (see LocalSet.unrecorded).
      if (this.#core.sets.get(volumeId) === set && set.record === undefined) set.unrecorded = true
      return false
    }
    if (this.#core.sets.get(volumeId) !== set || set.record !== undefined) return false
    try {
      await this.#core.dropCopy(volumeId)
    } catch (err) {
      this.#core.host.emit('replication:error', { volumeId, nodeId: this.#core.nodeId, code: (err as { code?: string })?.code ?? 'IO_ERROR', message: `deleting the copy of a volume that was deleted while this node was away (the next start tries again): ${(err as Error)?.message ?? String(err)}` })
      return false
    }
    await clearDeletionMark(this.#core.coordinator, volumeId, [this.#core.nodeId]).catch(() => {})
    return true
  }

  /** Starts this node's primary of the volume under `record` (unless one runs, or the local copy is gone). */
  becomePrimary (set: LocalSet, record: ReplicaSetRecord): void {
    const blocks = this.#core.host.blocks(set.volumeId)
    if (blocks === undefined || set.primary !== undefined) return
    const primary = new Primary(this.#manager, set, record, blocks)
    set.primary = primary
    blocks.replicator = primary
    // Our copy now leads; its place in any earlier epoch's stream means nothing any more.
    set.position = { epoch: 0, seq: 0 }
    set.durable = set.position
    void this.#core.host.savePosition(set.volumeId, set.position).catch(() => {})
    this.#core.host.emit('replication:primary', { volumeId: set.volumeId, nodeId: this.#core.nodeId, epoch: record.epoch })
    primary.start()
  }

  /** Stops this node's primary of the volume (if any) and says why (replication:demoted). */
  stepDown (set: LocalSet, why: string): void {
    if (set.primary === undefined) return
    this.retire(set, `this node is no longer the primary: ${why}`)
    this.#core.host.emit('replication:demoted', { volumeId: set.volumeId, nodeId: this.#core.nodeId, reason: why })
  }

  /** Stops this node's primary of a volume (if any) and unhooks it from the engine. */
  retire (set: LocalSet, why: string): void {
    const primary = set.primary
    if (primary === undefined) return
    set.primary = undefined
    if (primary.blocks.replicator === primary) primary.blocks.replicator = undefined
    primary.stop(why)
  }

  /** After a restart as the recorded primary: raise the epoch and lead again. */
  async reclaim (set: LocalSet): Promise<void> {
    const updated = await this.#core.update(set.volumeId, (record) => record.primary !== this.#core.nodeId ? undefined : { ...record, epoch: record.epoch + 1, inSync: [this.#core.nodeId], handoff: undefined })
    if (updated === undefined) return
    this.adopt(set, updated.record, updated.revision)
  }

  /** Reads the volume's record again and takes up the role it gives. */
  async refresh (set: LocalSet): Promise<void> {
    const entry = await this.#core.coordinator.get(recordKey(set.volumeId)).catch(() => undefined)
    const record = entry === undefined ? undefined : parseRecord(entry.value)
    if (record !== undefined && entry !== undefined) this.adopt(set, record, entry.revision)
  }
}
