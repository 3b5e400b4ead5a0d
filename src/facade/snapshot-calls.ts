// What the snapshot calls on a replicated volume share (taking, deleting and reverting): where a
// call's change took its place in the volume's change stream, the wait for the in-sync copies to
// confirm it, and how a call goes to the volume's primary.

import { GalleonError } from '../errors.js'
import type { VolumeReplicator } from '../engine/replicator.js'
import type { Snapshot } from '../types.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'
import { newCall, primaryCall, type ForwardedCall } from './forwarded-calls.js'

/** Where a snapshot call's change took its place in a replicated volume's stream: the primary that recorded it, and its number there. */
export interface RecordedChange { made?: boolean, by?: VolumeReplicator, seq?: number }

/** Notes that the change was made, and where it was recorded (`by` undefined: nowhere, the volume had no primary here). */
export function noteChange (change: RecordedChange | undefined, by: VolumeReplicator | undefined, seq: number | undefined): void {
  if (change === undefined) return
  change.made = true
  if (by === undefined || seq === undefined) return
  change.by = by
  change.seq = Math.max(seq, change.seq ?? 0)
}

/** The replicated side of the snapshot calls: confirmation by the in-sync copies, and calls to the primary. */
export class SnapshotCalls {
  readonly #host: FacadeHost
  /** Whether replication is synchronous (ClusterMembership.replicationMode), read at each call. */
  readonly #synchronous: () => boolean

  constructor (host: FacadeHost, synchronous: () => boolean) {
    this.#host = host
    this.#synchronous = synchronous
  }

  /**
   * Synchronous replication: a snapshot call done on a replicated volume's primary resolves once
   * every in-sync copy has applied it (as a flush waits for them), so that no failover can undo a
   * call that resolved. Copies out of sync are not waited for, nor anything on a volume without an
   * in-sync copy; a call whose copies did not confirm it fails, saying it may not be kept.
   */
  async confirmed (record: VolumeRecord, done: string, change: RecordedChange): Promise<void> {
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
   * in-sync copies have it (see confirmed).
   */
  soFar (record: VolumeRecord, change: RecordedChange): void {
    const replicator = this.#host.volumeBlocks(this.#host.catalog.resolve(record.id)).replicator
    noteChange(change, replicator, replicator === undefined ? undefined : this.#host.replication?.recordedSeq(replicator))
  }

  /**
   * The fields of a control call sent to a replicated volume's primary: the token of the call this
   * node serves for another (still a repeat if it was one), or of a new one (see forwarded-calls.ts).
   */
  callFields (call: ForwardedCall | undefined): { token: string, repeat?: true } {
    const sent = call ?? newCall()
    return { token: sent.token, ...(sent.repeat ? { repeat: true as const } : {}) }
  }

  /**
   * The call a snapshot call made here on a replicated volume's primary is (undefined for a call
   * served for another node, `call`, or on a volume that is not replicated): its token goes with
   * the change to the copies, and with the call to the next primary when this node loses the role
   * under it (see hereOrNext).
   */
  primaryCall (record: VolumeRecord, call: ForwardedCall | undefined): ForwardedCall | undefined {
    return call === undefined && record.replication !== undefined && this.#host.replication !== undefined ? primaryCall() : undefined
  }

  /**
   * How a call forwarded to a replicated volume's primary names a snapshot: by id when this copy
   * has it, else as the caller named it, for the primary to resolve. A snapshot the primary took
   * just now (a restore's safety snapshot, asked for from this node) may not have reached this
   * copy yet; looked up here alone, it was "not found", and a restore's roll-back did nothing.
   */
  primarySnapshotRef (volume: VolumeRecord, snapshot: string | Pick<Snapshot, 'id'>): string {
    try {
      return this.#host.catalog.resolveSnapshot(volume, snapshot).id
    } catch (err) {
      if (!(err instanceof GalleonError && err.code === 'SNAPSHOT_NOT_FOUND')) throw err
      return typeof snapshot === 'string' ? snapshot : snapshot.id
    }
  }
}
