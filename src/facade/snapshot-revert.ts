// Reverting a volume to one of its snapshots (restoreSnapshot): on this node when it is the volume's
// primary (or the volume is not replicated), else on the primary; a failed revert fences the volume.

import { GalleonError, errorCode } from '../errors.js'
import type { VolumeBlocks, View } from '../engine/engine.js'
import { mountControl } from '../mount/mount-manager.js'
import { VolumeState, type Snapshot, type Volume } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { viewOf } from './records.js'
import type { VolumeRef } from './refs.js'
import { callIn, hereOrNext, lostAnswer, withToken, type ForwardedCall } from './forwarded-calls.js'
import { noteChange, type RecordedChange, type SnapshotCalls } from './snapshot-calls.js'

/** Reverts of the instance's volumes to their snapshots (see Snapshots.restoreSnapshot). */
export class SnapshotReverts {
  readonly #host: FacadeHost
  readonly #calls: SnapshotCalls

  constructor (host: FacadeHost, calls: SnapshotCalls) {
    this.#host = host
    this.#calls = calls
  }

  /**
   * The work of GalleonFS.restoreSnapshot, once the caller is checked. `restoreOf`: the volume's id
   * when the call is the put-back of a restoreBackup writing into it (see #refuseWhileRestoring).
   */
  async restoreSnapshot (vol: VolumeRef, snapshot: string | Pick<Snapshot, 'id'>, restoreOf?: string): Promise<Volume> {
    const target = this.#host.catalog.resolve(vol)
    // Before forwarding too: a revert made at the primary comes back into this copy through its stream.
    this.#refuseWhileRestoring(target, restoreOf)
    // Served for another node: the call's token is kept with the volume once it is reverted, here
    // and on every copy, and a repeat of the call finds it there.
    const call = callIn(vol)
    if (target.replication !== undefined) {
      if (this.#host.replication === undefined) throw new GalleonError('BACKEND_UNAVAILABLE', `volume ${target.name} is replicated, but this instance is not in a cluster now; join it to revert the volume`)
      // Reverted on the primary, which sends the revert to every copy in its change stream.
      if (this.#host.replication.forwards(target.id)) return await this.#forwardRestore(target, this.#calls.primarySnapshotRef(target, snapshot), call)
      // Before the checks: writes in flight now are no reason to refuse what was done already.
      if (call !== undefined && target.revertTokens?.includes(call.token) === true) return await this.#revertedBefore(target)
    }
    const chosen = this.#host.catalog.resolveSnapshot(target, snapshot)
    // Writes in flight when the call is made are refused now, however quickly they complete
    // while the call waits for its turn; those that start meanwhile are checked again below.
    this.#refuseRevertWhileWriting(target, this.#host.engine.volume(target.storageId))
    const local = this.#calls.primaryCall(target, call)
    // By id at the next primary, as a forwarded call names it.
    return await hereOrNext(this.#host, target.id, local, async () => await this.#restoreHere(vol, target, snapshot, call, call ?? local, restoreOf), async (repeat) => await this.#forwardRestore(target, chosen.id, repeat))
  }

  /**
   * restoreSnapshot on this node, the volume's primary, once the first checks passed. `call`: the
   * forwarded call served (a repeat finds what its earlier attempt did); `sent`: the call whose
   * token goes with the revert, into the stream and the records (`call`, or one made here).
   */
  async #restoreHere (vol: VolumeRef, target: VolumeRecord, snapshot: string | Pick<Snapshot, 'id'>, call: ForwardedCall | undefined, sent: ForwardedCall | undefined, restoreOf?: string): Promise<Volume> {
    const change: RecordedChange = {}
    const restored = await this.#host.adminAfterMigration(target.id, async () => {
      const record = this.#host.catalog.resolve(vol)
      // Reverted by the earlier attempt of this call, which ran while it was sent again.
      if (call !== undefined && record.revertTokens?.includes(call.token) === true) return undefined
      const found = this.#host.catalog.resolveSnapshot(record, snapshot)
      if (record.state === VolumeState.Deleting) throw new GalleonError('VOLUME_NOT_FOUND', `volume ${record.name} is being deleted`)
      // Again: a restore may have begun while the revert waited for its turn.
      this.#refuseWhileRestoring(record, restoreOf)
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
        if (kept?.implicit === true && this.#host.catalog.clonesOf(record.id, kept.id).length === 0) await this.#host.dropSnapshot(updated, kept)
      }
      const result = this.#host.volumeView(updated)
      this.#host.emit('snapshot:restored', result, this.#host.toSnapshot(found), reverted)
      return { result, name: found.name }
    })
    if (restored === undefined) return await this.#revertedBefore(target)
    await this.#calls.confirmed(target, `volume ${target.name} was reverted to snapshot ${restored.name}`, change)
    return restored.result
  }

  /** restoreSnapshot on the volume's primary, as one call (see forwarded-calls.ts). */
  async #forwardRestore (target: VolumeRecord, snapshot: string, call: ForwardedCall | undefined): Promise<Volume> {
    try {
      return (await this.#host.forward(target, { op: 'restoreSnapshot', snapshot, ...this.#calls.callFields(call) })).header.volume as Volume
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
    this.#calls.soFar(target, change)
    await this.#calls.confirmed(target, `volume ${target.name} was reverted (by an earlier attempt of the call)`, change)
    return this.#host.volumeView(this.#host.catalog.resolve(target.id))
  }

  /**
   * BUSY while a restoreBackup writes into the volume (it is in `restoring`), unless the call is
   * that restore's own put-back (`restoreOf` is the volume's id): a revert made meanwhile would be
   * mixed with the restored data, which the restore would then report as complete.
   */
  #refuseWhileRestoring (record: VolumeRecord, restoreOf: string | undefined): void {
    if (restoreOf === record.id || !this.#host.restoring.has(record.id)) return
    throw new GalleonError('BUSY', `a backup is being restored into volume ${record.name}; revert it once the restore has finished (a revert now would be mixed with the backup's data). Nothing was changed`)
  }

  #refuseRevertWhileWriting (record: VolumeRecord, volume: VolumeBlocks | undefined): void {
    // Its re-encryption's block locks would read as writes in flight below: said as what it is.
    if (this.#host.rotations.has(record.id)) throw new GalleonError('BUSY', `volume ${record.name} is re-encrypting with a new data key; wait for that to finish (getVolumeEncryption shows the progress), then revert it. Nothing was changed`)
    if (volume !== undefined && (volume.tickets.size > 0 || volume.locks.size > 0)) {
      throw new GalleonError('BUSY', `volume ${record.name} is being written (${Math.max(volume.tickets.size, volume.locks.size)} writes in flight); stop its writers (unmount it) and retry the revert. Nothing was changed`)
    }
  }
}
