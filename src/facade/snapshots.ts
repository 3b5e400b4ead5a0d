// Snapshots and clones of the facade: taking and deleting snapshots, cloning volumes from them, and
// keeping a snapshot's blocks alive while it is read. Reverting to one is in snapshot-revert.ts.

import { randomUUID } from 'node:crypto'
import { GalleonError, errorCode } from '../errors.js'
import { mountControl } from '../mount/mount-manager.js'
import { VolumeState, type Snapshot, type Volume } from '../types.js'
import type { SnapshotRecord, VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { checkLabels, names, toVolume } from './records.js'
import { readSource, type CloneSource, type VolumeRef } from './refs.js'
import { callIn, hereOrNext, lostAnswer, type ForwardedCall } from './forwarded-calls.js'
import { outcomeUnknown } from '../replication/common.js'
import { SnapshotCalls, noteChange, type RecordedChange } from './snapshot-calls.js'
import { SnapshotReverts } from './snapshot-revert.js'

/** Snapshot and clone operations on the instance's volumes (GalleonFS checks the caller first). */
export class Snapshots {
  readonly #host: FacadeHost
  /** Reads in flight per snapshot id; deleting a snapshot waits for them. */
  readonly #snapshotReaders = new Map<string, { count: number, drained?: () => void }>()
  readonly #snapshotsGoing = new Set<string>()
  readonly #calls: SnapshotCalls
  readonly #reverts: SnapshotReverts

  /** `synchronous`: whether replication is synchronous (ClusterMembership.replicationMode), read at each call. */
  constructor (host: FacadeHost, synchronous: () => boolean = () => true) {
    this.#host = host
    this.#calls = new SnapshotCalls(host, synchronous)
    this.#reverts = new SnapshotReverts(host, this.#calls)
  }

  /** The work of GalleonFS.createSnapshot, once the caller is checked. */
  async createSnapshot (vol: VolumeRef, name: string): Promise<Snapshot> {
    const target = this.#host.catalog.resolve(vol)
    // Served for another node: the call's token is kept with the snapshot, and a repeat finds it.
    const call = callIn(vol)
    if (this.#host.replication?.forwards(target.id) === true) return await this.#forwardCreate(target, name, call)
    const local = this.#calls.primaryCall(target, call)
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
        this.#calls.soFar(record, change)
        return this.toSnapshot(earlier)
      }
      if (this.#host.catalog.snapshots(record.id).some((snapshot) => snapshot.name === name)) {
        throw new GalleonError('SNAPSHOT_EXISTS', `volume ${record.name} already has a snapshot named ${JSON.stringify(name)}; pick another name or delete that snapshot first`)
      }
      const snapshot = this.toSnapshot(await this.takeSnapshot(record, name, false, undefined, undefined, change, call?.token))
      this.#host.emit('snapshot:created', snapshot)
      return snapshot
    })
    if (taken !== undefined) await this.#calls.confirmed(target, `snapshot ${JSON.stringify(name)} of volume ${target.name} was taken${repeated ? ' (by an earlier attempt of the call)' : ''}`, change)
    return taken
  }

  /** createSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardCreate (target: VolumeRecord, name: string, call: ForwardedCall | undefined): Promise<Snapshot> {
    try {
      return (await this.#host.forward(target, { op: 'createSnapshot', snapshotName: name, ...this.#calls.callFields(call) })).header.snapshot as Snapshot
    } catch (err) {
      throw lostAnswer(err, `snapshot ${JSON.stringify(name)} of volume ${target.name} may or may not have been taken: listSnapshots(${JSON.stringify(target.name)}) shows whether it exists once the volume has a primary again`, call)
    }
  }

  /** The work of GalleonFS.deleteSnapshot, once the caller is checked. */
  async deleteSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, options: { force?: boolean }): Promise<void> {
    const owner = this.#host.catalog.resolve(vol)
    const call = callIn(vol)
    if (this.#host.replication?.forwards(owner.id) === true) {
      // A restore on this node into a volume whose primary is elsewhere holds its snapshot here.
      if (this.#host.restoreSnapshots.has(owner.id)) this.#refuseRestoreSnapshot(owner, this.#host.catalog.resolveSnapshot(owner, snapshot))
      await this.#forwardDelete(owner, this.#calls.primarySnapshotRef(owner, snapshot), options, call)
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
        if (deleted) await this.#calls.confirmed(owner, `snapshot ${target.name} of volume ${owner.name} was deleted`, change)
        return deleted
      }
      // By id at the next primary: a snapshot deleted here may be gone from this copy already.
      const deleted = await hereOrNext(this.#host, owner.id, this.#calls.primaryCall(owner, call), here, async (repeat) => { await this.#forwardDelete(owner, target.id, options, repeat); return true })
      // The primary role moved while the call waited for its turn: the new primary deletes it
      // (and this copy follows through its stream).
      if (!deleted) await this.#forwardDelete(owner, target.id, options, call)
    } finally {
      this.#host.goingAway.delete(target.id)
    }
  }

  /**
   * BUSY for the safety snapshot of a restore writing into the volume: it puts the volume back if
   * the restore fails, and without it the volume would be left half restored. The restore deletes
   * it once it is over.
   */
  #refuseRestoreSnapshot (record: VolumeRecord, snapshot: SnapshotRecord): void {
    if (this.#host.restoreSnapshots.get(record.id) !== snapshot.name) return
    throw new GalleonError('BUSY', `snapshot ${snapshot.name} of volume ${record.name} is what the backup restore writing into the volume puts it back to if it fails; it is deleted once the restore is over`)
  }

  /** deleteSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardDelete (owner: VolumeRecord, snapshot: string, options: { force?: boolean }, call: ForwardedCall | undefined): Promise<void> {
    try {
      await this.#host.forward(owner, { op: 'deleteSnapshot', snapshot, force: options?.force === true, ...this.#calls.callFields(call) })
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
    this.#calls.soFar(owner, change)
    await this.#calls.confirmed(owner, `the snapshot of volume ${owner.name} was deleted (by an earlier attempt of the call)`, change)
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
      // A restore writing into the volume puts it back to this snapshot if it fails; without it the
      // volume would be left half restored. The restore deletes it once it is over.
      this.#refuseRestoreSnapshot(record, found)
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

  /** The work of GalleonFS.restoreSnapshot, once the caller is checked (see snapshot-revert.ts); `restoreOf`: see SnapshotReverts.restoreSnapshot. */
  restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, restoreOf?: string): Promise<Volume> {
    return this.#reverts.restoreSnapshot(vol, snapshot, restoreOf)
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

  /** Drops a snapshot of a replica copy as its primary did: clones made from it here get their own copy first. */
  async dropReplicaSnapshot (record: VolumeRecord, snapshot: SnapshotRecord): Promise<void> {
    await mountControl(this.#host.mounts).release(record.id, snapshot.id)
    for (const clone of this.#host.catalog.clonesOf(record.id, snapshot.id)) {
      await this.#host.engine.flatten(this.#host.volumeBlocks(clone), async () => { await this.#host.catalog.updateVolume(clone.id, { source: undefined }) })
    }
    await this.dropSnapshot(record, snapshot)
  }
}
