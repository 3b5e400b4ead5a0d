// What holds a volume on this node (mounts, files and NBD clients opened straight on it or on its
// snapshots), for the other nodes' questions (see replication/attachments.ts).

import { mountControl } from '../mount/mount-manager.js'
import type { VolumeAttachments } from '../replication/attachments.js'
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

