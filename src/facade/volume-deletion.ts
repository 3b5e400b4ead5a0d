// Deleting volumes: the checks that refuse a deletion, a replicated volume deleted everywhere (its
// cluster record first), clones given their own copies first, and implicit snapshots no clone reads.

import { GalleonError } from '../errors.js'
import { mountControl } from '../mount/mount-manager.js'
import { VolumeState } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { names, toVolume } from './records.js'
import type { VolumeRef } from './refs.js'
import { callIn, lostAnswer, newCall, type ForwardedCall } from './forwarded-calls.js'
import { outcomeUnknown } from '../replication/common.js'
import { inUseElsewhere } from '../replication/attachments.js'

/** Deletes the instance's volumes (see VolumeLifecycle, which hands deletions here). */
export class VolumeDeletion {
  readonly #host: FacadeHost
  /** Ids of the volumes `destroy` is working on now (a record in state Deleting without one here is a deletion that failed). */
  readonly #destroying = new Set<string>()

  constructor (host: FacadeHost) {
    this.#host = host
  }

  /** Orders volumes to delete so that clones go before their sources (fewer copies to make). */
  destroyOrder (records: VolumeRecord[]): VolumeRecord[] {
    const depth = (record: VolumeRecord): number => {
      let n = 0
      for (let at: VolumeRecord | undefined = record; at?.source !== undefined; n++) {
        at = this.#host.catalog.volumes().find((candidate) => candidate.id === at?.source?.volumeId)
      }
      return n
    }
    return [...records].sort((a, b) => depth(b) - depth(a))
  }

  /** The work of GalleonFS.deleteVolume, once the caller is checked. */
  async deleteVolume (vol: VolumeRef, options: { force?: boolean }): Promise<void> {
    const record = this.#host.catalog.resolve(vol)
    if (record.state === VolumeState.Deleting) {
      if (this.#destroying.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is already being deleted`)
      // An earlier deletion failed part way (its checks passed, its data is partly gone): finish it.
      await this.#host.adminAfterMigration(record.id, async () => {
        const current = this.#host.recordById(record.id)
        if (current === undefined) return
        if (this.#destroying.has(current.id)) throw new GalleonError('BUSY', `volume ${current.name} is already being deleted`)
        await this.destroy(current, true)
      }, 'the volume is being deleted')
      await this.forwardReleases()
      await this.#host.replication?.copyGone(record.id)
      return
    }

    // A copy the cluster has no record of (see ReplicationManager.orphan) has no primary to forward
    // the deletion to: it is deleted here, as a local volume, if its volume was deleted or the
    // caller forces it (it may be the last copy of a volume whose coordinator lost the record).
    let orphan: 'deleted' | 'unrecorded' | undefined
    const replication = this.#host.replication
    if (replication?.forwards(record.id) === true) {
      if (replication.status(record.id)?.role === 'unknown') orphan = await replication.orphan(record.id)
      if (orphan === undefined) {
        // What holds the volume here refuses before the call leaves: the primary asks this node
        // too, but one of an earlier release does not.
        this.#refuseHere(record, options)
        await this.#forwardDelete(record, options, callIn(vol))
        return
      }
      if (orphan === 'unrecorded' && options?.force !== true) {
        throw new GalleonError('BUSY', `the cluster has no record of replicated volume ${record.name} (nor a mark of its deletion naming node ${replication.nodeId}), so no primary can delete it everywhere; the copy on this node serves no I/O. Pass { force: true } to delete this node's copy (a copy on another node is deleted there the same way)`)
      }
    }
    this.#refuseRetained(record, options)
    this.#refuseHere(record, options)
    // From here no new mount may attach to it (the unmount below and the deletion take a while).
    this.#host.goingAway.add(record.id)
    // Whether the deletion is decided: a replicated volume's record is gone, so the other copies go,
    // and this one goes too whatever comes (a clone made meanwhile gets its own copy of the data).
    let decided = false
    try {
      // A replicated volume goes everywhere: its record first (no failover brings it back), then the
      // other copies (outside the admin queue: their nodes may be waiting on ours), then this one.
      if (orphan === undefined && replication?.holds(record.id) === true) {
        // Every refusal before the record goes, never after: a refusal then would leave this copy
        // without a record, a volume the user was told is kept and that a deletion mark takes later.
        await this.#refuseLate(record, options)
        // Again: a class change into a Retain class may have written the volume's record meanwhile.
        this.#refuseRetained(this.#host.catalog.resolve(record.id), options)
        const clones = this.#host.catalog.clonesOf(record.id)
        if (clones.length > 0 && options?.force !== true) throw new GalleonError('BUSY', `volume ${record.name} has clones that still share its blocks (${names(clones)}); delete them first, or pass { force: true } to give each clone its own copy of the data before the volume goes`)
        // Then what holds it on the other nodes of its copies (see usersElsewhere): asked last, as
        // close as can be to the record's removal (something that comes there after its answer is
        // deleted under, as under a forced deletion).
        if (options?.force !== true) {
          const refusal = inUseElsewhere(record.name, await replication.usersElsewhere(record.id))
          if (refusal !== undefined) throw refusal
        }
        // A move of it to another node stops (before its hand-over; after it, the copy here goes anyway).
        this.#host.nodeMoves.get(record.id)?.abort.abort(new GalleonError('CANCELLED', 'the volume is being deleted'))
        await replication.unregister(record.id)
        decided = true
      }
      // A migration of the volume is cancelled: copying data that is about to go is pointless.
      await this.#host.adminAfterMigration(record.id, async () => {
        if (!decided) await this.#refuseLate(record, options)
        await mountControl(this.#host.mounts).release(record.id)
        if (decided) await this.destroy(this.#host.catalog.resolve(record.id), true).catch((err: unknown) => { throw copyNotDeleted(record, err) })
        else await this.#deleteChecked(record, options)
      }, 'the volume is being deleted')
      // This node comes off the volume's deletion mark (a deletion that fails before is finished by
      // deleteVolume again or the next open, and the node comes off then).
      if (decided || orphan !== undefined) await replication?.copyGone(record.id)
    } finally {
      this.#host.goingAway.delete(record.id)
      await this.forwardReleases()
    }
  }

