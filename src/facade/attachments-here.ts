// What holds a volume on this node (mounts, files and NBD clients opened straight on it or on its
// snapshots), for the other nodes' questions (see replication/attachments.ts), for a move of it
// and for a leave of the cluster.

import { GalleonError } from '../errors.js'
import { mountControl } from '../mount/mount-manager.js'
import { describeAttachments, type VolumeAttachments } from '../replication/attachments.js'
import type { VolumeRecord } from '../volumes/catalog.js'
import type { FacadeHost } from './host.js'

/** What holds a volume on this node (see ReplicationHost.attachments). */
export function attachmentsOf (host: FacadeHost, volumeId: string): VolumeAttachments {
  const mounts = mountControl(host.mounts)
  return {
    mounts: mounts.mountsOf(volumeId).map((m) => m.path),
    writers: mounts.directWriters(volumeId),
    readers: mounts.directReaders(volumeId),
    snapshotReaders: mounts.snapshotFiles({ volumeId })
  }
}

/**
 * BUSY while anything holds one of `records` (replicated volumes) on this node, whose copies a
 * leave hands off and deletes (see refuseMoveHere).
 */
export function refuseLeaveHere (host: FacadeHost, records: readonly VolumeRecord[]): void {
  const held: string[] = []
  for (const record of records) {
    const what = describeAttachments(attachmentsOf(host, record.id))
    if (what !== undefined) held.push(`volume ${record.name}: ${what}`)
  }
  if (held.length > 0) {
    throw new GalleonError('BUSY', `this node's copies go with the leave, and something holds them here (${held.join('; ')}); unmount, close or disconnect them first (their I/O would fail), then leave, or leave with { force: true } to keep the volumes here out of the cluster`)
  }
}

/**
 * BUSY while anything holds the volume on this node, whose copy a move to node `node` deletes:
 * what held it would fail at its next I/O (this node no longer knows the volume), so the move
 * waits for it to go, as a plain deleteVolume does.
 */
export function refuseMoveHere (host: FacadeHost, record: VolumeRecord, node: string): void {
  const held = attachmentsOf(host, record.id)
  const after = `this node's copy goes with the move, so their I/O would fail; open them on node ${node} once the volume has moved`
  if (held.mounts.length > 0) throw new GalleonError('BUSY', `volume ${record.name} is mounted here (${held.mounts.join(', ')}); unmount it before moving it to node ${node} (${after})`)
  if (held.writers > 0) throw new GalleonError('BUSY', `volume ${record.name} has ${held.writers} writer(s) here: writable files open on it (openVolumeFile) or NBD clients connected read-write; close or disconnect them before moving it to node ${node} (${after})`)
  if (held.readers > 0) throw new GalleonError('BUSY', `volume ${record.name} has ${held.readers} reader(s) here: files open on it read-only (openVolumeFile) or NBD clients connected read-only; close or disconnect them before moving it to node ${node} (${after})`)
  if (held.snapshotReaders > 0) throw new GalleonError('BUSY', `volume ${record.name} has ${held.snapshotReaders} reader(s) of its snapshots here: files open on them (openVolumeFile) or NBD clients of their exports; close or disconnect them before moving it to node ${node} (${after})`)
}
