// Snapshots and clones of the facade: taking, deleting and reverting to snapshots, cloning volumes
// from them, and keeping a snapshot's blocks alive while it is read.

import { randomUUID } from 'node:crypto'
import { GalleonError, errorCode } from '../errors.js'
import type { VolumeBlocks, View } from '../engine/engine.js'
import type { VolumeReplicator } from '../engine/replicator.js'
import { mountControl } from '../mount/mount-manager.js'
import { VolumeState, type Snapshot, type Volume } from '../types.js'
import type { SnapshotRecord, VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { checkLabels, names, toVolume, viewOf } from './records.js'
import { readSource, type CloneSource, type VolumeRef } from './refs.js'
import { callIn, hereOrNext, lostAnswer, newCall, primaryCall, withToken, type ForwardedCall } from './forwarded-calls.js'
import { outcomeUnknown } from '../replication/common.js'

/** Where a snapshot call's change took its place in a replicated volume's stream: the primary that recorded it, and its number there. */
interface RecordedChange { made?: boolean, by?: VolumeReplicator, seq?: number }

/** Notes that the change was made, and where it was recorded (`by` undefined: nowhere, the volume had no primary here). */
function noteChange (change: RecordedChange | undefined, by: VolumeReplicator | undefined, seq: number | undefined): void {
  if (change === undefined) return
  change.made = true
  if (by === undefined || seq === undefined) return
  change.by = by
  change.seq = Math.max(seq, change.seq ?? 0)
}

/** Snapshot and clone operations on the instance's volumes (GalleonFS checks the caller first). */
export class Snapshots {
  readonly #host: FacadeHost
  /** Reads in flight per snapshot id; deleting a snapshot waits for them. */
  readonly #snapshotReaders = new Map<string, { count: number, drained?: () => void }>()
  readonly #snapshotsGoing = new Set<string>()
  /** Whether replication is synchronous (ClusterMembership.replicationMode), read at each call. */
  readonly #synchronous: () => boolean

  constructor (host: FacadeHost, synchronous: () => boolean = () => true) {
    this.#host = host
    this.#synchronous = synchronous
  }

  /**
   * Synchronous replication: a snapshot call done on a replicated volume's primary resolves once
   * every in-sync copy has applied it (as a flush waits for them), so that no failover can undo a
   * call that resolved. Copies out of sync are not waited for, nor anything on a volume without an
   * in-sync copy; a call whose copies did not confirm it fails, saying it may not be kept.
   */
  async #confirmed (record: VolumeRecord, done: string, change: RecordedChange): Promise<void> {
    if (change.made !== true || !this.#synchronous()) return
    if (change.by === undefined || change.seq === undefined) {
      // Made here after this node stopped being the primary of a volume that is still replicated:
      // the new primary does not have it, and its next resync of this copy undoes it.
      const current = this.#host.catalog.volumeById(record.id)
      if (current?.replication === undefined || this.#host.replication === undefined) return
      throw new GalleonError('NOT_LEADER', `${done} on node ${this.#host.cluster?.nodeId ?? ''} alone, which stopped being the primary of volume ${record.name} while the call waited: the volume's primary does not have it, and the next resync undoes it here. Make the call again: it goes to the new primary`)
    }
    try {
      await this.#host.replication?.replicatedChange(change.by, change.seq)
    } catch (err) {
      // The replicator's words are a write's ("the write is stored on this node..."): said for this call.
      const stopped = (change.by as { stopped?: unknown }).stopped === true
      const why = stopped ? 'this node stopped being the volume\'s primary before its in-sync copies confirmed it' : 'its in-sync copies did not confirm it in time (a copy neither acknowledged nor could be taken out of the in-sync list)'
      throw new GalleonError(err instanceof GalleonError ? err.code : 'WRITE_CONCERN_UNSATISFIED', `${done} on node ${this.#host.cluster?.nodeId ?? ''}, but ${why}: a failover may undo it. listSnapshots(${JSON.stringify(record.name)}) on the volume's primary shows whether it was kept, and the call can be made again`)
    }
  }

  /**
   * Notes in `change` the end of the volume's change stream on this node (its primary) now: a call
   * answered from what an earlier attempt of it did waits, as that attempt would have, until the
   * in-sync copies have it (see #confirmed).
   */
  #soFar (record: VolumeRecord, change: RecordedChange): void {
    const replicator = this.#host.volumeBlocks(this.#host.catalog.resolve(record.id)).replicator
    noteChange(change, replicator, replicator === undefined ? undefined : this.#host.replication?.recordedSeq(replicator))
  }

  /**
   * The fields of a control call sent to a replicated volume's primary: the token of the call this
   * node serves for another (still a repeat if it was one), or of a new one (see forwarded-calls.ts).
   */
  #callFields (call: ForwardedCall | undefined): { token: string, repeat?: true } {
    const sent = call ?? newCall()
    return { token: sent.token, ...(sent.repeat ? { repeat: true as const } : {}) }
  }

  /**
   * The call a snapshot call made here on a replicated volume's primary is (undefined for a call
   * served for another node, `call`, or on a volume that is not replicated): its token goes with
   * the change to the copies, and with the call to the next primary when this node loses the role
   * under it (see hereOrNext).
   */
  #primaryCall (record: VolumeRecord, call: ForwardedCall | undefined): ForwardedCall | undefined {
    return call === undefined && record.replication !== undefined && this.#host.replication !== undefined ? primaryCall() : undefined
  }

  /** The work of GalleonFS.createSnapshot, once the caller is checked. */
  async createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> {
    const target = this.#host.catalog.resolve(vol)
    // Served for another node: the call's token is kept with the snapshot, and a repeat finds it.
    const call = callIn(vol)
    if (this.#host.replication?.forwards(target.id) === true) return await this.#forwardCreate(target, name, call)
    const local = this.#primaryCall(target, call)
    const taken = await hereOrNext(this.#host, target.id, local, async () => await this.#createHere(vol, target, name, call ?? local), async (repeat) => await this.#forwardCreate(target, name, repeat))
    // Nothing was done here: the new primary takes it (outside the admin queue, which the
    // snapshot's arrival in this copy's stream may need).
    return taken ?? await this.#forwardCreate(target, name, call)
  }

  /**
   * createSnapshot on this node, the volume's primary (`call`: the one served, or made here, whose
   * token goes with the snapshot); undefined when nothing was done because the role moved while
   * the call waited for its turn.
   */
  async #createHere (vol: VolumeRef, target: VolumeRecord, name: string, call: ForwardedCall | undefined): Promise<Snapshot | undefined> {
    const change: RecordedChange = {}
    let repeated = false
    const taken = await this.#host.adminAfterMigration(target.id, async () => {
      const record = this.#host.catalog.resolve(vol)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted; no snapshot was taken`)
      // The primary role may have moved while the call waited for its turn: a copy that is not
      // the primary must not take one of its own (it would be on this node only).
      if (this.#host.replication?.forwards(record.id) === true) return undefined
      // An earlier attempt of the call took it (here, or on the primary before this one, whose
      // stream brought it with its token): that snapshot is the answer.
      const earlier = call === undefined ? undefined : this.#host.catalog.snapshots(record.id).find((snapshot) => snapshot.token === call.token)
      if (earlier !== undefined) {
        repeated = true
        this.#soFar(record, change)
        return this.toSnapshot(earlier)
      }
      if (this.#host.catalog.snapshots(record.id).some((snapshot) => snapshot.name === name)) {
        throw new GalleonError('SNAPSHOT_EXISTS', `volume ${record.name} already has a snapshot named ${JSON.stringify(name)}; pick another name or delete that snapshot first`)
      }
      const snapshot = this.toSnapshot(await this.takeSnapshot(record, name, false, undefined, undefined, change, call?.token))
      this.#host.emit('snapshot:created', snapshot)
      return snapshot
    })
    if (taken !== undefined) await this.#confirmed(target, `snapshot ${JSON.stringify(name)} of volume ${target.name} was taken${repeated ? ' (by an earlier attempt of the call)' : ''}`, change)
    return taken
  }

  /** createSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardCreate (target: VolumeRecord, name: string, call: ForwardedCall | undefined): Promise<Snapshot> {
    try {
      return (await this.#host.forward(target, { op: 'createSnapshot', snapshotName: name, ...this.#callFields(call) })).header.snapshot as Snapshot
    } catch (err) {
      throw lostAnswer(err, `snapshot ${JSON.stringify(name)} of volume ${target.name} may or may not have been taken: listSnapshots(${JSON.stringify(target.name)}) shows whether it exists once the volume has a primary again`, call)
    }
  }

  /** The work of GalleonFS.deleteSnapshot, once the caller is checked. */
  async deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean }): Promise<void> {
    const owner = this.#host.catalog.resolve(vol)
    const call = callIn(vol)
    if (this.#host.replication?.forwards(owner.id) === true) {
      await this.#forwardDelete(owner, this.#primarySnapshotRef(owner, snapshot), options, call)
      return
    }
    let target: SnapshotRecord
    try {
      target = this.#host.catalog.resolveSnapshot(owner, snapshot)
    } catch (err) {
      // A repeat of a call whose earlier attempt may have deleted it: gone is what that attempt did.
      if (await this.#deletedBefore(owner, call, err)) return
      throw err
    }
    const mounted = (): string[] => mountControl(this.#host.mounts).snapshotMounts(target.id).map((m) => m.path)
    if (mounted().length > 0 && options?.force !== true) throw new GalleonError('BUSY', `snapshot ${target.name} is mounted (${mounted().join(', ')}); unmount it first, or pass { force: true } to unmount and delete it`)
    const refuseReaders = (): void => {
      const files = mountControl(this.#host.mounts).snapshotFiles({ snapshotId: target.id })
      if (files > 0 && options?.force !== true) throw new GalleonError('BUSY', `snapshot ${target.name} has ${files} reader(s): files open on it (openVolumeFile) or NBD clients of its export; close or disconnect them first, or pass { force: true } to delete it under them (their next read fails)`)
    }
    refuseReaders()
    // No new mount may attach to it from here; one being set up is waited for and looked at again.
    this.#host.goingAway.add(target.id)
    try {
      await mountControl(this.#host.mounts).settled()
      if (mounted().length > 0 && options?.force !== true) throw new GalleonError('BUSY', `snapshot ${target.name} was mounted meanwhile (${mounted().join(', ')}); unmount it, or pass { force: true }`)
      refuseReaders()
      await mountControl(this.#host.mounts).release(target.volumeId, target.id)
      const here = async (): Promise<boolean> => {
        const change: RecordedChange = {}
        let deleted: boolean
        try {
          deleted = await this.#deleteSnapshotNow(vol, snapshot, options, change)
        } catch (err) {
          // Deleted meanwhile by the earlier attempt of this call (still running when it was sent again).
          if (await this.#deletedBefore(owner, call, err)) return true
          throw err
        }
        if (deleted) await this.#confirmed(owner, `snapshot ${target.name} of volume ${owner.name} was deleted`, change)
        return deleted
      }
      // By id at the next primary: a snapshot deleted here may be gone from this copy already.
      const deleted = await hereOrNext(this.#host, owner.id, this.#primaryCall(owner, call), here, async (repeat) => { await this.#forwardDelete(owner, target.id, options, repeat); return true })
      // The primary role moved while the call waited for its turn: the new primary deletes it
      // (and this copy follows through its stream).
      if (!deleted) await this.#forwardDelete(owner, target.id, options, call)
    } finally {
      this.#host.goingAway.delete(target.id)
    }
  }

  /** deleteSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardDelete (owner: VolumeRecord, snapshot: string, options: { force?: boolean }, call: ForwardedCall | undefined): Promise<void> {
    try {
      await this.#host.forward(owner, { op: 'deleteSnapshot', snapshot, force: options?.force === true, ...this.#callFields(call) })
    } catch (err) {
      // A primary of an earlier version knows no repeat: its "not found" is that attempt's deletion
      // (snapshot ids are never used again).
      if ((outcomeUnknown(err) !== undefined || call?.repeat === true) && errorCode(err) === 'SNAPSHOT_NOT_FOUND') return
      throw lostAnswer(err, `snapshot ${snapshot} of volume ${owner.name} may or may not have been deleted: listSnapshots(${JSON.stringify(owner.name)}) shows whether it is still there once the volume has a primary again`, call)
    }
  }

  /**
   * Whether `err`, a snapshot not found on this node (the volume's primary) for a repeat of a
   * forwarded deletion, is what an earlier attempt of the call did: snapshots are named by an id
   * never used again, so one that is gone was deleted (by that attempt, or by a call that raced it;
   * either way it is gone, as the call asked). The answer then waits, as that attempt would have,
   * until the in-sync copies have the deletion.
   */
  async #deletedBefore (owner: VolumeRecord, call: ForwardedCall | undefined, err: unknown): Promise<boolean> {
    if (call?.repeat !== true || errorCode(err) !== 'SNAPSHOT_NOT_FOUND') return false
    const change: RecordedChange = {}
    this.#soFar(owner, change)
    await this.#confirmed(owner, `the snapshot of volume ${owner.name} was deleted (by an earlier attempt of the call)`, change)
    return true
  }

  /** Deletes the snapshot here, in the admin queue; false (nothing done) when this node stopped being the volume's primary meanwhile. */
  async #deleteSnapshotNow (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean }, change: RecordedChange): Promise<boolean> {
    return await this.#host.adminAfterMigration(this.#host.catalog.resolve(vol).id, async () => {
      const record = this.#host.catalog.resolve(vol)
      const found = this.#host.catalog.resolveSnapshot(record, snapshot)
      if (this.#host.replication?.forwards(record.id) === true) return false
      // A failed revert to it left the volume part reverted and fenced until a revert succeeds:
      // without the snapshot that revert could never be finished, and a reopen would unfence it.
      if (record.revertTo === found.id) {
        throw new GalleonError('BUSY', `volume ${record.name} has an unfinished revert to snapshot ${found.name}; finish it (restoreSnapshot again) or revert to another snapshot before deleting this one, or delete the volume`)
      }
      const clones = this.#host.catalog.clonesOf(record.id, found.id)
      if (clones.length > 0 && options?.force !== true) {
        throw new GalleonError('BUSY', `snapshot ${found.name} of volume ${record.name} is the source of clones (${names(clones)}); delete them first, or pass { force: true } to give each its own copy of the data`)
      }
      for (const clone of clones) {
        await this.#host.engine.flatten(this.#host.volumeBlocks(clone), async () => { await this.#host.catalog.updateVolume(clone.id, { source: undefined }) })
      }
      await this.dropSnapshot(record, found, change)
      return true
    })
  }

  /**
   * How a call forwarded to a replicated volume's primary names a snapshot: by id when this copy
   * has it, else as the caller named it, for the primary to resolve. A snapshot the primary took
   * just now (a restore's safety snapshot, asked for from this node) may not have reached this
   * copy yet; looked up here alone, it was "not found", and a restore's roll-back did nothing.
   */
  #primarySnapshotRef (volume: VolumeRecord, snapshot: string | Pick<Snapshot, 'id'>): string {
    try {
      return this.#host.catalog.resolveSnapshot(volume, snapshot).id
    } catch (err) {
      if (!(err instanceof GalleonError && err.code === 'SNAPSHOT_NOT_FOUND')) throw err
      return typeof snapshot === 'string' ? snapshot : snapshot.id
    }
  }

  /** The work of GalleonFS.restoreSnapshot, once the caller is checked. */
  async restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>): Promise<Volume> {
    const target = this.#host.catalog.resolve(vol)
    // Served for another node: the call's token is kept with the volume once it is reverted, here
    // and on every copy, and a repeat of the call finds it there.
    const call = callIn(vol)
    if (target.replication !== undefined) {
      if (this.#host.replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${target.name} is replicated, but this instance is not in a cluster now; join it to revert the volume`)
      // Reverted on the primary, which sends the revert to every copy in its change stream.
      if (this.#host.replication.forwards(target.id)) return await this.#forwardRestore(target, this.#primarySnapshotRef(target, snapshot), call)
      // Before the checks: writes in flight now are no reason to refuse what was done already.
      if (call !== undefined && target.revertTokens?.includes(call.token) === true) return await this.#revertedBefore(target)
    }
    const chosen = this.#host.catalog.resolveSnapshot(target, snapshot)
    // Writes in flight when the call is made are refused now, however quickly they complete
    // while the call waits for its turn; those that start meanwhile are checked again below.
    this.#refuseRevertWhileWriting(target, this.#host.engine.volume(target.storageId))
    const local = this.#primaryCall(target, call)
    // By id at the next primary, as a forwarded call names it.
    return await hereOrNext(this.#host, target.id, local, async () => await this.#restoreHere(vol, target, snapshot, call, call ?? local), async (repeat) => await this.#forwardRestore(target, chosen.id, repeat))
  }

  /**
   * restoreSnapshot on this node, the volume's primary, once the first checks passed. `call`: the
   * forwarded call served (a repeat finds what its earlier attempt did); `sent`: the call whose
   * token goes with the revert, into the stream and the records (`call`, or one made here).
   */
  async #restoreHere (vol: VolumeRef, target: VolumeRecord, snapshot: string | Pick<Snapshot, 'id'>, call: ForwardedCall | undefined, sent: ForwardedCall | undefined): Promise<Volume> {
    const change: RecordedChange = {}
    const restored = await this.#host.adminAfterMigration(target.id, async () => {
      const record = this.#host.catalog.resolve(vol)
      // Reverted by the earlier attempt of this call, which ran while it was sent again.
      if (call !== undefined && record.revertTokens?.includes(call.token) === true) return undefined
      const found = this.#host.catalog.resolveSnapshot(record, snapshot)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
      const writer = mountControl(this.#host.mounts).mountsOf(record.id).find((m) => !m.readOnly)
      if (writer !== undefined) throw new GalleonError('BUSY', `volume ${record.name} is mounted read-write at ${writer.path}; unmount it before reverting it (a mounted file system would not expect its disk to change under it)`)
      const writers = mountControl(this.#host.mounts).directWriters(record.id)
      if (writers > 0) throw new GalleonError('BUSY', `volume ${record.name} has ${writers} writer(s): writable files open on it (openVolumeFile) or NBD clients connected read-write; close or disconnect them before reverting it`)
      const volume = this.#host.volumeBlocks(record)
      if (record.replication !== undefined && volume.replicator === undefined) throw new GalleonError('NOT_LEADER', `node ${this.#host.cluster?.nodeId ?? ''} is not the primary of volume ${record.name} (the role moved while the revert waited); retry it`)
      this.#refuseRevertWhileWriting(record, volume)
      // From the checks on, no mount or writable file can start (MountBridge refuses it).
      this.#host.reverting.add(record.id)
      let reverted: number
      let updated!: VolumeRecord
      // What the record says of an earlier revert left unfinished (a failed one): a revert that
      // changes nothing here leaves it as it was (the volume may be part reverted by that one).
      const before = { revertTo: record.revertTo, revertToken: record.revertToken }
      try {
        await this.#host.catalog.updateVolume(record.id, { revertTo: found.id, revertToken: sent?.token })
        if (record.replication !== undefined && volume.replicator === undefined) {
          // Deposed while the intent was being recorded: nothing is reverted on this copy alone
          // (the new primary's would not be, and the next resync would undo it here).
          await this.#host.catalog.updateVolume(record.id, before)
          throw new GalleonError('NOT_LEADER', `node ${this.#host.cluster?.nodeId ?? ''} stopped being the primary of volume ${record.name} while the revert waited; nothing was reverted. Retry it: it goes to the new primary`)
        }
        /** Why the volume's primary on this node did not take the revert into its stream (no block was changed then). */
        let refused: unknown
        try {
          // The record is cleared before the volume's I/O goes on: done after, I/O would be refused
          // meanwhile as if the revert had failed; done after acknowledged writes, a crash between
          // would make the next open revert again over them.
          // The call's token goes with the revert into the stream, and into the record with its end.
          // On a replicated volume the revert is recorded in the stream before any block changes,
          // by the primary this node still is: one that stopped leading (deposed, handing the role
          // over, or fenced for a lapsed lease) meanwhile refuses it, and nothing is reverted on
          // this copy alone (the next resync would undo it, and the copy is not this node's to
          // change now).
          reverted = await this.#host.engine.revert(volume, viewOf(found) as View, volume.replicator === undefined ? undefined : (changed) => {
            try {
              const replicator = volume.replicator
              if (replicator === undefined) throw new GalleonError('NOT_LEADER', `node ${this.#host.cluster?.nodeId ?? ''} is no longer the primary of volume ${record.name}`)
              noteChange(change, replicator, replicator.record({ type: 'revert', snapshotId: found.id, blocks: changed, ...(sent === undefined ? {} : { token: sent.token }) }))
            } catch (err) {
              refused = err
              throw err
            }
          }, async () => {
            this.#host.revertFailures.delete(record.id)
            const tokens = sent === undefined ? {} : { revertTokens: withToken(this.#host.recordById(record.id)?.revertTokens, sent.token) }
            updated = await this.#host.catalog.updateVolume(record.id, { revertTo: undefined, revertToken: undefined, ...tokens })
          })
        } catch (err) {
          const message = err instanceof Error ? err.message : String(err)
          if (refused !== undefined && await this.#host.catalog.updateVolume(record.id, before).then(() => true, () => false)) {
            // Nothing was reverted here: no intent is left on this copy (it would refuse the
            // volume's I/O here, and a reopen would revert this copy alone). The call goes on at the
            // next primary (see hereOrNext); the copy follows whatever that primary did.
            throw new GalleonError('NOT_LEADER', `node ${this.#host.cluster?.nodeId ?? ''} stopped being the primary of volume ${record.name} as the revert began (${message}); nothing was reverted. Retry it: it goes to the new primary`, { cause: err })
          }
          // Part of the volume may be reverted already: it refuses I/O until a revert succeeds, and a
          // reopen does not silently finish this one over writes made in between.
          this.#host.revertFailures.set(record.id, message)
          this.#host.emit('io:error', { volumeId: record.id, volumeName: record.name, operation: 'write', code: errorCode(err), message: `revert to snapshot ${found.name} failed: ${message}` })
          throw err
        }
      } finally {
        this.#host.reverting.delete(record.id)
      }
      // An implicit snapshot kept past its last clone only because a failed revert still needed it goes now.
      for (const id of new Set([record.revertTo, found.id])) {
        const kept = id === undefined ? undefined : this.#host.catalog.snapshotById(id)
        if (kept?.implicit === true && this.#host.catalog.clonesOf(record.id, kept.id).length === 0) await this.dropSnapshot(updated, kept)
      }
      const result = this.#host.volumeView(updated)
      this.#host.emit('snapshot:restored', result, this.toSnapshot(found), reverted)
      return { result, name: found.name }
    })
    if (restored === undefined) return await this.#revertedBefore(target)
    await this.#confirmed(target, `volume ${target.name} was reverted to snapshot ${restored.name}`, change)
    return restored.result
  }

  /** restoreSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardRestore (target: VolumeRecord, snapshot: string, call: ForwardedCall | undefined): Promise<Volume> {
    try {
      return (await this.#host.forward(target, { op: 'restoreSnapshot', snapshot, ...this.#callFields(call) })).header.volume as Volume
    } catch (err) {
      throw lostAnswer(err, `volume ${target.name} may or may not have been reverted to snapshot ${snapshot} (calling restoreSnapshot again reverts it, again if it was: writes made since are lost)`, call)
    }
  }

  /**
   * The answer to a repeat of a forwarded restoreSnapshot whose earlier attempt reverted the volume
   * (here, or on the primary before this one, whose stream brought the call's token): the volume as
   * it is, once the in-sync copies have the revert (as that attempt's answer would have waited).
   */
  async #revertedBefore (target: VolumeRecord): Promise<Volume> {
    const change: RecordedChange = {}
    this.#soFar(target, change)
    await this.#confirmed(target, `volume ${target.name} was reverted (by an earlier attempt of the call)`, change)
    return this.#host.volumeView(this.#host.catalog.resolve(target.id))
  }

  /** The work of GalleonFS.cloneVolume, once the caller is checked. */
  async cloneVolume (source: CloneSource, newName: string, namespace: string, options: { labels?: Record<string, string> }): Promise<Volume> {
    const labels = options?.labels === undefined ? undefined : checkLabels(options.labels)
    readSource(this.#host.catalog, source)
    const unreserve = this.#host.catalog.reserveName(newName, namespace)
    try {
      return await this.#host.adminAfterMigration(readSource(this.#host.catalog, source).record.id, async () => {
        const { record, snapshot: chosen } = readSource(this.#host.catalog, source)
        if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted; it cannot be cloned`)
        if (this.#host.replication?.forwards(record.id) === true) {
          // This node's copy may lag (or be mid-resync): clones are made where the primary is.
          throw new GalleonError('NOT_LEADER', `volume ${record.name} is replicated and its primary is node ${this.#host.replication.status(record.id)?.primary ?? 'unknown'}; clone it there (the clone is a 1-copy volume on that node)`)
        }
        // The clone is charged its full size in its source's pool, before the implicit snapshot is taken.
        const release = record.pool === undefined ? undefined : this.#host.pools.reserve(record.pool, chosen?.sizeBytes ?? record.sizeBytes, `clone ${newName} of ${record.name}`)
        let snapshot: SnapshotRecord | undefined
        let clone: VolumeRecord
        try {
          snapshot = chosen ?? await this.takeSnapshot(record, this.#implicitName(record, newName), true)
          clone = await this.#host.newVolume({
            name: newName,
            namespace,
            type: record.type,
            state: VolumeState.Available,
            sizeBytes: snapshot.sizeBytes,
            blockSize: record.blockSize,
            storageClass: record.storageClass,
            // A clone of a replicated volume is a local volume of this node (its source's blocks are here).
            replicas: record.replication === undefined ? record.replicas : 1,
            accessModes: [...record.accessModes],
            labels: labels ?? { ...record.labels },
            // The source's own QoS policy too: a clone is no way around the limits set on its source.
            ...(record.qos === undefined ? {} : { qos: structuredClone(record.qos) }),
            source: { volumeId: record.id, snapshotId: snapshot.id },
            // A clone seals its own writes with its own key; it reads its source's blocks with the source's.
            encrypted: record.encrypted === true,
            ...(record.pool === undefined ? {} : { pool: record.pool })
          }, { source: this.#host.volumeBlocks(record), gen: snapshot.gen, sizeBytes: snapshot.sizeBytes })
        } catch (err) {
          if (chosen === undefined && snapshot !== undefined) await this.dropSnapshot(record, snapshot).catch(() => {})
          throw err
        } finally {
          release?.()
        }
        const result = toVolume(clone)
        this.#host.emit('volume:created', result)
        this.#host.emit('volume:cloned', result, this.toSnapshot(snapshot))
        return result
      })
    } finally {
      unreserve()
    }
  }

  /** Takes a snapshot and records it; undoes the engine side if recording fails. */
  /** `sizeBytes`: the size to record when it is not the volume's now (a copy rebuilding a primary's older snapshot). */
  /** `change`: set to the snapshot's place in a replicated volume's change stream. */
  /** `token`: the call's that took it (forwarded, or made on the primary; kept with it, here and on every copy; see ForwardedRequest.token). */
  async takeSnapshot (record: VolumeRecord, name: string, implicit: boolean, id: string = randomUUID(), sizeBytes?: number, change?: RecordedChange, token?: string): Promise<SnapshotRecord> {
    const volume = this.#host.ioVolume(record)
    // Writes a mount acknowledged but has not stored yet belong in the snapshot (like freezing a file system first).
    await mountControl(this.#host.mounts).quiesce(record.id)
    // On a replicated volume's primary the snapshot takes its place in the stream at its cut.
    const replicator = volume.replicator
    let recorded = false
    let gen: number
    try {
      gen = await this.#host.engine.snapshot(volume, replicator === undefined ? undefined : () => { noteChange(change, replicator, replicator.record({ type: 'snapshot', id, name, ...(token === undefined ? {} : { token }) })); recorded = true })
      if (replicator === undefined) noteChange(change, undefined, undefined)
    } catch (err) {
      if (recorded) replicator?.record({ type: 'delete-snapshot', id })
      throw err
    }
    try {
      return await this.#host.catalog.createSnapshot({ id, name, volumeId: record.id, gen, sizeBytes: Math.min(sizeBytes ?? volume.sizeBytes, volume.sizeBytes), implicit, ...(token === undefined ? {} : { token }) })
    } catch (err) {
      await this.#host.engine.dropSnapshot(volume, gen).catch(() => {})
      if (recorded) replicator?.record({ type: 'delete-snapshot', id })
      throw err
    }
  }

  /** Removes a snapshot's record (first, so a crash never leaves a record whose blocks are gone), then its blocks. */
  async dropSnapshot (record: VolumeRecord, snapshot: SnapshotRecord, change?: RecordedChange): Promise<void> {
    this.#snapshotsGoing.add(snapshot.id)
    try {
      const readers = this.#snapshotReaders.get(snapshot.id)
      if (readers !== undefined) await new Promise<void>((resolve) => { readers.drained = resolve })
      const clones = this.#host.catalog.clonesOf(record.id, snapshot.id).map((clone) => clone.id)
      await this.#host.catalog.deleteSnapshot(snapshot)
      const volume = this.#host.volumeBlocks(record)
      noteChange(change, volume.replicator, volume.replicator?.record({ type: 'delete-snapshot', id: snapshot.id }))
      await this.#host.engine.dropSnapshot(volume, snapshot.gen)
      this.#host.emit('snapshot:deleted', { ...this.toSnapshot(snapshot), clones })
    } finally {
      this.#snapshotsGoing.delete(snapshot.id)
    }
  }

  #implicitName (record: VolumeRecord, cloneName: string): string {
    const taken = new Set(this.#host.catalog.snapshots(record.id).map((snapshot) => snapshot.name))
    // Cut to leave room for a suffix, and still end with a letter or digit as snapshot names do.
    const base = `clone-${cloneName}`.slice(0, 56).replace(/[^A-Za-z0-9]+$/, '')
    let name = base
    for (let n = 2; taken.has(name); n++) name = `${base}-${n}`
    return name
  }

  /** A snapshot record as callers see it. */
  toSnapshot (record: SnapshotRecord): Snapshot {
    return {
      id: record.id,
      name: record.name,
      volumeId: record.volumeId,
      sizeBytes: record.sizeBytes,
      createdAt: record.createdAt,
      implicit: record.implicit,
      clones: this.#host.catalog.clonesOf(record.volumeId, record.id).map((clone) => clone.id)
    }
  }

  /** Keeps a snapshot's blocks alive for one read; refuses once its deletion began. */
  pinSnapshot (snapshot: SnapshotRecord): () => void {
    if (this.#snapshotsGoing.has(snapshot.id)) throw new GalleonError('SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.name} is being deleted`)
    let readers = this.#snapshotReaders.get(snapshot.id)
    if (readers === undefined) this.#snapshotReaders.set(snapshot.id, readers = { count: 0 })
    readers.count++
    return () => {
      const current = readers as { count: number, drained?: () => void }
      if (--current.count === 0) {
        this.#snapshotReaders.delete(snapshot.id)
        current.drained?.()
      }
    }
  }

  #refuseRevertWhileWriting (record: VolumeRecord, volume: VolumeBlocks | undefined): void {
    // Its re-encryption's block locks would read as writes in flight below: said as what it is.
    if (this.#host.rotations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then revert it. Nothing was changed`)
    if (volume !== undefined && (volume.tickets.size > 0 || volume.locks.size > 0)) {
      throw new GalleonError('BUSY', `volume ${record.name} is being written (${Math.max(volume.tickets.size, volume.locks.size)} writes in flight); stop its writers (unmount it) and retry the revert. Nothing was changed`)
    }
  }

  /** Drops a snapshot of a replica copy as its primary did: clones made from it here get their own copy first. */
  async dropReplicaSnapshot (record: VolumeRecord, snapshot: SnapshotRecord): Promise<void> {
    await mountControl(this.#host.mounts).release(record.id, snapshot.id)
    for (const clone of this.#host.catalog.clonesOf(record.id, snapshot.id)) {
      await this.#host.engine.flatten(this.#host.volumeBlocks(clone), async () => { await this.#host.catalog.updateVolume(clone.id, { source: undefined }) })
    }
    await this.dropSnapshot(record, snapshot)
  }
}