  /**
   * deleteVolume on the volume's primary, as one call (see forwarded-calls.ts). When the answer of
   * an attempt that reached the primary was lost and the call could not be answered afterwards (this
   * node's copy went with the deletion, or no primary answered again), the cluster's record says
   * what happened: gone, the volume was deleted (volumes are named by an id never used again: by
   * that attempt, or by a call that raced it; either way it is gone, as the call asked), and this
   * node's copy goes with it, as it would have before the answer; still there, it was not.
   */
  async #forwardDelete (record: VolumeRecord, options: { force?: boolean }, call: ForwardedCall | undefined): Promise<void> {
    const sent = call ?? newCall()
    try {
      await this.#host.forward(record, { op: 'deleteVolume', force: options?.force === true, token: sent.token, ...(sent.repeat ? { repeat: true } : {}) })
      return
    } catch (err) {
      const replication = this.#host.replication
      if (outcomeUnknown(err) === undefined || replication === undefined) throw err
      let deleted: boolean
      try {
        deleted = await replication.deletedInCluster(record.id)
      } catch (unknown) {
        throw lostAnswer(err, `volume ${record.name} may or may not have been deleted (the cluster's record of it could not be read either: ${(unknown as Error)?.message ?? String(unknown)}); listVolumes() on a node of the cluster shows whether it is still there`)
      }
      if (!deleted) throw lostAnswer(err, `volume ${record.name} was not deleted: the cluster still has its record (a deletion the primary began may yet finish it; deleteVolume again deletes it)`)
    }
    // A deletion of this copy under way (the stream's, or the deletion mark's) ends in the admin queue.
    await this.#host.admin(async () => {})
  }

  /**
   * BUSY unless forced for a volume whose storage class's reclaim policy is Retain. A replicated
   * volume's class is the one its cluster record names: while it changes class, the copy here may
   * still be in the old one (or already in the new one), so either being Retain refuses.
   */
  #refuseRetained (record: VolumeRecord, options: { force?: boolean }): void {
    if (options?.force === true) return
    const recorded = record.replication === undefined ? undefined : this.#host.replication?.spec(record.id)?.storageClass
    for (const name of new Set([record.storageClass, recorded ?? record.storageClass])) {
      const storageClass = this.#host.catalog.storageClass(name)
      if (storageClass?.reclaimPolicy !== 'Retain') continue
      const changing = name === record.storageClass ? '' : ` (it is changing to that class from ${record.storageClass}; the copy here has not converted yet)`
      throw new GalleonError('BUSY', `volume ${record.name} uses storage class ${storageClass.name} whose reclaim policy is Retain${changing}; pass { force: true } to delete its data anyway`)
    }
  }

  /** BUSY unless forced while the volume is mounted on this node, or has other attachments here (see #refuseAttachments). */
  #refuseHere (record: VolumeRecord, options: { force?: boolean }): void {
    const mounts = mountControl(this.#host.mounts).mountsOf(record.id)
    if (mounts.length > 0 && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${record.name} is mounted (${mounts.map((m) => m.path).join(', ')}); unmount it first, or pass { force: true } to unmount and delete it`)
    }
    this.#refuseAttachments(record, options)
  }

  /**
   * The refusals that look again once no new attachment can come (the volume is going away): a
   * mount that was being set up when the deletion began has finished by now.
   */
  async #refuseLate (record: VolumeRecord, options: { force?: boolean }): Promise<void> {
    await mountControl(this.#host.mounts).settled()
    const late = mountControl(this.#host.mounts).mountsOf(record.id)
    if (late.length > 0 && options?.force !== true) throw new GalleonError('BUSY', `volume ${record.name} was mounted meanwhile (${late.map((m) => m.path).join(', ')}); unmount it, or pass { force: true }`)
    this.#refuseAttachments(record, options)
  }

  /**
   * BUSY unless forced while the volume has attachments other than mounts: files open on it
   * (writable or read-only), NBD clients connected to it (read-write or read-only), files or NBD
   * clients reading one of its snapshots.
   */
  #refuseAttachments (record: VolumeRecord, options: { force?: boolean }): void {
    if (options?.force === true) return
    const writers = mountControl(this.#host.mounts).directWriters(record.id)
    if (writers > 0) {
      throw new GalleonError('BUSY', `volume ${record.name} has ${writers} writer(s): writable files open on it (openVolumeFile) or NBD clients connected read-write; close or disconnect them first, or pass { force: true } to delete it under them (their next I/O fails)`)
    }
    // Readers of the live data go as mounts do: a read-only mount already refuses the deletion,
    // and a file or NBD client reading it would have its reads fail (EIO to an NBD client).
    const liveReaders = mountControl(this.#host.mounts).directReaders(record.id)
    if (liveReaders > 0) {
      throw new GalleonError('BUSY', `volume ${record.name} has ${liveReaders} reader(s): files open on it read-only (openVolumeFile) or NBD clients connected read-only; close or disconnect them first, or pass { force: true } to delete it under them (their next read fails)`)
    }
    const readers = mountControl(this.#host.mounts).snapshotFiles({ volumeId: record.id })
    if (readers > 0) {
      throw new GalleonError('BUSY', `volume ${record.name} has ${readers} reader(s) of its snapshots: files open on them (openVolumeFile) or NBD clients of their exports; close or disconnect them first, or pass { force: true } to delete it under them (their next read fails)`)
    }
  }

  async #deleteChecked (record: VolumeRecord, options: { force?: boolean }): Promise<void> {
    const current = this.#host.catalog.resolve(record.id)
    // Again: a migration the deletion could no longer cancel may have switched it into a Retain class.
    this.#refuseRetained(current, options)
    const clones = this.#host.catalog.clonesOf(current.id)
    if (clones.length > 0 && options?.force !== true) {
      throw new GalleonError('BUSY', `volume ${current.name} has clones that still share its blocks (${names(clones)}); delete them first, or pass { force: true } to give each clone its own copy of the data before the volume goes`)
    }
    await this.destroy(current, true)
  }

  /**
   * Deletes a volume, its snapshots and its blocks. Clones that still read from it get their own
   * copies first (`flattenClones`); a clone's implicit source snapshot goes when its last clone does.
   */
  async destroy (record: VolumeRecord, flattenClones: boolean): Promise<void> {
    this.#destroying.add(record.id)
    try {
      await this.#destroy(record, flattenClones)
    } catch (err) {
      // The record stays (state Deleting, its size still charged to its pool) until a deletion
      // succeeds: deleteVolume again, or the next open, finishes it.
      const stays = `It stays in state deleting (no longer readable or writable); fix the cause and call deleteVolume(${JSON.stringify(record.id)}) again, or reopen the instance, to finish the deletion`
      if (err instanceof GalleonError) {
        // A refusal before the deletion began passes as it is; a failure after it says what is left.
        if (this.#host.catalog.volumeById(record.id)?.state !== VolumeState.Deleting) throw err
        throw new GalleonError(err.code, `deleting volume ${record.name} failed: ${err.message}. ${stays}`, { cause: err })
      }
      throw new GalleonError('IO_ERROR', `deleting volume ${record.name} failed: ${err instanceof Error ? err.message : String(err)}. ${stays}`, { cause: err })
    } finally {
      this.#destroying.delete(record.id)
    }
  }

  async #destroy (record: VolumeRecord, flattenClones: boolean): Promise<void> {
    const clones = this.#host.catalog.clonesOf(record.id)
    if (clones.length > 0) {
      if (!flattenClones) throw new GalleonError('BUSY', `volume ${record.name} has clones (${names(clones)})`)
      for (const clone of clones) await this.#flatten(clone)
    }
    this.#host.replication?.forget(record.id)
    const deleting = record.state === VolumeState.Deleting ? record : await this.#host.catalog.updateVolume(record.id, { state: VolumeState.Deleting })
    // Only once the deletion has begun: refused before (the metadata disk full), the volume stays
    // in use, and forgotten here its QoS limits went unenforced until the next open.
    this.#host.qos.forget(record.id)
    if (deleting !== record) this.#host.emit('volume:state', toVolume(deleting), record.state)
    const volume = this.#host.engine.volume(record.storageId) ?? this.#host.engine.attach(record.storageId, record.sizeBytes)
    await this.#host.engine.destroy(volume)
    await this.#host.catalog.deleteVolume(record.id)
    if (this.#host.keys.has(record.id)) await this.#host.keys.delete(record.id)
    this.#host.emit('volume:deleted', toVolume(deleting))
    if (record.source !== undefined) await this.releaseSource(record.source)
  }

  /** Drops a clone's source snapshot if it was implicit and no other clone reads from it. */
  async releaseSource (source: { volumeId: string, snapshotId: string }): Promise<void> {
    const snapshot = this.#host.catalog.snapshotById(source.snapshotId)
    if (snapshot === undefined || !snapshot.implicit) return
    if (this.#host.catalog.clonesOf(source.volumeId, snapshot.id).length > 0) return
    const owner = this.#host.catalog.resolve(source.volumeId)
    // A failed revert of the source to it must stay finishable; a successful revert drops it later.
    if (owner.revertTo === snapshot.id) return
    // A replicated source's snapshot is on every copy: where this node is not its primary, dropped
    // here it would be gone from this copy alone. The primary deletes it (it comes back here in
    // the stream), asked once the admin task that called this is over (see forwardReleases).
    if (owner.replication !== undefined && this.#host.replication?.forwards(owner.id) === true) {
      this.#forwardedReleases.push({ owner, snapshotId: snapshot.id })
      return
    }
    await this.#host.dropSnapshot(owner, snapshot)
  }

  /** Implicit snapshots of replicated sources that releaseSource left to their primary to delete. */
  #forwardedReleases: Array<{ owner: VolumeRecord, snapshotId: string }> = []

  /**
   * Asks the primaries to delete the implicit snapshots releaseSource left to them (outside the
   * admin queue: the deletion comes back to this node's copy through the stream, which applies it
   * in that queue). Best effort: one the primary cannot delete now stays, a snapshot no clone
   * reads, until it is deleted by name.
   */
  async forwardReleases (): Promise<void> {
    for (const { owner, snapshotId } of this.#forwardedReleases.splice(0)) {
      // Without a token, as before: asked once. With one, a primary out of reach would be asked
      // again for up to the failover wait (ClusterOptions.failoverWaitMs), which the deletion of the clone that released it would wait out.
      await this.#host.forward(owner, { op: 'deleteSnapshot', snapshot: snapshotId }).catch(() => {})
    }
  }

  /** Gives a clone its own copy of everything it reads from its source, then unlinks it. */
  async #flatten (clone: VolumeRecord): Promise<void> {
    const source = clone.source
    if (source === undefined) return
    await this.#host.engine.flatten(this.#host.volumeBlocks(clone), async () => { await this.#host.catalog.updateVolume(clone.id, { source: undefined }) })
    await this.releaseSource(source)
  }
}

/**
 * A replicated volume whose record is gone (deleted in the cluster: its other copies go) but whose
 * copy here could not be deleted: said as it is, not as a refusal that kept the volume.
 */
function copyNotDeleted (record: VolumeRecord, err: unknown): GalleonError {
  const why = err instanceof Error ? err.message : String(err)
  if (err instanceof GalleonError && why.startsWith(`deleting volume ${record.name} failed`)) return err
  // A reopen, not deleteVolume again: a failed metadata write (the usual cause) stops the database
  // taking more until the instance is reopened (see level-write-latch.ts), so a second deleteVolume
  // fails the same way; the open removes the copies of volumes the cluster no longer has.
  return new GalleonError(err instanceof GalleonError ? err.code : 'IO_ERROR', `volume ${record.name} is deleted from the cluster (its other copies go), but deleting this node's copy failed: ${why}. The copy serves no I/O; fix the cause, then close and reopen the instance: the open removes the copy`, { cause: err })
}
